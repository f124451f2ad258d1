"""Kernel mode and nft files, the parts that need no namespace of the tests' own:
`nattrack doctor`'s iptables backend line and legacy-tables check (run for real here),
and `lab rules` accepting a shipped .nft file by name (issue 12 item 2)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nattrack.lab import LabError
from nattrack.lab.api import shipped_rules
from nattrack.lab.doctor import Report, check_backends, iptables_backend, legacy_table_missing


def test_the_backend_is_what_iptables_V_says():
    backend, version = iptables_backend()
    out = subprocess.run(["iptables", "-V"], capture_output=True, text=True).stdout
    assert version == out.strip() and backend in ("nf_tables", "legacy")
    assert f"({backend})" in version


@pytest.mark.skipif(os.geteuid() != 0, reason="unshare --net needs root")
def test_a_missing_legacy_table_is_told_by_the_kernels_own_error():
    # The same code path as a kernel built without CONFIG_NETFILTER_XTABLES_LEGACY: the
    # kernel has no such xtables table.
    missing = legacy_table_missing("nattrack_none")
    assert missing and "Table does not exist" in missing and "\n" not in missing
    here = legacy_table_missing("nat")
    have_legacy = subprocess.run(["unshare", "--net", "--", "iptables-legacy", "-t", "nat", "-L"],
                                 capture_output=True).returncode == 0
    assert (here is None) == have_legacy


@pytest.mark.skipif(os.geteuid() != 0, reason="unshare --net needs root")
def test_doctor_reports_the_backend_in_one_line():
    rep = Report()
    check_backends(rep)
    backend, _ = iptables_backend()
    lines = [n for n in rep.notes if n.startswith("iptables backend:")]
    assert len(lines) == 1 and backend in lines[0]
    p = subprocess.run([sys.executable, "-m", "nattrack.cli.main", "doctor"],
                       capture_output=True, text=True)
    assert f"note: iptables backend: {backend} " in p.stdout


def test_lab_rules_takes_a_shipped_nft_file_by_name(tmp_path, monkeypatch):
    import nattrack.lab as lab
    (tmp_path / "demo.nft").write_text("table ip t {\n}\n")
    (tmp_path / "basic.rules").write_text("*nat\nCOMMIT\n")
    monkeypatch.setattr(lab, "RULES_DIR", tmp_path)
    assert shipped_rules("demo.nft") == tmp_path / "demo.nft"
    assert shipped_rules("basic") == tmp_path / "basic.rules"
    with pytest.raises(LabError) as e:
        shipped_rules("nope")
    assert "known: basic, demo.nft" in str(e.value)
