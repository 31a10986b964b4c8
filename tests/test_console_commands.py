"""Every console command of setup.py, run once through its installed executable: ``--help`` answers, and a bad
input ends with exit status 1 or 2 and a message naming what is wrong — never a traceback."""
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _console_scripts():
    text = open(os.path.join(HERE, "..", "setup.py")).read()
    return sorted(set(re.findall(r'"(nnUNetv2_semisup_\w+) = ', text)))


COMMANDS = _console_scripts()
MISSING = "/nonexistent_semisup_input"
# one bad invocation per command and what its message must name
BAD = {
    "nnUNetv2_semisup_trainer_dir": (["--check"], "nnUNet_extTrainer"),
    "nnUNetv2_semisup_preprocess": (["-d", "999"], "999"),
    "nnUNetv2_semisup_make_synthetic": (["-d", "999", "--labeled", "0"], "--labeled must be >= 1"),
    "nnUNetv2_semisup_evaluate": (["-ref", MISSING, "-pred", MISSING], f"reference folder {MISSING} not found"),
    "nnUNetv2_semisup_demo": (["--methods", "nosuchtrainer"], "unknown trainer(s) nosuchtrainer"),
    "nnUNetv2_semisup_selftrain": (["-d", "999", "-o", "998"], "no Dataset999_* in nnUNet_raw"),
    "nnUNetv2_semisup_rank_unlabeled": (["-d", "999", "-o", MISSING + "_rank"], "no Dataset999_* in nnUNet_raw"),
    "nnUNetv2_semisup_convert_own": (["--check", "-d", "999"], "no dataset with ID 999"),
    "nnUNetv2_semisup_add_unlabeled": (["-d", "999", "-i", MISSING], MISSING),
}
for name in ("LA", "Pancreas", "Synapse", "AMOS", "BraTS2019", "ACDC"):
    BAD[f"nnUNetv2_semisup_convert_{name}"] = (["-i", MISSING, "-d", "999"], f"input folder not found: {MISSING}")


def _run(name, args, env):
    exe = os.path.join(os.path.dirname(sys.executable), name)
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def empty_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("console")
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(base / k)
        env[k] = str(base / k)
    return env


def test_every_console_command_is_covered():
    assert len(COMMANDS) >= 15 and set(COMMANDS) == set(BAD), set(COMMANDS) ^ set(BAD)


@pytest.mark.parametrize("name", COMMANDS)
def test_installed_command_answers_help_and_names_a_bad_input(name, empty_env):
    p = _run(name, ["--help"], empty_env)
    assert p.returncode == 0 and "usage" in p.stdout.lower(), p.stderr[-2000:]
    args, expected = BAD[name]
    p = _run(name, args, empty_env)
    assert p.returncode in (1, 2), (p.returncode, p.stdout[-1000:], p.stderr[-2000:])
    assert expected in p.stderr + p.stdout, p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
