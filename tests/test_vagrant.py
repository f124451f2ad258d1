"""The Vagrantfile: `vagrant validate` passes, and its provisioning is the set-up script CI runs.

Debian's vagrant (2.3.4) has no provider usable here and no plugins for libvirt,
Parallels or VMware.  Plain ``vagrant validate`` then stops at "No usable default
provider"; ``--ignore-provider`` validates everything but the provider blocks.  So the
checks are:

* ``vagrant validate --ignore-provider`` on the real file (what a student's host runs
  before any provider is set up);
* ``vagrant validate`` with VirtualBox as the provider, its classes told they are
  installed and usable (as ``--ignore-provider`` itself does, but keeping the provider's
  config validation), for each CPU: the VirtualBox block is checked by Vagrant's own
  config class; a control run with a misspelt setting must fail;
* the Vagrantfile's DSL recorded by a stub ``Vagrant`` module in plain Ruby (the
  file is executed, not grepped): the provisioners, synced folder, forwarded port,
  boxes per provider and CPU, and the resources.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VAGRANTFILE = ROOT / "Vagrantfile"
PROVIDERS = ("virtualbox", "libvirt", "parallels", "vmware_desktop")

needs_vagrant = pytest.mark.skipif(shutil.which("vagrant") is None,
                                   reason="vagrant is not installed (scripts/setup.sh installs it)")
needs_ruby = pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed "
                                "(it comes with Debian's vagrant)")

# Provider classes pretend to be installed and usable (vagrant's validate command does the
# same for --ignore-provider, plugins/commands/validate/command.rb mockup_providers!).
USABLE_PROVIDERS = """
Vagrant.plugin("2").manager.providers.each do |_key, data|
  data[0].class_eval do
    def initialize(machine); end
    def machine_id_changed; end
    def self.installed?; true; end
    def self.usable?(raise_error = false); true; end
    def state
      Vagrant::MachineState.new(Vagrant::MachineState::NOT_CREATED_ID, :not_created, :not_created)
    end
  end
end
load %s
"""

# A stand-in for Vagrant's DSL that records every call as JSON.
RECORDER = r"""
require "json"
LOG = []
class Rec < BasicObject
  def initialize(path); @path = path; end
  def method_missing(name, *args, **kw, &blk)
    n = name.to_s
    if n == "[]="
      ::LOG << { "path" => @path + [args[0].to_s], "op" => "set", "value" => args[1] }
      return args[1]
    elsif n.end_with?("=")
      ::LOG << { "path" => @path + [n.chomp("=")], "op" => "set", "value" => args[0] }
      return args[0]
    end
    ::LOG << { "path" => @path + [n], "op" => "call", "args" => args, "kw" => kw }
    if blk
      if n == "provider"
        blk.call(::Rec.new(["provider", args[0].to_s]), ::Rec.new(["override", args[0].to_s]))
      else
        blk.call(::Rec.new(@path + [n]))
      end
    end
    ::Rec.new(@path + [n])
  end
  def respond_to_missing?(*) = true
end
module Vagrant
  VERSION = ENV.fetch("FAKE_VAGRANT_VERSION", "2.4.3")
  def self.require_version(*); end
  def self.configure(_version)
    yield ::Rec.new(["config"])
  end
end
load ARGV[0]
puts JSON.generate(LOG)
"""


def vagrant_env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGRANT_", "NATTRACK_"))}
    env.update(VAGRANT_HOME=str(tmp / "vagrant.d"), VAGRANT_DOTFILE_PATH=str(tmp / "dot"),
               VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1")
    env.update(extra)
    return env


def run_vagrant(args, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["vagrant", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def record(tmp: Path, **env) -> list[dict]:
    script = tmp / "recorder.rb"
    script.write_text(RECORDER)
    p = subprocess.run(["ruby", str(script), str(VAGRANTFILE)], cwd=ROOT,
                       env=vagrant_env(tmp, **env), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def calls(log, *path):
    return [e for e in log if e["path"] == list(path) and e["op"] == "call"]


def settings(log, *prefix) -> dict:
    n = len(prefix)
    return {e["path"][n]: e["value"] for e in log
            if e["op"] == "set" and e["path"][:n] == list(prefix) and len(e["path"]) == n + 1}


@needs_vagrant
def test_vagrant_validate_ignoring_providers(tmp_path):
    p = run_vagrant(["validate", "--ignore-provider"], ROOT, vagrant_env(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "validated successfully" in p.stdout


def vagrant_version() -> tuple[int, ...]:
    out = subprocess.run(["vagrant", "--version"], capture_output=True, text=True).stdout
    return tuple(int(n) for n in out.split()[-1].split(".")[:2])


@needs_vagrant
@pytest.mark.parametrize("debian", ["13", "12"])
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_vagrant_validate_with_the_virtualbox_block(tmp_path, arch, debian):
    wrapper = tmp_path / "box"
    wrapper.mkdir()
    (wrapper / "Vagrantfile").write_text(USABLE_PROVIDERS % json.dumps(str(VAGRANTFILE)))
    env = vagrant_env(tmp_path, VAGRANT_DEFAULT_PROVIDER="virtualbox", NATTRACK_ARCH=arch,
                      NATTRACK_DEBIAN=debian)
    if arch == "arm64" and debian == "13" and vagrant_version() < (2, 4):
        # Debian's vagrant (2.3.4) cannot pick a box's arm64 build: one line says so.
        p = run_vagrant(["validate"], wrapper, env)
        assert p.returncode != 0
        assert "Debian 13 for arm64 needs Vagrant >= 2.4" in p.stdout + p.stderr
        return
    p = run_vagrant(["validate"], wrapper, env)
    assert p.returncode == 0, p.stdout + p.stderr

    # Control: the same check fails on a VirtualBox setting that does not exist.
    broken = tmp_path / "Vagrantfile.broken"
    text = VAGRANTFILE.read_text()
    assert "vb.cpus = CPUS" in text
    broken.write_text(text.replace("vb.cpus = CPUS", "vb.cpus = CPUS\n    vb.cpu_count = 2"))
    (wrapper / "Vagrantfile").write_text(USABLE_PROVIDERS % json.dumps(str(broken)))
    p = run_vagrant(["validate"], wrapper, env)
    assert p.returncode != 0 and "cpu_count" in p.stdout + p.stderr, p.stdout + p.stderr


@needs_vagrant
def test_vagrant_rejects_a_bad_setting(tmp_path):
    """The environment overrides are checked when the file loads."""
    p = run_vagrant(["validate", "--ignore-provider"], ROOT,
                    vagrant_env(tmp_path, NATTRACK_ARCH="sparc"))
    assert p.returncode != 0
    assert "NATTRACK_ARCH=sparc: expected amd64 or arm64" in p.stdout + p.stderr
    p = run_vagrant(["validate", "--ignore-provider"], ROOT,
                    vagrant_env(tmp_path, NATTRACK_DEBIAN="11"))
    assert p.returncode != 0
    assert "NATTRACK_DEBIAN=11: expected 13 (default) or 12" in p.stdout + p.stderr


def _commands(script: str) -> list[list[str]]:
    """Simple commands of a shell line (split on newlines, ;, && and ||), tokenised."""
    out = []
    for line in script.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split = True
        cmd: list[str] = []
        for tok in lex:
            if tok in (";", "&&", "||", "|", "&"):
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
        if cmd:
            out.append(cmd)
    return out


@needs_ruby
def test_provisioning_runs_the_setup_script_from_the_synced_folder(tmp_path):
    log = record(tmp_path)
    # The repository is synced into the guest; the default /vagrant share is off.
    folders = {(c["args"][0], c["args"][1]): c["kw"] for c in calls(log, "config", "vm",
                                                                     "synced_folder")}
    guest = [g for (h, g), kw in folders.items() if h == "." and not kw.get("disabled")]
    assert len(guest) == 1, folders
    guest_dir = guest[0]
    sync = folders[(".", guest_dir)]
    if sync.get("type") == "rsync":      # work done in the VM survives the next `vagrant up`
        assert "--update" in sync["rsync__args"] and "--delete" not in sync["rsync__args"]

    provisions = calls(log, "config", "vm", "provision")
    assert provisions, "no provisioner"
    first = provisions[0]
    assert first["kw"].get("type") == "shell" and first["kw"].get("privileged") is True
    cmds = _commands(first["kw"]["inline"])
    cwd, ran = None, []
    for cmd in cmds:
        if cmd[0] == "cd":
            cwd = cmd[1]
        else:
            ran.append(os.path.normpath(os.path.join(cwd or "/", cmd[0])))
    assert ran == [f"{guest_dir}/scripts/setup.sh"], (cmds, guest_dir)

    # ... and that is the script CI runs: .ci/run -> scripts/test -> scripts/setup.sh.
    ci = _commands((ROOT / ".ci" / "run").read_text())
    assert ["exec", "scripts/test"] in ci
    # (the tests add --tests: what only they use, such as the browser and vagrant itself)
    assert ["scripts/setup.sh", "--tests"] in _commands((ROOT / "scripts" / "test").read_text())

    # The second provisioner adds the vagrant user to the lab's group and starts
    # JupyterLab listening for the forwarded port.
    later = " ".join(p["kw"].get("inline", "") for p in provisions[1:])
    later_cmds = _commands(later)
    assert ["usermod", "-aG", "nattrack", "vagrant"] in later_cmds
    assert any(c[:2] == ["systemctl", "enable"] for c in later_cmds)
    exec_start = [l.partition("=")[2] for l in later.splitlines()
                  if l.startswith("ExecStart=")]
    assert len(exec_start) == 1
    argv = shlex.split(exec_start[0])
    assert argv[0] == f"{guest_dir}/.venv/bin/nattrack" and argv[1] == "notebook"
    assert argv[argv.index("--ip") + 1] == "0.0.0.0"
    port = int(argv[argv.index("--port") + 1])
    assert argv[argv.index("--user") + 1] == "vagrant"

    fwd = calls(log, "config", "vm", "network")
    fwd = [c["kw"] for c in fwd if c["args"] == ["forwarded_port"]]
    assert len(fwd) == 1 and fwd[0]["guest"] == port
    assert fwd[0]["host_ip"] == "127.0.0.1"          # never the host's other interfaces


# The boxes each Debian release is offered in (names checked against the boxes' publishers:
# bento's Debian 13 carries both CPUs under one name since Vagrant 2.4's box architectures).
DEBIAN_13_BOXES = {"bento/debian-13", "debian/trixie64"}


@needs_ruby
@pytest.mark.parametrize("debian", ["13", "12", None])
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_boxes_and_resources_per_provider(tmp_path, arch, debian):
    log = record(tmp_path, NATTRACK_ARCH=arch, **({"NATTRACK_DEBIAN": debian} if debian else {}))
    declared = {c["args"][0] for c in calls(log, "config", "vm", "provider")}
    assert declared == set(PROVIDERS)
    for provider in PROVIDERS:
        box = settings(log, "override", provider, "vm")["box"]
        if debian == "12":
            assert "debian" in box and "12" in box, (provider, box)
            if provider != "libvirt":
                assert box.endswith("-arm64") == (arch == "arm64"), (provider, arch, box)
        else:                                   # Debian 13 is the default
            assert box in DEBIAN_13_BOXES, (provider, box)
    # Vagrant >= 2.4 is told which CPU's build to fetch.
    assert settings(log, "config", "vm")["box_architecture"] == arch
    vb = settings(log, "provider", "virtualbox")
    assert vb["cpus"] == 2 and 2048 <= vb["memory"] <= 4096
    vmx = settings(log, "provider", "vmware_desktop", "vmx")
    assert vmx["numvcpus"] == "2" and 2048 <= int(vmx["memsize"]) <= 4096
    lv = settings(log, "provider", "libvirt")
    assert lv.get("machine_arch") == ("aarch64" if arch == "arm64" else None)

    # One variable replaces every provider's box.
    log = record(tmp_path, NATTRACK_ARCH=arch, NATTRACK_BOX="my/debian12")
    assert {settings(log, "override", p, "vm")["box"] for p in PROVIDERS} == {"my/debian12"}


@needs_ruby
def test_before_vagrant_2_4_no_box_architecture(tmp_path):
    """Vagrant 2.3 has no box_architecture setting: the file must not use it there."""
    log = record(tmp_path, NATTRACK_ARCH="amd64", FAKE_VAGRANT_VERSION="2.3.4")
    assert "box_architecture" not in settings(log, "config", "vm")
    assert settings(log, "config", "vm")["box"] == "bento/debian-13"
