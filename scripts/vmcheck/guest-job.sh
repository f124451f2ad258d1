#!/bin/bash
# Inside a vm-check guest, started once by nattrack-vmcheck.service: the set-up, the kernel
# differential suite and the demo, as a new user on this Debian would run them, then one
# VMCHECK-RESULT line for the host and a power-off.  Everything goes to the virtio port the
# host reads (scripts/vm-check).
port=/dev/virtio-ports/vmcheck
for _ in $(seq 100); do [[ -e $port ]] && break; sleep 0.2; done
exec >"$port" 2>&1
trap 'sync; systemctl --no-block poweroff' EXIT

set -a; . /etc/nattrack-vmcheck.env; set +a     # this host's pip configuration
cd /root/nattrack
t0=$(date +%s)
echo "== vm-check guest: kernel $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME")"

scripts/setup.sh --tests
setup_rc=$?
t1=$(date +%s)

suite_rc=- summary="not run (the set-up failed)"
if ((setup_rc == 0)); then
    # shellcheck disable=SC2086   # VMCHECK_TESTS: paths from vm-check --tests, split on spaces
    CI=true .venv/bin/python -m pytest -q -p no:cacheprovider ${VMCHECK_TESTS:-tests/kernel} 2>&1 \
        | tee /root/kernel-suite.log
    suite_rc=${PIPESTATUS[0]}
    # pytest's last line: "112 passed, 1 xfailed in 301.20s (0:05:01)"
    summary=$(grep -E '\b(passed|failed|errors?|skipped)\b.* in [0-9.]+s' /root/kernel-suite.log \
              | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//')
fi
t2=$(date +%s)

demo_rc=-
if ((setup_rc == 0)); then
    timeout 600 scripts/demo </dev/null
    demo_rc=$?
fi
t3=$(date +%s)

echo "VMCHECK-RESULT kernel=$(uname -r) setup_rc=$setup_rc suite_rc=$suite_rc demo_rc=$demo_rc" \
     "setup_s=$((t1 - t0)) suite_s=$((t2 - t1)) demo_s=$((t3 - t2)) summary=$summary"
