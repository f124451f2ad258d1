"""nattrack.labs, the old name of nattrack.exercises, still imports for one release."""
import subprocess
import sys

CHECK = """
import warnings
warnings.simplefilter("error", DeprecationWarning)
try:
    import nattrack.labs
except DeprecationWarning as w:
    print("warned:", w)
warnings.simplefilter("ignore", DeprecationWarning)
from nattrack.labs.manifest import Lab
import nattrack.labs.testing as old_testing
import nattrack.exercises.manifest as manifest
import nattrack.exercises.testing as testing
print(Lab is manifest.Lab, old_testing is testing)
"""


def test_the_old_name_warns_and_gives_the_same_modules():
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "warned: nattrack.labs is now nattrack.exercises" in r.stdout
    assert r.stdout.strip().endswith("True True")
