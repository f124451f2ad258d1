"""Grading building blocks: run student code in a sandbox, report results.

- :mod:`nattrack.grading.sandbox` -- :func:`run_untrusted` runs a student's program in a
  separate, unprivileged, resource-limited process and never raises because of what the
  program does.
- :mod:`nattrack.grading.results` -- a small results model and writers for Gradescope
  (``results.json``), GitHub Classroom, JUnit XML, a class CSV and a human summary.

The grader never imports student code (lab-kit conventions, section 5).
"""
from nattrack.grading.results import (Results, TestResult, human_summary, student_view,
                                      to_classroom, to_csv_rows, to_gradescope,
                                      to_junit_xml, write_class_csv)
from nattrack.grading.sandbox import SandboxError, SandboxResult, run_untrusted

__all__ = [
    "Results", "TestResult", "human_summary", "student_view", "to_classroom", "to_csv_rows",
    "to_gradescope", "to_junit_xml", "write_class_csv",
    "SandboxError", "SandboxResult", "run_untrusted",
]
