"""Every benchmark script imports and answers ``--help`` (they are not run here: their runs are the benchmarks)."""
import glob
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = sorted(glob.glob(os.path.join(HERE, "..", "benchmarks", "*.py")))


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_benchmark_script_answers_help(script):
    p = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "usage:" in p.stdout.lower()
