"""``nnUNetv2_semisup_rank_unlabeled``: scores by hand on small arrays, the order and the spread, refusals with
nothing written, and the ranking through the real CLI with stock nnU-Net and with every trainer of ours (each
trainer's own views), including scans whose difficulty is known."""
import csv
import glob
import math
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import copy_planned_dataset, run_cli
from nnunetv2_semisup.workflows import rank_unlabeled as R


def test_view_dice_by_hand():
    a = np.array([0, 1, 1, 2, 2, 0])
    b = np.array([0, 1, 0, 2, 2, 2])
    # class 1: 2·1 / (2 + 1) = 2/3; class 2: 2·2 / (2 + 3) = 4/5 -> mean 11/15
    assert R.view_dice([a, b]) == pytest.approx(11 / 15)
    c = np.array([0, 1, 1, 2, 2, 0])
    # pairs (a, b) 11/15, (a, c) 1, (b, c) 11/15
    assert R.view_dice([a, b, c]) == pytest.approx((11 / 15 + 1 + 11 / 15) / 3)
    assert math.isnan(R.view_dice([np.zeros(3), np.zeros(3)]))


def test_scan_scores_of_two_disagreeing_views():
    # two views, two classes, four voxels: v1 = (fg, fg, bg, bg), v2 = (fg, bg, bg, bg) with these probabilities
    v1 = np.array([[0.1, 0.4, 0.9, 0.8], [0.9, 0.6, 0.1, 0.2]])
    v2 = np.array([[0.3, 0.8, 0.7, 0.9], [0.7, 0.2, 0.3, 0.1]])
    s = R.scan_scores([v1, v2])
    # mean = (0.2, 0.8), (0.6, 0.4), ...: foreground = voxel 0 only; disagreement over the union {0, 1}: voxel 1
    assert s["foreground_voxels"] == 1 and s["confidence"] == pytest.approx(0.8)
    assert s["disagreement"] == pytest.approx(0.5) and s["view_dice"] == pytest.approx(2 / 3) and s["views"] == 2


def test_heat_map_is_disagreement_with_views_and_normalised_entropy_with_one(tmp_path):
    one_hot = np.zeros((3, 1, 1, 3))
    one_hot[0, 0, 0, 0] = one_hot[1, 0, 0, 1] = one_hot[2, 0, 0, 2] = 1  # labels 0, 1, 2
    other = one_hot.copy()
    other[:, 0, 0, 2] = (0, 1, 0)  # the second view says 1 where the first says 2
    assert R.heat_map([one_hot, other]).ravel().tolist() == [0, 0, 1]
    single = np.zeros((3, 1, 1, 3))
    single[:, 0, 0, 0] = 1 / 3  # uniform: entropy log 3, normalised 1
    single[:, 0, 0, 1] = (0.5, 0.5, 0.0)  # log 2 / log 3
    single[:, 0, 0, 2] = (0.0, 0.0, 1.0)  # certain: 0
    assert R.heat_map([single]).ravel() == pytest.approx([1.0, math.log(2) / math.log(3), 0.0], abs=1e-6)
    # the picture shows the slice where the heat map sums highest (slice 2 of 4), its third panel white there
    image, labels, heat = np.random.default_rng(0).random((4, 8, 8)), np.zeros((4, 8, 8), int), np.zeros((4, 8, 8))
    heat[2], labels[2, 2:5, 2:5] = 1.0, 1
    png = R.write_disagreement_png(str(tmp_path / "p.png"), image, labels, heat)
    from matplotlib import pyplot as plt
    row = plt.imread(png)[..., :3]
    k = row.shape[0] // 8
    third = row[:, -8 * k:]
    assert third.min() == pytest.approx(1.0)  # all white: slice 2 was drawn
    from nnunetv2_semisup.evaluation.pictures import SEPARATOR
    plain, pred = row[:, :8 * k], row[:, (8 + SEPARATOR) * k:(16 + SEPARATOR) * k]
    differs = (pred != plain).any(-1)
    assert differs.any() and not differs[:2 * k].any()  # the outline of slice 2's square, nothing above it


def test_combined_order_empty_first_then_uncertain_and_inconsistent():
    scores = {"easy": {"entropy": 0.1, "disagreement": 0.0, "foreground_voxels": 9},
              "unsure": {"entropy": 0.9, "disagreement": 0.2, "foreground_voxels": 9},
              "inconsistent": {"entropy": 0.3, "disagreement": 0.6, "foreground_voxels": 9},
              "empty": {"entropy": math.nan, "disagreement": math.nan, "foreground_voxels": 0}}
    R.add_combined(scores)
    # percentile ranks over the three finite cases: entropy easy 0, inconsistent 0.5, unsure 1;
    # disagreement easy 0, unsure 0.5, inconsistent 1 -> combined 0, 0.75, 0.75
    assert scores["easy"]["combined"] == 0 and scores["unsure"]["combined"] == pytest.approx(0.75)
    assert R.informative_order(scores, "combined") == ["empty", "inconsistent", "unsure", "easy"]
    assert R.informative_order(scores, "entropy")[1:] == ["unsure", "inconsistent", "easy"]


def test_spread_moves_near_duplicates_to_the_end():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 8, 8, 8))
    thumbs = {"a": R.thumbnail(base), "a_copy": R.thumbnail(base * 3 + 1 + rng.normal(0, 0.01, base.shape)),
              "b": R.thumbnail(rng.normal(size=(1, 8, 8, 8)))}
    order, moved = R.spread(["a", "a_copy", "b"], thumbs, 0.98)
    assert order == ["a", "b", "a_copy"] and moved == {"a_copy": "a"}
    assert R.spread(["a", "a_copy", "b"], thumbs, None) == (["a", "a_copy", "b"], {})


# ---------------------------------------------------------------------------------------------- through the CLI
RANK_ID, RANK_NAME = 950, "Rank"
STOCK = "nnUNetTrainer_semisupShort"
TRAINERS = [STOCK, "nnUNetTrainerMeanTeacher_short", "nnUNetTrainerCML_short",
            "nnUNetTrainerSKCDF_short", "nnUNetTrainerMN_short", "nnUNetTrainerWeakStrong_short"]
VIEWS = {"nnUNetTrainerMeanTeacher_short": "student, teacher", "nnUNetTrainerCML_short": "subnet1, subnet2",
         "nnUNetTrainerSKCDF_short": "D_u, D_l", "nnUNetTrainerMN_short": "3d, 2d",
         "nnUNetTrainerWeakStrong_short": "network, network_mirror1, network_mirror2",
         "nnUNetTrainer_semisupShort": "network, network_mirror1, network_mirror2"}


@pytest.fixture(scope="module")
def ranked_dataset(planned_dataset, tmp_path_factory):
    """A copy of the planned dataset whose unlabeled scans are exact copies of two labeled training images (easy),
    the same two with inverted intensities and with shuffled voxels (appearances the model never saw). Stock
    nnU-Net trained as a two-member ensemble (two folds on the same four cases, seeds 0 and 1); every other trainer
    briefly."""
    import json
    from nnunetv2_semisup.methods.mn.segformer import SEGFORMER_ENV, save_tiny_segformer
    ds = planned_dataset
    raw, pp = copy_planned_dataset(ds, RANK_ID, RANK_NAME)
    unl = os.path.join(raw, "imagesUnlabeled")
    shutil.rmtree(unl)
    os.makedirs(unl)
    rng = np.random.default_rng(0)
    for i, case in enumerate(("syn_000", "syn_001")):
        src = os.path.join(raw, "imagesTr", f"{case}_0000.nii.gz")
        shutil.copy(src, os.path.join(unl, f"easy{i}_0000.nii.gz"))
        img = sitk.ReadImage(src)
        arr = sitk.GetArrayFromImage(img)
        for name, new in (("inverted", arr.max() + arr.min() - arr), ("shuffled", rng.permutation(arr.ravel()))):
            out = sitk.GetImageFromArray(new.reshape(arr.shape).astype(np.float32))
            out.CopyInformation(img)
            sitk.WriteImage(out, os.path.join(unl, f"{name}{i}_0000.nii.gz"))
    # a deep ensemble: two folds trained on the same four cases from different seeds
    labeled = ["syn_000", "syn_001", "syn_002", "syn_003"]
    with open(os.path.join(pp, "splits_final.json"), "w") as f:
        json.dump([{"train": labeled, "val": labeled[:1]}, {"train": labeled, "val": labeled[:1]}], f)
    segformer = str(tmp_path_factory.mktemp("tiny_segformer_rank"))
    save_tiny_segformer(segformer)
    env = dict(ds.env, nnUNet_semisup_short_epochs="1", nnUNet_semisup_short_iterations="2")
    env[SEGFORMER_ENV] = segformer
    # the "easy" unlabeled scans are the training images themselves, on purpose: past the leak guard
    run_cli(["nnUNetv2_semisup_preprocess", "-d", RANK_ID, "-c", "3d_fullres", "-np", 1, "--overwrite",
             "--allow-copies"], env)
    for fold in (0, 1):
        run_cli(["nnUNetv2_train", RANK_ID, "3d_fullres", fold, "-tr", STOCK, "-device", "cpu"],
                dict(env, nnUNet_semisup_short_epochs="20", nnUNet_semisup_short_iterations="15",
                     nnUNet_semisup_seed=str(fold)))
    for tr in TRAINERS[1:]:
        run_cli(["nnUNetv2_train", RANK_ID, "3d_fullres", "all", "-tr", tr, "-device", "cpu"], env)
    return ds, env


def rank_cli(env, out, *args, expect_ok=True):
    return run_cli(["nnUNetv2_semisup_rank_unlabeled", "-d", RANK_ID, "-o", out, "-device", "cpu", "--quiet",
                    *args], env, expect_ok=expect_ok)


def read_rows(out):
    with open(os.path.join(out, "ranking.csv")) as f:
        return list(csv.DictReader(f))


def test_unseen_appearance_ranks_above_training_images(ranked_dataset, tmp_path):
    """Two independently trained members agree on their training images and disagree on inverted or shuffled ones:
    the four unseen appearances come first. (A single model's softmax does not tell them apart reliably — it can be
    confidently wrong on them; docs/benchmarks.md.)"""
    ds, env = ranked_dataset
    out = str(tmp_path / "rank_stock")
    p = rank_cli(env, out, "-tr", STOCK, "-f", 0, 1, "--top-k", 2)
    rows = read_rows(out)
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert {r["case"] for r in rows[:4]} == {"inverted0", "inverted1", "shuffled0", "shuffled1"}, rows
    hard, easy = ([float(r["disagreement"]) for r in part] for part in (rows[:4], rows[4:]))
    assert np.mean(hard) > np.mean(easy) + 0.1, rows
    assert sorted(os.listdir(os.path.join(out, "png"))) == [f"rank001_{rows[0]['case']}.png",
                                                            f"rank002_{rows[1]['case']}.png"]
    with open(os.path.join(out, "index.md")) as f:
        index = f.read()
    assert f"png/rank001_{rows[0]['case']}.png" in index and "views: fold_0, fold_1" in index
    assert "label first: " + rows[0]["case"] in p.stdout
    # one fold, trained without mirroring: one view, ordered by entropy alone, said so
    out1 = str(tmp_path / "rank_one_view")
    p = rank_cli(env, out1, "-tr", STOCK, "-f", 0)
    assert "one view only" in p.stdout and all(r["disagreement"] == "" and r["views"] == "1" for r in read_rows(out1))


@pytest.mark.parametrize("trainer", TRAINERS[1:])
def test_every_trainer_ranks_with_its_own_views(ranked_dataset, tmp_path, trainer):
    ds, env = ranked_dataset
    out = str(tmp_path / trainer)
    p = rank_cli(env, out, "-tr", trainer, "--top-k", 1,
                 *(["--mirror-axes", 1, 2] if trainer == "nnUNetTrainerWeakStrong_short" else []))
    assert f"views {VIEWS[trainer]}" in p.stdout
    rows = read_rows(out)
    assert len(rows) == 6 and all(r["views"] == str(len(VIEWS[trainer].split(", "))) for r in rows)
    assert all(r["disagreement"] != "" or r["foreground_voxels"] == "0" for r in rows)
    assert len(glob.glob(os.path.join(out, "png", "*.png"))) == 1
    # reading the model adds nothing to its folder
    fold = os.path.join(ds.results, f"Dataset{RANK_ID}_{RANK_NAME}", f"{trainer}__nnUNetPlans__3d_fullres",
                        "fold_all")
    assert len(glob.glob(os.path.join(fold, "training_log_*"))) == 1


@pytest.mark.parametrize("case", ["other_dataset", "missing_fold", "no_unlabeled", "not_empty"])
def test_bad_inputs_refused_nothing_written(ranked_dataset, tmp_path, case):
    ds, env = ranked_dataset
    out = str(tmp_path / "out")
    args, expect = ["-tr", STOCK, "-f", 0, 1], None
    if case == "other_dataset":
        # dataset 990 holds no model of this trainer... so put one there that was trained on 950
        src = os.path.join(ds.results, f"Dataset{RANK_ID}_{RANK_NAME}", "nnUNetTrainer_semisupShort__nnUNetPlans__"
                                                                         "3d_fullres")
        dst = os.path.join(ds.results, ds.name, "nnUNetTrainer_semisupShort_rankcopy__nnUNetPlans__3d_fullres")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        p = run_cli(["nnUNetv2_semisup_rank_unlabeled", "-d", ds.dataset_id, "-o", out, "-device", "cpu",
                     "-tr", "nnUNetTrainer_semisupShort_rankcopy", "-f", 0], env, expect_ok=False)
        shutil.rmtree(dst)
        expect = f"was trained on Dataset{RANK_ID}_{RANK_NAME}, not on {ds.name}"
    else:
        if case == "missing_fold":
            args = ["-tr", STOCK, "-f", 0, 3]
            expect = "Fold 3 has no checkpoint_final.pth ("
        elif case == "no_unlabeled":
            raw, _ = copy_planned_dataset(ds, 951, "RankNoUnlabeled")
            shutil.rmtree(os.path.join(raw, "imagesUnlabeled"))
            model = os.path.join(ds.results, f"Dataset{RANK_ID}_{RANK_NAME}")
            # a model trained on this dataset: plans.json of the copy names it
            dst = os.path.join(ds.results, "Dataset951_RankNoUnlabeled", "nnUNetTrainer_semisupShort__nnUNetPlans__"
                                                                        "3d_fullres")
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(os.path.join(model, "nnUNetTrainer_semisupShort__nnUNetPlans__3d_fullres"), dst)
            import json
            with open(os.path.join(dst, "plans.json")) as f:
                plans = json.load(f)
            plans["dataset_name"] = "Dataset951_RankNoUnlabeled"
            with open(os.path.join(dst, "plans.json"), "w") as f:
                json.dump(plans, f)
            p = run_cli(["nnUNetv2_semisup_rank_unlabeled", "-d", 951, "-o", out, "-device", "cpu", *args], env,
                        expect_ok=False)
            expect = "No unlabeled scans"
        if case == "not_empty":
            os.makedirs(out)
            open(os.path.join(out, "keep.txt"), "w").close()
            expect = "exists and is not empty"
        if case != "no_unlabeled":
            p = rank_cli(env, out, *args, expect_ok=False)
    assert p.returncode == 1 and expect in p.stderr and "Traceback" not in p.stderr, p.stderr
    if case == "missing_fold":
        assert "folds with one: ['0', '1']" in p.stderr, p.stderr
    assert (os.listdir(out) == ["keep.txt"]) if case == "not_empty" else not os.path.exists(out)
