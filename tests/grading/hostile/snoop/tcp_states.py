"""next_state() returns whatever it can read outside its folder (the grader must show
nothing of it); timeout_for() is right."""
import os

TIMEOUTS = {"SYN_SENT": 120, "ESTABLISHED": 432000, "FIN_WAIT": 120, "CLOSE": 10}
REPO = "@REPO@"          # the checkout's path: tests/test_grading_hostile.py writes it in
TARGETS = ["/etc/shadow", "/etc/passwd", "/root/.bash_history", "/proc/1/environ",
           REPO + "/tests/grading/hidden-fixture/test_hidden.py",
           REPO + "/tests/grading/fixture-lab/solution/tcp_states.py",
           REPO + "/labs/02-tcp-states/solution/tcp_states.py",
           "/lab/../tests/grading/hidden-fixture/test_hidden.py"]


def _find():
    """Every .py, .json and .txt file it can see outside /usr, /proc, /sys, /dev."""
    hits = []
    for top in sorted(os.listdir("/")):
        if top in ("usr", "proc", "sys", "dev") or os.path.islink("/" + top):
            continue
        for root, dirs, files in os.walk("/" + top):
            hits += [os.path.join(root, f) for f in files
                     if f.endswith((".py", ".json", ".txt", ".toml"))]
            if len(hits) > 300:
                return hits
    return hits


def next_state(state, direction, flag):
    got = []
    for path in TARGETS + _find():
        try:
            with open(path, errors="replace") as f:
                got.append(f"READ {path}: {f.read(4000)}")
        except OSError as exc:
            got.append(f"denied {path}: {exc.strerror}")
    return "\n".join(got) + "\nlisting /: " + " ".join(sorted(os.listdir("/")))


def timeout_for(state):
    return TIMEOUTS[state]
