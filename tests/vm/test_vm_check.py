"""scripts/vm-check's offline parts: what qemu is told (user-mode network only, the one
forward on 127.0.0.1), what the guest's result line becomes, which pip settings go in, the
Vagrantfile's steps it replays, and its one-line refusals.  The VMs themselves are too long
for CI: docs/vm-check.md quotes the latest run."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "vm-check"


def load_vm_check():
    loader = importlib.machinery.SourceFileLoader("vm_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("vm_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


vm = load_vm_check()


def test_qemu_gets_only_user_networking_forwarded_on_loopback(tmp_path):
    argv = vm.qemu_argv(tmp_path, tmp_path / "disk.raw", tmp_path / "vmlinuz",
                        tmp_path / "initrd.img", False, 2, 4096, 45678)
    nics = [argv[i + 1] for i, a in enumerate(argv) if a in ("-nic", "-netdev", "-net")]
    assert nics == ["user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:45678-:8888"]
    assert not any(word in " ".join(argv) for word in ("tap", "bridge", "vde", "socket,"))
    assert argv[argv.index("-machine") + 1].endswith("accel=tcg")
    kvm = vm.qemu_argv(tmp_path, tmp_path / "d", tmp_path / "k", tmp_path / "i", True, 2, 4096, 1)
    assert kvm[kvm.index("-machine") + 1].endswith("accel=kvm")
    if vm.ARCH == "amd64":      # an emulated TSC runs fast on a busy host: not the clock
        assert "tsc=unstable" in argv[argv.index("-append") + 1]
        assert "tsc=unstable" not in kvm[kvm.index("-append") + 1]


def test_the_result_line_becomes_one_line_per_kernel():
    result = ("VMCHECK-RESULT kernel=6.12.118+deb13-amd64 setup_rc=0 suite_rc=0 demo_rc=0 "
              "setup_s=300 suite_s=420 demo_s=60 summary=112 passed, 1 xfailed in 415.20s")
    line, ok = vm.summary_line("trixie", result, 80, 900, "TCG")
    assert ok
    assert line.startswith("Debian 13  6.12.118+deb13-amd64")
    assert "112 passed, 1 xfailed in 415.20s; demo ok" in line and "(TCG)" in line

    failed, ok = vm.summary_line("bookworm", result.replace("suite_rc=0", "suite_rc=1")
                                 .replace("112 passed", "110 passed, 2 failed"), 80, 900, "KVM")
    assert not ok and "2 failed" in failed
    broken, ok = vm.summary_line("bookworm", result.replace("setup_rc=0", "setup_rc=1")
                                 .replace("demo_rc=0", "demo_rc=-"), 80, 900, "KVM")
    assert not ok and "set-up FAILED (1)" in broken and "demo not run" in broken
    assert vm.summary_line("trixie", None, 1, 2, "TCG")[1] is False


def test_pip_settings_and_what_they_name_go_into_the_guest(monkeypatch, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_NO_SUCH_PATH", str(tmp_path / "absent"))
    paths = vm.pip_paths()
    assert wheels in paths
    assert tmp_path / "absent" not in paths            # only what exists is copied
    root = tmp_path / "root"
    for path in paths:
        if path == wheels:
            vm.copy_in(path, root)
    assert (root / str(wheels).lstrip("/")).is_dir()


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby comes with Debian's vagrant "
                    "(scripts/setup.sh --tests)")
def test_vagrant_steps_are_the_vagrantfiles_own():
    out = subprocess.run(["ruby", str(ROOT / "scripts/vmcheck/vagrant-steps.rb"),
                          str(ROOT / "Vagrantfile")], capture_output=True, text=True, check=True)
    steps = json.loads(out.stdout)
    assert steps["guest_dir"] == "/home/vagrant/nattrack" and steps["guest_port"] == 8888
    names = [p["name"] for p in steps["provisioners"]]
    assert names == ["setup", "classroom"]
    setup, classroom = steps["provisioners"]
    assert setup["inline"] == "cd /home/vagrant/nattrack && scripts/setup.sh"
    assert "usermod -aG nattrack vagrant" in classroom["inline"]
    assert "systemctl enable nattrack-notebook.service" in classroom["inline"]
    assert all(p["type"] == "shell" and p["privileged"] for p in steps["provisioners"])


def test_an_unknown_suite_is_one_line():
    p = subprocess.run([sys.executable, str(SCRIPT), "sid"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == ("nattrack: vm-check: unknown suite 'sid' "
                                "(expected bookworm or trixie)")
