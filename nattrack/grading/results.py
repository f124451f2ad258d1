"""Grading results: a small model and the formats graders and CI read.

- :func:`to_gradescope` -- the ``results.json`` dict (conventions section 5):
  top-level ``execution_time``, ``output``, ``visibility``, ``stdout_visibility``, ``tests``
  and ``score`` only when one is given (it overrides the sum of the tests).
- :func:`to_junit_xml` -- JUnit XML for CI dashboards; JUnit has no field for points, so
  they are the suite's ``<property>`` elements (``score``, ``max_score``, ``score N``).
- :func:`to_csv_rows` / :func:`write_class_csv` -- one row per student and test.
- :func:`human_summary` -- a few lines of text.
- :func:`student_view` -- what a student may see: tests that are hidden (and, before the due
  date / publication, ``after_due_date`` / ``after_published`` ones) are dropped, only their
  number and points are mentioned, and the total covers the visible tests only.
"""
from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = ["TestResult", "Results", "STATUSES", "VISIBILITIES", "to_gradescope",
           "to_junit_xml", "to_csv_rows", "write_class_csv", "CSV_FIELDS",
           "human_summary", "student_view", "points"]

STATUSES = ("passed", "failed")
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")
OUTPUT_FORMATS = ("text", "html", "simple_format", "md", "ansi")


@dataclass
class TestResult:
    __test__ = False                      # not a pytest test class

    name: str
    number: str = ""
    score: float = 0.0
    max_score: float = 0.0
    status: str = "failed"
    output: str = ""
    visibility: str = "visible"
    tags: list[str] = field(default_factory=list)
    execution_time: float = 0.0           # seconds; JUnit reports it
    output_format: str = "text"

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r}: expected one of {STATUSES}")
        if self.visibility not in VISIBILITIES:
            raise ValueError(f"visibility {self.visibility!r}: expected one of {VISIBILITIES}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format {self.output_format!r}: expected one of "
                             f"{OUTPUT_FORMATS}")
        self.number = str(self.number)
        self.score = float(self.score)
        self.max_score = float(self.max_score)
        self.tags = [str(t) for t in self.tags]

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def not_run(self) -> bool:
        """A test the grader could not run here (a live test in offline mode): tag ``not-run``."""
        return "not-run" in self.tags


@dataclass
class Results:
    __test__ = False

    tests: list[TestResult] = field(default_factory=list)
    execution_time: float = 0.0
    output: str = ""
    score: float | None = None            # overrides the sum when given (Gradescope)
    visibility: str = "visible"
    stdout_visibility: str = "hidden"     # the grader's own stdout: teachers only

    def __post_init__(self) -> None:
        for v in (self.visibility, self.stdout_visibility):
            if v not in VISIBILITIES:
                raise ValueError(f"visibility {v!r}: expected one of {VISIBILITIES}")

    @property
    def total(self) -> float:
        return self.score if self.score is not None else sum(t.score for t in self.tests)

    @property
    def max_total(self) -> float:
        return sum(t.max_score for t in self.tests)

    @property
    def failures(self) -> int:
        return sum(1 for t in self.tests if not t.passed and not t.not_run)

    @property
    def not_run(self) -> int:
        return sum(1 for t in self.tests if t.not_run)


def points(x: float) -> int | float:
    """Points as people read them: 2.0 -> 2, 2.5 stays, 11.16669999... -> 11.1667 (a sum of
    partial credits carries float noise, which neither a summary nor results.json should)."""
    x = round(float(x), 4)
    return int(x) if x.is_integer() else x


_num = points


# --- Gradescope ----------------------------------------------------------------------------

def to_gradescope(results: Results) -> dict:
    """A test not run here (a live test, offline) has no ``status``: Gradescope then shows
    its 0/0 as neither passed nor failed -- an explicit ``failed`` would be red for every
    student, perfect ones included -- and its output and the top-level output say why."""
    tests = []
    for i, t in enumerate(results.tests, 1):
        doc = {
            "name": t.name,
            "number": t.number or str(i),
            "score": _num(t.score),
            "max_score": _num(t.max_score),
            "status": t.status,
            "output": t.output,
            "output_format": t.output_format,
            "tags": list(t.tags),
            "visibility": t.visibility,
        }
        if t.not_run:
            del doc["status"]
        tests.append(doc)
    output = results.output
    if results.not_run:
        note = (f"Graded offline only: {results.not_run} live test(s) could not run here and "
                f"count for nothing; this score is out of the other tests' "
                f"{_num(results.max_total)} points.")
        output = f"{output}\n{note}" if output else note
    out: dict = {
        "execution_time": round(float(results.execution_time), 3),
        "output": output,
        "visibility": results.visibility,
        "stdout_visibility": results.stdout_visibility,
        "tests": tests,
    }
    if results.score is not None:
        out["score"] = _num(results.score)
    return out


# --- JUnit XML ---------------------------------------------------------------------------------

# Characters XML 1.0 cannot carry at all (student output may contain any byte).
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _xml_text(s: str) -> str:
    return _XML_BAD.sub("\ufffd", s)


def to_junit_xml(results: Results, suite_name: str = "nattrack-grader") -> str:
    """JUnit XML that validates against the Jenkins JUnit schema (tests/grading/junit.xsd).

    The schema has no place for points and no ``<properties>`` in a ``<testcase>``, so
    the suite's ``<properties>`` carry them: ``score``, ``max_score`` and, per test,
    ``score NUMBER`` = ``"SCORE/MAX visibility"``.  A failed test has a ``<failure>`` with
    the reason; a passed one with output has a ``<system-out>``.
    """
    suites = ET.Element("testsuites", name=_xml_text(suite_name), tests=str(len(results.tests)),
                        failures=str(results.failures), errors="0",
                        time=f"{results.execution_time:.3f}")
    suite = ET.SubElement(suites, "testsuite", name=_xml_text(suite_name),
                          tests=str(len(results.tests)), failures=str(results.failures),
                          errors="0", skipped=str(results.not_run),
                          time=f"{results.execution_time:.3f}")
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="score", value=f"{_num(results.total)}")
    ET.SubElement(props, "property", name="max_score", value=f"{_num(results.max_total)}")
    for i, t in enumerate(results.tests, 1):
        ET.SubElement(props, "property", name=f"score {t.number or i}",
                      value=f"{_num(t.score)}/{_num(t.max_score)} {t.visibility}")
    for i, t in enumerate(results.tests, 1):
        case = ET.SubElement(suite, "testcase", name=_xml_text(t.name),
                             classname=f"{suite_name}.{t.number or i}",
                             time=f"{t.execution_time:.3f}")
        if t.not_run:
            ET.SubElement(case, "skipped", message=_xml_text(t.output[:200]))
        elif not t.passed:
            first = t.output.strip().splitlines()[0] if t.output.strip() else "failed"
            fail = ET.SubElement(case, "failure", message=_xml_text(first[:200]),
                                 type="AssertionError")
            fail.text = _xml_text(t.output)
        elif t.output:
            ET.SubElement(case, "system-out").text = _xml_text(t.output)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


# --- CSV -------------------------------------------------------------------------------------------

CSV_FIELDS = ("student_id", "number", "name", "score", "max_score", "status", "visibility")


def to_csv_rows(student_id: str, results: Results) -> list[dict]:
    """One row per test (a "long" table: pivot it in a spreadsheet for one row per student)."""
    return [{"student_id": str(student_id), "number": t.number or str(i), "name": t.name,
             "score": _num(t.score), "max_score": _num(t.max_score), "status": t.status,
             "visibility": t.visibility}
            for i, t in enumerate(results.tests, 1)]


def write_class_csv(path, rows) -> Path:
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow(row)
    return path


# --- people ----------------------------------------------------------------------------------------

def student_view(results: Results, after_due: bool = False, published: bool = False) -> Results:
    """The results as a student may see them (what Gradescope shows before/after the due date).

    ``hidden`` tests are never shown; ``after_due_date`` ones only when ``after_due``;
    ``after_published`` ones only when ``published``.  A test not shown is dropped
    entirely (name, output, tags and score); ``output`` says how many were held back and
    their points, and the total becomes the visible tests' sum.
    """
    def shown(t: TestResult) -> bool:
        return (t.visibility == "visible"
                or (t.visibility == "after_due_date" and after_due)
                or (t.visibility == "after_published" and published))

    visible = [replace(t, tags=list(t.tags)) for t in results.tests if shown(t)]
    held = [t for t in results.tests if not shown(t)]
    output = results.output
    if held:
        pts = _num(sum(t.max_score for t in held))
        note = (f"{len(held)} more test{'s' if len(held) > 1 else ''} ({pts} points) "
                f"will be shown later.")
        output = f"{output}\n{note}" if output else note
    return Results(tests=visible, execution_time=results.execution_time, output=output,
                   score=None, visibility=results.visibility, stdout_visibility="hidden")


def human_summary(results: Results) -> str:
    ran = len(results.tests) - results.not_run
    lines = [f"Score: {_num(results.total)}/{_num(results.max_total)} "
             f"({ran - results.failures} of {ran} tests passed"
             + (f", {results.not_run} not run)" if results.not_run else ")")]
    for i, t in enumerate(results.tests, 1):
        mark = "SKIP" if t.not_run else "PASS" if t.passed else "FAIL"
        line = f"  {mark} {t.number or i} {t.name} ({_num(t.score)}/{_num(t.max_score)})"
        if not t.passed and t.output.strip():
            first = t.output.strip().splitlines()[0]
            line += f": {first[:120]}"
        lines.append(line)
    if results.output:
        lines.append(results.output)
    return "\n".join(lines) + "\n"
