"""Fresh Debian root file systems for tests that reproduce a user's machine.

``rootfs_tarball(suite, packages)`` builds a minimal Debian ``suite`` (bookworm, trixie...)
with ``mmdebstrap`` plus ``packages`` and caches the tarball, so that only the first run on a
machine pays for the download (about a minute); ``unpack`` lays it out in a folder, and
``Chroot`` runs commands inside with ``/proc``, ``/sys`` and ``/dev`` mounted, unmounting
everything on the way out whatever happened.

Root only (mmdebstrap's root mode, mounts, chroot).  The cache lives in
``/var/cache/nattrack-tests/rootfs`` (``NATTRACK_ROOTFS_CACHE`` overrides) and a tarball is
rebuilt after ``MAX_AGE`` so that the suite keeps meeting the archive as a new user would.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

__all__ = ["rootfs_tarball", "unpack", "Chroot", "rootfs_problem"]

CACHE = Path(os.environ.get("NATTRACK_ROOTFS_CACHE", "/var/cache/nattrack-tests/rootfs"))
MAX_AGE = 7 * 24 * 3600
_FORMAT = "2"                     # bump when the way a tarball is built changes


def rootfs_problem() -> str | None:
    """None when roots can be built here, else why not (one line)."""
    if os.geteuid() != 0:
        return "building a Debian root needs root"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed: scripts/setup.sh --tests installs it"
    return None


def rootfs_tarball(suite: str, packages=(), variant: str = "apt") -> Path:
    """A cached tarball of a minimal Debian ``suite`` with ``packages`` installed."""
    packages = sorted(set(packages))
    key = hashlib.sha256(repr((_FORMAT, suite, variant, packages)).encode()).hexdigest()[:12]
    path = CACHE / f"{suite}-{variant}-{key}.tar"
    if path.exists() and time.time() - path.stat().st_mtime < MAX_AGE:
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    _prune()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tar")
    argv = ["mmdebstrap", "--mode=root", "--format=tar", f"--variant={variant}", "--quiet"]
    if packages:
        argv.append("--include=" + ",".join(packages))
    argv += [suite, str(tmp)]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if run.returncode != 0:
            tail = (run.stderr or run.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"mmdebstrap {suite} failed: " + " | ".join(tail))
        os.replace(tmp, path)                    # atomic: a half-built root is never cached
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _prune() -> None:
    """Forget what would be rebuilt anyway: roots older than MAX_AGE (package lists change,
    each list is a tarball of its own) and anything that is not a tarball."""
    for entry in CACHE.iterdir():
        if entry.name.startswith("."):
            continue                             # another build's temporary
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif time.time() - entry.stat().st_mtime >= MAX_AGE:
            entry.unlink(missing_ok=True)


def unpack(tarball: Path, dest: Path) -> Path:
    """Extract ``tarball`` into ``dest`` (created), owners and modes kept."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(dest), "--numeric-owner"],
                   check=True, capture_output=True)
    return dest


class Chroot:
    """``with Chroot(root) as c: c.run(["apt-get", ...])`` -- /proc, /sys, /dev mounted,
    the host's DNS settings copied in; everything unmounted on exit (even after a crash
    inside), lazily if something still holds a mount."""

    MOUNTS = ((["-t", "proc", "proc"], "proc"), (["--rbind", "/sys"], "sys"),
              (["--rbind", "/dev"], "dev"))

    def __init__(self, root: Path, binds: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.binds = dict(binds or {})           # host path -> path inside
        self._mounted: list[Path] = []

    def __enter__(self) -> "Chroot":
        try:
            for opts, rel in self.MOUNTS:
                self._mount(["mount", *opts], rel)
            for host, inside in self.binds.items():
                self._mount(["mount", "--bind", host], inside.lstrip("/"))
            resolv = self.root / "etc/resolv.conf"
            if resolv.is_symlink():
                resolv.unlink()
            shutil.copyfile("/etc/resolv.conf", resolv)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _mount(self, argv: list[str], rel: str) -> None:
        target = self.root / rel
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run([*argv, str(target)], check=True, capture_output=True)
        if "--rbind" in argv:                    # no mount event leaks back to the host
            subprocess.run(["mount", "--make-rslave", str(target)], check=True,
                           capture_output=True)
        self._mounted.append(target)

    def run(self, argv, *, env: dict | None = None, timeout: float = 900, check: bool = True,
            cwd: str = "/") -> subprocess.CompletedProcess:
        """``argv`` inside the root (a list, or a string for ``sh -c``), output captured."""
        if isinstance(argv, str):
            argv = ["/bin/sh", "-c", argv]
        base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        base.update(env or {})
        done = subprocess.run(["chroot", str(self.root), "/bin/sh", "-c",
                               'cd "$0" && exec "$@"', cwd, *argv],
                              env=base, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
            raise AssertionError(f"in {self.root}: {' '.join(argv)} exited "
                                 f"{done.returncode}:\n" + "\n".join(tail))
        return done

    def __exit__(self, *exc) -> None:
        for target in reversed(self._mounted):
            if subprocess.run(["umount", "-R", str(target)], capture_output=True).returncode:
                subprocess.run(["umount", "-R", "-l", str(target)], capture_output=True)
        self._mounted.clear()
