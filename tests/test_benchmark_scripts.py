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


def test_planted_mutants_still_match_the_code():
    """benchmarks/mutation.py plants each reviewer's mutant by replacing one exact line: if the code moves on, the
    list must be updated (otherwise the mutation run stops and says which one)."""
    sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))
    try:
        import mutation
    finally:
        sys.path.pop(0)
    for m in mutation.PLANTED:
        src = open(os.path.join(HERE, "..", m.path)).read()
        assert src.count(m.old) == 1, (m.name, m.path)
        assert m.old != m.new and os.path.isfile(os.path.join(HERE, "..", m.tests[0].split("::")[0]))
    assert mutation.only_text('raise E(f"bad {x}")', 'raise E(f"XXbad {x}XX")')
    assert not mutation.only_text('raise E(f"bad {x}")', 'raise E(f"bad {y}")')
    assert not mutation.only_text("a = b + 1", "a = b - 1")
