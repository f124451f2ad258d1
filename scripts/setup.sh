#!/usr/bin/env bash
# One idempotent set-up for README commands, CI and the Vagrant VM:
# Debian packages the kit drives, then a virtualenv (.venv) made from the system
# Python with --system-site-packages so the distribution's Mininet stays importable.
# Debian 12 (bookworm) and 13 (trixie).
#   scripts/setup.sh                  the kit (the demo, the labs, the notebooks, the grader)
#   scripts/setup.sh --tests          the kit and what only its tests use (scripts/test passes it)
#   scripts/setup.sh --list-packages  print the Debian packages it installs, change nothing
#   scripts/setup.sh --probe          only check that every command it provides is found
# The commands and their packages: scripts/commands.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
TESTS=0
ACTION=setup
for arg in "$@"; do
    case "$arg" in
        --tests) TESTS=1 ;;
        --list-packages) ACTION=list ;;
        --probe) ACTION=probe ;;
        *) echo "nattrack: setup.sh: unknown option '$arg' (expected --tests, --list-packages" \
                "or --probe)" >&2; exit 2 ;;
    esac
done

# Packages without a command of their own, then one package per command of commands.txt
# (its `tests` rows only with --tests).  Bookworm and trixie ship all of them under the
# same names; a rename would be handled here by VERSION_CODENAME (/etc/os-release).
# gcc, libc6-dev, python3-dev: scripts/build-compiled compiles the engine with mypyc (C extensions).
APT_PACKAGES=(python3 python3-venv python3-pip mininet gcc libc6-dev python3-dev)
COMMANDS=()
while read -r cmd pkg scope _; do
    [[ -z "$cmd" || "$cmd" == \#* ]] && continue
    [[ "$scope" == tests ]] && ((!TESTS)) && continue
    COMMANDS+=("$cmd:$pkg")
    APT_PACKAGES+=("$pkg")
done < scripts/commands.txt
# Only the tests need these (their commands, chromium and vagrant among them, are in
# commands.txt; this line is for packages a test needs without running a command of theirs).
((TESTS)) && APT_PACKAGES+=(chromium vagrant mmdebstrap python3-seccomp)  # these two: the emulated Gradescope container
mapfile -t APT_PACKAGES < <(printf '%s\n' "${APT_PACKAGES[@]}" | sort -u)

# Every command of commands.txt resolves (sbin included: a user's PATH may lack it).
probe() {
    local missing=() entry
    for entry in "${COMMANDS[@]}"; do
        PATH="$PATH:/usr/sbin:/sbin" command -v "${entry%%:*}" >/dev/null || missing+=("$entry")
    done
    if ((${#missing[@]})); then
        echo "nattrack: commands not found (command:package): ${missing[*]}; run" \
             "scripts/setup.sh$( ((TESTS)) && echo ' --tests') as root" >&2
        return 1
    fi
}

case "$ACTION" in
    list) printf '%s\n' "${APT_PACKAGES[@]}"; exit 0 ;;
    probe) probe; exit ;;
esac

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $EUID -ne 0 ]]; then
        echo "nattrack: missing Debian packages: ${missing[*]} (run this command with sudo once)" >&2
        exit 1
    fi
    echo "==> installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # vsftpd's package starts a machine-wide FTP server and enables it at boot: an FTP
    # server open to the student's network, which the kit never uses (lab 07 and
    # tests/live/test_ftp.py start their own, one per namespace, with their own config).
    # A policy-rc.d answering 101 keeps this install's services from starting (invoke-rc.d
    # and deb-systemd-invoke ask it; one already there, as in a container, is left alone),
    # and vsftpd's boot link is removed after.
    policy=""
    if [[ " ${missing[*]} " == *" vsftpd "* && ! -e /usr/sbin/policy-rc.d ]]; then
        policy=/usr/sbin/policy-rc.d
        trap 'rm -f "$policy"' EXIT
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
    fi
    # No recommends: Mininet's would pull in Open vSwitch, which the kit never uses.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ -n "$policy" ]]; then rm -f "$policy"; trap - EXIT; fi
    if [[ " ${missing[*]} " == *" vsftpd "* ]] && command -v systemctl >/dev/null; then
        systemctl disable vsftpd >/dev/null 2>&1 ||
            echo "nattrack: could not disable vsftpd at boot (systemctl disable vsftpd)" >&2
    fi
fi

VENV=.venv
stamp="$VENV/.nattrack-installed"
extra=notebooks,build                   # build: mypy's mypyc and setuptools, for scripts/build-compiled
((TESTS)) && extra=test,build            # the test extra includes the notebooks one
want="$extra $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "==> creating virtualenv $VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
# A test install satisfies a plain one; a plain install never downgrades a test one.
if [[ ! -f "$stamp" || ( "$(cat "$stamp")" != "$want" && "$(cat "$stamp")" != "test,build ${want#* }" ) ]]; then
    echo "==> installing nattrack ($extra) into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[$extra]"
    echo "$want" > "$stamp"
fi
# The engine's hot modules compiled with mypyc, rebuilt only when their source changed; if it
# cannot be built, one line says why and the pure-Python engine runs (NATTRACK_PURE=1 forces it).
"$VENV/bin/python" scripts/build-compiled
probe
