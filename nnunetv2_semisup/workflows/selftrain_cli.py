"""``nnUNetv2_semisup_selftrain``: teacher -> filtered pseudo-labels -> student with stock nnU-Net, in one command
(see :mod:`nnunetv2_semisup.workflows.selftrain` and the README, "Self-training")."""
import argparse
import sys

from nnunetv2_semisup.cli_errors import is_explained, os_error_message
from nnunetv2_semisup.workflows import reliability
from nnunetv2_semisup.workflows.commands import CommandError
from nnunetv2_semisup.workflows.selftrain import (FINETUNE_TRAINER, Model, Runner, SelfTrainError, SelfTrainSettings,
                                                  check_settings, check_state, overwrite_run,
                                                  source_dataset_name)

# chosen on the i.i.d. track's validation seeds 100 and 101 (benchmarks/selftrain_keep.py, docs/benchmarks.md): keeping
# every case gave the largest mean and the largest worst-seed gain over the teacher; no score ordered the cases by
# their true quality on both seeds, so dropping any share threw good cases away as often as bad ones
DEFAULT_KEEP = 1.0
DEFAULT_SCORE = "confidence"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_semisup_selftrain",
        description="Self-training with stock nnU-Net: train a teacher on the labeled cases of -d, predict every "
                    "scan of its imagesUnlabeled/ with probabilities, keep the most reliable pseudo-labels, write "
                    "them with the labeled cases into a new dataset (-o) and train a student on it; --rounds repeats "
                    "with the student as the next teacher. Re-running the same command continues where it stopped.")
    p.add_argument("-d", required=True, help="source dataset (id or DatasetXXX_Name) with imagesTr/labelsTr and "
                                             "imagesUnlabeled/")
    p.add_argument("-o", type=int, required=True, metavar="STUDENT_ID",
                   help="dataset id of round 1's student dataset (round r gets STUDENT_ID + r - 1); must be free")
    g = p.add_argument_group("teacher (round 1; an already trained model with these names is used as it is)")
    g.add_argument("-tr", default="nnUNetTrainer", help="teacher trainer (default nnUNetTrainer; any of ours too)")
    g.add_argument("-p", default="nnUNetPlans", help="teacher plans (default nnUNetPlans)")
    g.add_argument("-c", default="3d_fullres", help="teacher configuration (default 3d_fullres)")
    g.add_argument("-f", nargs="+", default=["all"],
                   help="teacher fold(s): 'all' (default) or several, e.g. 0 1 2 3 4 for an ensemble whose folds' "
                        "disagreement is scored too")
    g = p.add_argument_group("pseudo-labels")
    g.add_argument("--keep", type=float, default=DEFAULT_KEEP,
                   help=f"share of the unlabeled scans kept, the most reliable first (default {DEFAULT_KEEP})")
    g.add_argument("--score", default=DEFAULT_SCORE, choices=sorted(reliability.SCORES),
                   help="reliability score that orders the cases (default confidence; disagreement needs several "
                        "folds, round_variance --rounds >= 2)")
    g.add_argument("--ignore-below", type=float, default=None, metavar="P",
                   help="mark voxels whose teacher probability is below P with nnU-Net's ignore label (no loss); "
                        "default off")
    g.add_argument("--disable-tta", action="store_true", help="predict without mirroring (faster)")
    g.add_argument("--num-parts", type=int, default=1, help="split the prediction in this many parts (with "
                                                            "--part-id)")
    g.add_argument("--part-id", type=int, default=None,
                   help="predict only this part (0-based) of --num-parts and stop; run the others elsewhere, copy "
                        "their files in, then run without --part-id")
    g.add_argument("--pictures", type=int, default=3,
                   help="PNGs of the N most and N least reliable pseudo-labels per round (default 3)")
    g = p.add_argument_group("student")
    g.add_argument("--student-trainer", default="nnUNetTrainer", help="student trainer (default nnUNetTrainer)")
    g.add_argument("--student-configuration", default=None, help="default: the teacher's")
    g.add_argument("--student-planner", default=None,
                   help="plan the student anew with this nnU-Net planner (e.g. nnUNetPlannerResEncM) instead of "
                        "moving the teacher's plans over")
    g.add_argument("--student-plans", default=None,
                   help="student plans name (default: the teacher's; with --student-planner nnUNetPlans)")
    g.add_argument("--student-folds", nargs="+", default=["all"], help="student fold(s) (default all)")
    g.add_argument("--student-name", default=None, help="student dataset name (default <source name>SelfTrain; "
                                                        "the round number is appended)")
    g.add_argument("--rounds", type=int, default=1, help="self-training rounds (default 1)")
    g.add_argument("--finetune", action="store_true",
                   help=f"after each student, fine-tune it on the labeled cases alone ({FINETUNE_TRAINER})")
    g.add_argument("--finetune-trainer", default=FINETUNE_TRAINER,
                   help=f"trainer of the fine-tuning (default {FINETUNE_TRAINER}; "
                        f"{FINETUNE_TRAINER}_short on the short schedule)")
    g = p.add_argument_group("running")
    g.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"], help="default cuda")
    g.add_argument("-np", type=int, default=3, help="processes for fingerprint and preprocessing (default 3)")
    g.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run with this -o (its work folder and student datasets) and start again")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> SelfTrainSettings:
    source = source_dataset_name(args.d)
    teacher = Model(source, args.tr, args.p, args.c, [str(f) for f in args.f])
    return SelfTrainSettings(
        source_dataset=source, teacher=teacher, first_student_id=args.o, student_name=args.student_name,
        student_trainer=args.student_trainer, student_configuration=args.student_configuration,
        student_planner=args.student_planner, student_plans=args.student_plans,
        student_folds=[str(f) for f in args.student_folds], rounds=args.rounds, keep=args.keep, score=args.score,
        ignore_below=args.ignore_below, finetune=args.finetune, finetune_trainer=args.finetune_trainer,
        disable_tta=args.disable_tta, device=args.device, num_processes=args.np, num_parts=args.num_parts,
        part_id=args.part_id, pictures=args.pictures, quiet=args.quiet)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from nnunetv2_semisup.data.unlabeled_raw import UnlabeledDataError, find_unlabeled_cases
        settings = settings_from_args(args)
        runner = Runner(settings)
        try:
            unlabeled = find_unlabeled_cases(runner.source_raw, runner.dataset_json)
        except UnlabeledDataError as e:
            raise SelfTrainError(str(e)) from e
        check_settings(settings, unlabeled, runner.dataset_json, len(runner.labeled_cases()))
        if args.overwrite:
            overwrite_run(settings, runner.say)
        else:
            check_state(settings)
        runner.run_all()
    except (SelfTrainError, CommandError) as e:
        print(f"nnUNetv2_semisup_selftrain: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if not is_explained(e):
            raise
        print(f"nnUNetv2_semisup_selftrain: {os_error_message(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
