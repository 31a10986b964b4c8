"""Mutation testing: does the suite fail when a method is broken? (Not part of CI; minutes to hours.)

Two parts, both run in a temporary copy of the repository (the working tree is never touched):

``planted`` (default): the bugs a reviewer planted by hand, one at a time, each a one-line change (SKCDF without its
ramp weight, D_u labelling itself, Mean Teacher's weight and slice, CML's swapped targets, M&N teaching itself, the
geometry checks and run aggregation that compare too little, a resume that restarts at epoch 0, an extra module that
is re-initialised instead of loaded). Each must make the named test file fail.

``mutmut``: the PyPI mutation tool ``mutmut`` (``pip install mutmut``) over the listed modules, each against its own
fast test files; the score (killed / all mutants) per module and the surviving mutants go to ``--report``.

    python benchmarks/mutation.py planted --report docs/mutation_planted.md
    python benchmarks/mutation.py mutmut --modules evaluation/aggregate.py data/image_checks.py --report docs/mutation.md

The surviving mutants of a ``mutmut`` run are listed for a reviewer to judge (equivalent, or a missing test).
"""
import argparse
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "nnunetv2_semisup"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str           # relative to the repository root
    old: str            # must occur exactly once
    new: str
    tests: Sequence[str]  # pytest arguments: files and -k selectors


PLANTED: List[Mutant] = [
    Mutant("SKCDF total without the ramp weight w_u", f"{PKG}/methods/skcdf/trainer.py",
           "loss = sup_main + sup_aux + w * (u_main + u_aux)", "loss = sup_main + sup_aux + (u_main + u_aux)",
           ["tests/test_method_wiring.py", "-k", "skcdf"]),
    Mutant("SKCDF D_u pseudo-labels itself (its own main head, not D_l's)", f"{PKG}/methods/skcdf/trainer.py",
           "pseudo = out.labeled_main[b:].argmax(1)", "pseudo = out.unlabeled_main.argmax(1)",
           ["tests/test_method_wiring.py", "-k", "skcdf"]),
    Mutant("Mean Teacher: constant consistency weight (no ramp-up)", f"{PKG}/methods/mean_teacher/trainer.py",
           '"loss": l_sup + self.consistency_weight() * l_cons', '"loss": l_sup + self.mt_consistency_weight * l_cons',
           ["tests/test_method_wiring.py", "-k", "mean_teacher"]),
    Mutant("Mean Teacher: consistency on the wrong student slice", f"{PKG}/methods/mean_teacher/trainer.py",
           "l_cons = softmax_mse(outputs[0][b_l:], teacher_out)",
           "l_cons = softmax_mse(outputs[0][-teacher_out.shape[0]:].flip(0), teacher_out)",
           ["tests/test_method_wiring.py", "-k", "mean_teacher"]),
    Mutant("CML: the two subnets' unlabeled targets swapped", f"{PKG}/methods/cml/trainer.py",
           "t1, t2 = heterogeneous_targets(pl1, pl2, m_u)", "t1, t2 = heterogeneous_targets(pl2, pl1, m_u)",
           ["tests/test_method_wiring.py", "-k", "cml"]),
    Mutant("M&N: each model learns from its own soft mask", f"{PKG}/methods/mn/trainer.py",
           "soft = self.soft_targets_2d(x_u) if x_u is not None else None",
           "soft = self.soft_targets_3d(x_u) if x_u is not None else None",
           ["tests/test_method_wiring.py", "-k", "mn"]),
    Mutant("grid_mismatch compares only shape and spacing", f"{PKG}/data/image_checks.py",
           'for key in ("shape", "spacing", "origin", "direction"):', 'for key in ("shape", "spacing"):',
           ["tests/test_bad_inputs.py", "-k", "grid_mismatch"]),
    Mutant("evaluate's mm geometry check ignores the direction", f"{PKG}/evaluation/evaluate.py",
           'bad = [k for k in ("spacing", "origin", "direction")', 'bad = [k for k in ("spacing", "origin")',
           ["tests/test_evaluate_cli.py", "-k", "direction"]),
    Mutant("run aggregation refuses only a preset mismatch", f"{PKG}/evaluation/aggregate.py",
           '_SAME_KEYS = ("mode", "preset", "empty_policy", "lcc", "units", "hd95_definition", "asd_definition", '
           '"labels")', '_SAME_KEYS = ("preset",)',
           ["tests/test_metrics.py", "-k", "aggregate"]),
    Mutant("resume restarts at epoch 0", f"{PKG}/training/semisup_base.py",
           "        super().load_checkpoint(filename_or_checkpoint)\n",
           "        super().load_checkpoint(filename_or_checkpoint)\n        self.current_epoch = 0\n",
           ["tests/test_checkpoint_compat.py", "-k", "loads_every and MeanTeacher"]),
    Mutant("an extra module is re-initialised instead of loaded", f"{PKG}/training/semisup_base.py",
           "(unwrap(obj) if isinstance(obj, torch.nn.Module) else obj).load_state_dict(checkpoint[key])",
           "None if isinstance(obj, torch.nn.Module) else obj.load_state_dict(checkpoint[key])",
           ["tests/test_checkpoint_compat.py", "-k", "loads_every and MeanTeacher"]),
]


def repository_copy(dst: str) -> str:
    """The tracked and untracked-but-not-ignored files of the working tree, copied to ``dst``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for f in filter(None, files):
        src = os.path.join(ROOT, f)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, f)) or dst, exist_ok=True)
            shutil.copy2(src, os.path.join(dst, f))
    return dst


def run_tests(copy: str, tests: Sequence[str], timeout: int) -> subprocess.CompletedProcess:
    # the copy first on the path, for this process and for every command the tests start
    env = {**os.environ, "PYTHONPATH": copy + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=copy,
                          env=env, capture_output=True, text=True, timeout=timeout)


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def failing_test(text: str) -> str:
    for ln in text.splitlines():
        if ln.startswith("FAILED "):
            return ln[len("FAILED "):].split(" - ")[0]
    return ""


def planted(args) -> int:
    rows, survivors = [], 0
    with tempfile.TemporaryDirectory(prefix="semisup_mutation_") as tmp:
        copy = repository_copy(os.path.join(tmp, "repo"))
        # the unmutated copy must pass, or a "killed" would mean nothing
        for tests in sorted({tuple(m.tests) for m in PLANTED}):
            p = run_tests(copy, tests, args.timeout)
            if p.returncode != 0:
                print(f"the unmutated code fails {' '.join(tests)}:\n{p.stdout[-3000:]}", file=sys.stderr)
                return 2
        for i, m in enumerate(PLANTED, 1):
            path = os.path.join(copy, m.path)
            src = open(path).read()
            if src.count(m.old) != 1:
                print(f"{m.path}: the line to mutate ({m.old!r}) occurs {src.count(m.old)} times; update the "
                      f"mutant '{m.name}' to the current code", file=sys.stderr)
                return 2
            open(path, "w").write(src.replace(m.old, m.new))
            t0 = time.time()
            try:
                p = run_tests(copy, m.tests, args.timeout)
            finally:
                open(path, "w").write(src)
            killed = p.returncode != 0
            survivors += not killed
            rows.append((m, killed, failing_test(p.stdout), time.time() - t0))
            print(f"[{i}/{len(PLANTED)}] {'KILLED' if killed else 'SURVIVED'} {m.name} "
                  f"({failing_test(p.stdout) or last_line(p.stdout)}, {time.time() - t0:.0f} s)", flush=True)
    if args.report:
        with open(args.report, "w") as f:
            f.write("# Planted mutants\n\nWritten by `python benchmarks/mutation.py planted --report "
                    f"{args.report}`. Each mutant is a one-line change, planted alone in a copy of the repository; "
                    "the test that fails on it is named.\n\n| mutant | file | change | result | failing test |\n"
                    "|---|---|---|---|---|\n")
            for m, killed, test, _ in rows:
                change = f"`{m.old.strip()}` → `{m.new.strip()}`".replace("|", "\\|").replace("\n", " ")
                f.write(f"| {m.name} | `{m.path}` | {change} | {'killed' if killed else '**survived**'} | "
                        f"`{test}` |\n")
    return 1 if survivors else 0


# fast test files per module, for mutmut
WIRING = "tests/test_method_wiring.py"
MODULE_TESTS = {
    "evaluation/aggregate.py": ["tests/test_metrics.py"],
    "evaluation/metrics.py": ["tests/test_metrics.py"],
    "data/image_checks.py": ["tests/test_bad_inputs.py::test_array_and_direction_checks",
                             "tests/test_bad_inputs.py::test_grid_mismatch_checks_every_field",
                             "tests/test_convert_own.py"],
    "data/intensity_remap.py": ["tests/test_weak_strong.py::test_remapping_reorders_tissues_by_hand"],
    "workflows/reliability.py": ["tests/test_selftrain_units.py"],
    "methods/skcdf/losses.py": ["tests/test_skcdf_losses.py", WIRING],
    "methods/skcdf/skcm.py": ["tests/test_skcdf_skcm.py"],
    "methods/skcdf/trainer.py": [WIRING, "tests/test_skcdf_training.py"],
    "methods/cml/losses.py": ["tests/test_cml_units.py", WIRING],
    "methods/cml/cutmix.py": ["tests/test_cml_units.py", WIRING],
    "methods/cml/pseudo_labels.py": ["tests/test_cml_units.py", WIRING],
    "methods/cml/trainer.py": ["tests/test_cml_units.py", WIRING],
    "methods/mn/losses.py": ["tests/test_mn_loss.py", WIRING],
    "methods/mn/schedule.py": ["tests/test_mn_schedule.py"],
    "methods/mn/lrg.py": ["tests/test_mn_schedule.py"],
    "methods/mean_teacher/trainer.py": [WIRING, "tests/test_core_trainer.py::test_ema_update_formula",
                                        "tests/test_core_trainer.py::"
                                        "test_mean_teacher_after_step_moves_the_teacher_by_the_warmed_up_decay_and_counts_steps",
                                        "tests/test_core_trainer.py::test_mean_teacher_decay_warmup",
                                        "tests/test_core_trainer.py::test_softmax_mse_value"],
    "methods/weak_strong/augment.py": [f"tests/test_weak_strong.py::{t}" for t in (
        "test_weak_view_is_nnunets_spatial_pipeline_and_strong_view_shares_it",
        "test_weak_view_has_no_intensity_augmentation", "test_remapping_reorders_tissues_by_hand",
        "test_cutmix_moves_image_and_pseudo_label_with_the_same_box", "test_strong_view_is_the_documented_recipe",
        "test_strong_view_changes_nothing_of_nnunets_transforms_but_the_documented_ranges")],
}
# Not measured here: training/semisup_base.py and the rest of training/, whose tests need a planned dataset and the
# nnU-Net CLI (a minute per test run, hours per module); the planted mutants above cover their resume/checkpoint path.


def mutmut(args) -> int:
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("mutmut is not installed: pip install mutmut", file=sys.stderr)
        return 2
    results = []
    for module in args.modules:
        tests = MODULE_TESTS.get(module)
        if tests is None:
            print(f"no fast tests are listed for {module}; known: {', '.join(MODULE_TESTS)}", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory(prefix="semisup_mutmut_") as tmp:
            copy = repository_copy(os.path.join(tmp, "repo"))
            with open(os.path.join(copy, "setup.cfg"), "a") as f:
                selection = "".join(f"\n    {t}" for t in tests)
                f.write(f"\n[mutmut]\nsource_paths={PKG}\nonly_mutate={PKG}/{module}\n"
                        f"pytest_add_cli_args_test_selection={selection}\n")
            env = dict(os.environ)
            t0 = time.time()
            timed_out = False
            with open(os.path.join(tmp, "mutmut.log"), "w") as log:
                # its own process group: at the time limit mutmut *and* the mutant runs it forked are stopped
                proc = subprocess.Popen([sys.executable, "-m", "mutmut", "run", "--max-children",
                                         str(args.max_children)], cwd=copy, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    proc.wait(timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True  # the mutants run so far keep their result; the others count as not run
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=copy, env=env,
                                 capture_output=True, text=True).stdout
            status = [ln.strip().rsplit(": ", 1) for ln in out.splitlines() if ": " in ln]
            # a mutant that makes the tests hang (mutmut's "timeout") is detected too, as mutmut counts it
            killed = sum(1 for _, s in status if s in ("killed", "timeout", "caught by type check"))
            survivors = []
            unreached = sum(1 for _, s in status if s == "no tests")
            for name, s in status:
                if s == "survived":
                    diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=copy, env=env,
                                          capture_output=True, text=True).stdout
                    survivors.append((name.rsplit(".", 1)[-1], s, *changed_lines(diff)))
            n_run = sum(1 for _, s in status if s not in ("not checked", "skipped", "check was interrupted by user"))
            results.append((module + (f" (stopped after {args.timeout} s: {n_run} of {len(status)} run)"
                                      if timed_out else ""), killed, n_run - unreached, survivors, unreached))
            text_only = sum(1 for sv in survivors if only_text(sv[2], sv[3]))
            print(f"{module}: {killed}/{n_run - unreached} reached mutants killed, {len(survivors)} survived "
                  f"({text_only} change only message text), {unreached} not reached by its fast tests, "
                  f"{time.time() - t0:.0f} s", flush=True)
    if args.report:
        with open(args.report, "w") as f:
            f.write("# Mutation scores (mutmut)\n\nWritten by `python benchmarks/mutation.py mutmut --report "
                    f"{args.report}` (mutmut {mutmut_version()}); each module against its own fast tests "
                    "(`MODULE_TESTS` in the script). *Text-only* survivors change nothing but the wording of a message "
                    "or a string that no test reads whole; the others are listed with their changed line. *Not "
                    "reached*: mutants in code that the module's fast tests never execute in the test process "
                    "(mutmut's \"no tests\"; e.g. trainer code run only by the CLI tests in nnU-Net's own "
                    "processes); the score counts the reached mutants.\n\n"
                    "| module | killed / reached mutants | score | survivors: text-only | survivors: other | "
                    "not reached |\n|---|---|---|---|---|---|\n")
            for module, killed, n, survivors, unreached in results:
                other = [sv for sv in survivors if not only_text(sv[2], sv[3])]
                f.write(f"| `{module}` | {killed} / {n} | {killed / max(n, 1):.0%} | {len(survivors) - len(other)} | "
                        f"{len(other)} | {unreached} |\n")
            for module, _, _, survivors, _ in results:
                other = [sv for sv in survivors if not only_text(sv[2], sv[3])]
                if other:
                    f.write(f"\n## `{module}`: survivors that change code\n\n| mutant | original | mutated |\n"
                            "|---|---|---|\n")
                    for name, s, old, new in other:
                        f.write(f"| {name} ({s}) | `{md(old)}` | `{md(new)}` |\n")
    return 0


def md(code: str) -> str:
    return code.strip().replace("|", "\\|").replace("`", "'")[:140]


def changed_lines(diff: str):
    """The removed and added lines of a mutmut diff, joined."""
    old = " ".join(ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---"))
    new = " ".join(ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    return old, new


_STRING = re.compile(r"""([rbfu]{0,2})("[^"\\]*(?:\\.[^"\\]*)*"|'[^'\\]*(?:\\.[^'\\]*)*')""", re.I)


def _code_of(line: str) -> str:
    """The line with each string literal reduced to what is code in it (an f-string's {fields})."""
    def keep(m):
        return '"' + ("".join(re.findall(r"\{[^{}]*\}", m.group(2))) if "f" in m.group(1).lower() else "") + '"'
    return _STRING.sub(keep, line)


def only_text(old: str, new: str) -> bool:
    """True when the two lines differ only in the text of string literals (not in an f-string's fields)."""
    return old != new and _code_of(old) == _code_of(new)


def mutmut_version() -> str:
    try:
        from importlib.metadata import version
        return version("mutmut")
    except Exception:  # noqa: BLE001 - only for the report's header
        return "?"


def parse_args(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="part")
    a = sub.add_parser("planted", help="the hand-planted mutants (default)")
    a.add_argument("--report", default=None, help="write a Markdown table here")
    a.add_argument("--timeout", type=int, default=1200, help="seconds per test run")
    b = sub.add_parser("mutmut", help="mutmut over modules, each against its own fast tests")
    b.add_argument("--modules", nargs="+", default=list(MODULE_TESTS), help=f"of: {', '.join(MODULE_TESTS)}")
    b.add_argument("--report", default=None)
    b.add_argument("--timeout", type=int, default=7200)
    b.add_argument("--max-children", type=int, default=1, help="parallel mutant runs (mutmut's --max-children)")
    args = p.parse_args(argv)
    if args.part is None:
        args = p.parse_args(["planted", *(argv or sys.argv[1:])])
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return planted(args) if args.part == "planted" else mutmut(args)


if __name__ == "__main__":
    sys.exit(main())
