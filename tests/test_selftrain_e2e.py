"""``nnUNetv2_semisup_selftrain`` through the real CLI on tiny synthetic data: teacher -> pseudo-labels -> student ->
stock ``nnUNetv2_predict``, interrupted in every step and resumed; FLARE22's cross-round filter over two rounds with
fine-tuning; bad inputs refused with nothing written."""
import csv
import glob
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import copy_planned_dataset, run_cli

SOURCE_ID, SOURCE_NAME = 960, "SelfTrainSource"
SOURCE = f"Dataset{SOURCE_ID}_{SOURCE_NAME}"
SHORT = "nnUNetTrainer_semisupShort"


@pytest.fixture(scope="module")
def source(planned_dataset):
    """A copy of the planned synthetic dataset (4 labeled, 6 unlabeled, 3 test) that only these tests train on."""
    copy_planned_dataset(planned_dataset, SOURCE_ID, SOURCE_NAME)
    env = dict(planned_dataset.env, nnUNet_semisup_short_epochs="2", nnUNet_semisup_short_iterations="3")
    return planned_dataset, env


def selftrain(env, *args, expect_ok=True, **extra_env):
    return run_cli(["nnUNetv2_semisup_selftrain", "-d", SOURCE_ID, "-tr", SHORT, "--student-trainer", SHORT,
                    "-device", "cpu", "-np", 1, "--quiet", *args], dict(env, **extra_env), expect_ok=expect_ok)


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def test_selftrain_end_to_end_interrupted_in_every_step(source):
    ds, env = source
    work = os.path.join(ds.results, SOURCE, "selftrain_961")
    teacher = os.path.join(ds.results, SOURCE, f"{SHORT}__nnUNetPlans__3d_fullres", "fold_all")
    args = ["-o", 961, "--keep", 0.5, "--ignore-below", 0.5]

    # 1. the teacher's training is killed after epoch 1 of 2: the command says so; no pseudo-label is written
    p = selftrain(env, *args, expect_ok=False, nnUNet_semisup_short_stop_after="1")
    assert p.returncode == 1 and "Run this command again to continue the training with --c" in p.stderr
    assert os.path.isfile(os.path.join(teacher, "checkpoint_latest.pth"))
    assert not os.path.isfile(os.path.join(teacher, "checkpoint_final.pth"))
    assert not os.path.isdir(os.path.join(work, "round_1", "predictions"))

    # 2. resumed with --c; only part 0 of 2 of the pseudo-labels (the multi-machine recipe), then it stops
    p = selftrain(env, *args, "--num-parts", 2, "--part-id", 0)
    assert "resume the teacher" in p.stdout and " --c " in p.stdout + " "
    assert "Part 0 of 2" in p.stdout
    pred = os.path.join(work, "round_1", "predictions", "fold_all")
    part0 = sorted(glob.glob(os.path.join(pred, "*.npz")))
    assert 0 < len(part0) < 6
    mtimes = {f: os.path.getmtime(f) for f in part0}

    # 3. the rest is predicted (not part 0 again); killed after scoring
    p = selftrain(env, *args, expect_ok=False, nnUNet_semisup_selftrain_stop_after="score")
    assert p.returncode == 1 and "stopped after step 'score'" in p.stderr
    assert f"predict {6 - len(part0)} unlabeled scans" in p.stdout
    assert {f: os.path.getmtime(f) for f in part0} == mtimes
    assert len(glob.glob(os.path.join(pred, "*.npz"))) == 6
    assert not glob.glob(os.path.join(ds.raw, "Dataset961_*"))

    # 4. a leftover temporary student folder (as from a kill while writing it) is replaced; killed after the dataset
    leftover = os.path.join(ds.raw, f".Dataset961_{SOURCE_NAME}SelfTrain1.selftrain_tmp")
    os.makedirs(os.path.join(leftover, "imagesTr"))
    p = selftrain(env, *args, expect_ok=False, nnUNet_semisup_selftrain_stop_after="student_dataset")
    assert "score the pseudo-labels of 6 scans" in p.stdout and "already done" in p.stdout
    assert not os.path.exists(leftover)
    student_raw = os.path.join(ds.raw, f"Dataset961_{SOURCE_NAME}SelfTrain1")

    # 5. the student is planned, preprocessed and killed after epoch 1; 6. finished with --c
    p = selftrain(env, *args, expect_ok=False, nnUNet_semisup_short_stop_after="1")
    assert "nnUNetv2_move_plans_between_datasets -s 960 -t 961" in p.stdout
    p = selftrain(env, *args)
    assert "resume the student" in p.stdout
    assert "nnUNetv2_predict -i INPUT -o OUTPUT -d 961 -c 3d_fullres" in p.stdout

    # the record: every unlabeled case scored; the most reliable half kept; dataset.json says which and why
    with open(os.path.join(work, "round_1", "pseudo_labels.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and sum(int(r["kept"]) for r in rows) == 3
    conf = [float(r["confidence"]) for r in rows]
    assert conf == sorted(conf, reverse=True) and [int(r["kept"]) for r in rows] == [1, 1, 1, 0, 0, 0]
    with open(os.path.join(student_raw, "dataset.json")) as f:
        dsj = json.load(f)
    rec = dsj["semisup"]["selftrain"]
    assert dsj["labels"]["ignore"] == 4 and dsj["numTraining"] == 7
    assert sorted(rec["pseudo_labeled_cases"]) == sorted(r["case"] for r in rows[:3])
    assert sorted(rec["dropped_cases"]) == sorted(r["case"] for r in rows[3:])
    assert rec["teacher"]["trainer"] == SHORT and rec["teacher"]["dataset"] == SOURCE and rec["round"] == 1
    assert len(rec["labeled_cases"]) == 4
    # no test case anywhere in the student dataset
    test_cases = {os.path.basename(p)[:-len("_0000.nii.gz")] for p in glob.glob(os.path.join(ds.raw, SOURCE,
                                                                                              "imagesTs", "*"))}
    student_cases = {os.path.basename(p)[:-len(".nii.gz")] for p in glob.glob(os.path.join(student_raw,
                                                                                           "labelsTr", "*"))}
    assert test_cases and not test_cases & student_cases and len(student_cases) == 7

    # ignore label exactly where the teacher's probability is below 0.5; elsewhere the teacher's argmax
    for r in rows[:3]:
        case = r["case"]
        with np.load(os.path.join(pred, case + ".npz")) as f:
            probs = f["probabilities"]
        label = read(os.path.join(student_raw, "labelsTr", case + ".nii.gz"))
        unconfident = probs.max(0) < 0.5
        assert np.array_equal(label == 4, unconfident)
        assert np.array_equal(label[~unconfident], probs.argmax(0)[~unconfident])
        # the CSV keeps 6 significant digits (relative rounding error <= 5e-6)
        assert float(r["ignored_share"]) == pytest.approx(unconfident.mean(), rel=1e-5)
    pngs = sorted(os.listdir(os.path.join(work, "round_1", "png")))
    assert len(pngs) == 6 and pngs[0].startswith("least_reliable_1_" + rows[-1]["case"])

    # a finished run is not redone
    final = os.path.join(ds.results, f"Dataset961_{SOURCE_NAME}SelfTrain1", f"{SHORT}__nnUNetPlans__3d_fullres",
                         "fold_all", "checkpoint_final.pth")
    before = os.path.getmtime(final)
    p = selftrain(env, *args)
    assert p.stdout.count("already done") >= 5 and os.path.getmtime(final) == before

    # the student predicts with stock nnU-Net
    out = os.path.join(ds.results, "selftrain_pred")
    run_cli(["nnUNetv2_predict", "-i", os.path.join(ds.raw, SOURCE, "imagesTs"), "-o", out, "-d", 961, "-c",
             "3d_fullres", "-tr", SHORT, "-f", "all", "-device", "cpu", "--disable_tta", "-npp", 1, "-nps", 1], env)
    assert len(glob.glob(os.path.join(out, "*.nii.gz"))) == 3


def test_flare_rounds_with_cross_round_filter_and_finetuning(source):
    ds, env = source
    p = selftrain(env, "-o", 965, "--rounds", 2, "--score", "round_variance", "--keep", 0.5, "--finetune",
                  "--finetune-trainer", "nnUNetTrainerSelfTrainFinetune_short")
    work = os.path.join(ds.results, SOURCE, "selftrain_965")
    rounds = []
    for r in (1, 2):
        with open(os.path.join(work, f"round_{r}", "pseudo_labels.csv")) as f:
            rounds.append(list(csv.DictReader(f)))
    # round 1 keeps every case (the cross-round filter needs two rounds), round 2 the half with the lowest variance
    assert all(row["kept"] == "1" for row in rounds[0])
    assert [row["kept"] for row in rounds[1]] == ["1"] * 3 + ["0"] * 3
    variances = [float(row["round_variance"]) for row in rounds[1]]
    assert variances == sorted(variances)
    for row in rounds[1]:   # FLARE22's formula, recomputed from the two rounds' pseudo-labels
        l1, l2 = (read(os.path.join(work, f"round_{r}", "pseudo_labels", row["case"] + ".nii.gz")) for r in (1, 2))
        assert float(row["round_variance"]) == pytest.approx(np.sum(l1 != l2) / np.sum(l2 > 0), rel=1e-5)
    # round 2's teacher is round 1's fine-tuned student, fine-tuned on the labeled cases only
    with open(os.path.join(ds.raw, f"Dataset966_{SOURCE_NAME}SelfTrain2", "dataset.json")) as f:
        teacher2 = json.load(f)["semisup"]["selftrain"]["teacher"]
    assert teacher2["dataset"] == f"Dataset965_{SOURCE_NAME}SelfTrain1"
    assert teacher2["trainer"] == "nnUNetTrainerSelfTrainFinetune_short"
    logs = glob.glob(os.path.join(ds.results, f"Dataset965_{SOURCE_NAME}SelfTrain1",
                                  "nnUNetTrainerSelfTrainFinetune_short__nnUNetPlans__3d_fullres", "fold_all",
                                  "training_log_*.txt"))
    with open(logs[0]) as f:
        assert "Fine-tuning on the 4 labeled cases only" in f.read()
    assert "-d 966 -c 3d_fullres -tr nnUNetTrainerSelfTrainFinetune_short" in p.stdout


def _nothing_written(ds, student_id):
    return not glob.glob(os.path.join(ds.results, "*", f"selftrain_{student_id}")) and not any(
        glob.glob(os.path.join(root, f"Dataset{student_id}_*")) for root in (ds.raw, ds.preprocessed, ds.results))


@pytest.mark.parametrize("case", ["no_unlabeled", "id_taken", "teacher_other_dataset", "teacher_other_plans", "keep",
                                  "disagreement_1fold", "five_folds_four_cases", "rounds_variance"])
def test_bad_inputs_refused_nothing_written(source, case):
    ds, env = source
    dataset, extra, expect = SOURCE_ID, [], None
    if case == "no_unlabeled":
        raw, _ = copy_planned_dataset(ds, 962, "SelfTrainNoUnlabeled")
        shutil.rmtree(os.path.join(raw, "imagesUnlabeled"))
        dataset, expect = 962, "No unlabeled scans"
    elif case == "id_taken":
        extra, expect = ["-o", 990], "Dataset id 990 is taken"
    elif case == "teacher_other_dataset":
        copy_planned_dataset(ds, 963, "SelfTrainForeignTeacher")
        folder = os.path.join(ds.results, "Dataset963_SelfTrainForeignTeacher", f"{SHORT}__nnUNetPlans__3d_fullres")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(ds.preprocessed_folder, "nnUNetPlans.json")) as f:
            plans = json.load(f)   # plans.json of a model trained on dataset 990
        with open(os.path.join(folder, "plans.json"), "w") as f:
            json.dump(plans, f)
        dataset, expect = 963, "was trained on Dataset990_SemiSupSynthetic, not on Dataset963"
    elif case == "teacher_other_plans":
        _, pp = copy_planned_dataset(ds, 964, "SelfTrainReplanned")
        folder = os.path.join(ds.results, "Dataset964_SelfTrainReplanned", f"{SHORT}__nnUNetPlans__3d_fullres")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(pp, "nnUNetPlans.json")) as f:
            plans = json.load(f)
        plans["configurations"]["3d_fullres"]["spacing"] = [5.0, 2.0, 2.0]   # the teacher's, before a re-plan
        with open(os.path.join(folder, "plans.json"), "w") as f:
            json.dump(plans, f)
        dataset, expect = 964, "was trained with other plans than"
    elif case == "keep":
        extra, expect = ["--keep", 1.5], "--keep 1.5"
    elif case == "disagreement_1fold":
        extra, expect = ["--score", "disagreement"], "compares the folds of the teacher"
    elif case == "five_folds_four_cases":
        extra, expect = ["-f", 0, 1, 2, 3, 4], "needs at least 5 labeled cases"
    elif case == "rounds_variance":
        extra, expect = ["--score", "round_variance"], "use --rounds 2 or more"
    extra = extra if "-o" in extra else ["-o", 970] + extra
    # the short trainer, so that a check that failed to refuse would at least not train for hours
    p = run_cli(["nnUNetv2_semisup_selftrain", "-d", dataset, "-tr", SHORT, "-device", "cpu", *extra], env,
                expect_ok=False, timeout=300)
    assert p.returncode != 0 and expect in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert _nothing_written(ds, 970)
