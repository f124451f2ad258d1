"""The grader (``nattrack grade``, ``nattrack lab check``) and its building blocks.

- :mod:`nattrack.grading.runner` -- a lab's tests (public and hidden) against one
  submission: the environment probe, offline and live modes, the test context (``ctx``),
  per-student variants.
- :mod:`nattrack.grading.worker` -- the sandboxed worker, the only process that runs a
  submission's code, and the grader's handle on it.
- :mod:`nattrack.grading.sandbox` -- :func:`run_untrusted` (one program) and
  :class:`~nattrack.grading.sandbox.Untrusted` (a long-lived one, in a ``bwrap`` jail): a
  separate, unprivileged, resource-limited process tree; never raises because of what the
  program does.
- :mod:`nattrack.grading.batch` -- one submission or a class, every output file;
  :mod:`nattrack.grading.check` -- the student's self-check; :mod:`nattrack.grading.package`
  -- the Gradescope zip; :mod:`nattrack.grading.github` -- the GitHub template repository,
  its workflow and job summary (GitHub Classroom is gone); :mod:`nattrack.grading.replayjson`
  -- ``nattrack replay --json`` as a function.
- :mod:`nattrack.grading.results` -- a small results model and writers for Gradescope
  (``results.json``), JUnit XML, a class CSV and a human summary.

The grader never imports student code (lab-kit conventions, section 5); docs/labs-format.md
is the contract with the labs' tests.
"""
from nattrack.grading.results import (Results, TestResult, human_summary, student_view,
                                      to_csv_rows, to_gradescope, to_junit_xml,
                                      write_class_csv)
from nattrack.grading.sandbox import SandboxError, SandboxResult, run_untrusted

__all__ = [
    "Results", "TestResult", "human_summary", "student_view", "to_csv_rows",
    "to_gradescope", "to_junit_xml", "write_class_csv",
    "SandboxError", "SandboxResult", "run_untrusted",
]
