#!/usr/bin/env bash
# One idempotent set-up for README commands, CI and the Vagrant VM:
# Debian packages the kit drives, then a virtualenv (.venv) made from the system
# Python with --system-site-packages so the distribution's Mininet stays importable.
#   scripts/setup.sh           the kit (the demo, the labs, the notebooks, the grader)
#   scripts/setup.sh --tests   the kit and what only its tests use (scripts/test passes it)
set -euo pipefail
cd "$(dirname "$0")/.."
TESTS=0
[[ "${1:-}" == "--tests" ]] && TESTS=1

APT_PACKAGES=(python3 python3-venv python3-pip iptables conntrack iproute2 tcpdump ethtool
              hping3 netcat-openbsd iputils-ping curl iperf3 mininet
              bubblewrap)                # the grader's sandbox: a submission sees only its folder
# Only the tests need these: chromium for the notebooks' browser test (Playwright drives
# Debian's build; CI cannot download one), vagrant for `vagrant validate` of the Vagrantfile.
((TESTS)) && APT_PACKAGES+=(chromium vagrant)

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
    # No recommends: Mininet's would pull in Open vSwitch, which the kit never uses.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

VENV=.venv
stamp="$VENV/.nattrack-installed"
extra=notebooks
((TESTS)) && extra=test                  # the test extra includes the notebooks one
want="$extra $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "==> creating virtualenv $VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
# A test install satisfies a plain one; a plain install never downgrades a test one.
if [[ ! -f "$stamp" || ( "$(cat "$stamp")" != "$want" && "$(cat "$stamp")" != "test ${want#* }" ) ]]; then
    echo "==> installing nattrack ($extra) into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[$extra]"
    echo "$want" > "$stamp"
fi
