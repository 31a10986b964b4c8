"""Pictures: the PNG writer on a tiny case — file exists, has the expected size, the outlined pixels sit
exactly on the boundaries of the labels — and ``nnUNetv2_semisup_evaluate --png`` through the real command."""
import os

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import run_cli

from nnunetv2_semisup.evaluation.pictures import SEPARATOR, class_color, pick_slices, select_cases, write_png


def _read_png(path):
    from matplotlib import pyplot as plt
    return (plt.imread(path)[..., :3] * 255).round().astype(np.uint8)


def _tiny_case():
    image = np.random.default_rng(0).normal(100, 10, (5, 12, 10)).astype(np.float32)
    ref = np.zeros((5, 12, 10), np.uint8)
    ref[2, 3:9, 2:7] = 1          # class 1: a 6 × 5 rectangle on slice 2
    ref[1:4, 1, 8] = 2            # class 2: a 3-voxel line, most voxels... one per slice 1..3
    ref[3, 0:2, 8:10] = 2         # ... and a 2 × 2 block on slice 3 -> slice 3 has most of class 2
    pred = np.zeros_like(ref)
    pred[2, 4:8, 3:6] = 1         # a smaller prediction
    return image, ref, pred


def _hand_outline(mask):
    """Boundary written out by hand: a voxel of the mask with a 4-neighbour outside (or at the border)."""
    out = np.zeros_like(mask, bool)
    h, w = mask.shape
    for y in range(h):
        for x in range(w):
            if mask[y, x]:
                nbrs = [(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)]
                out[y, x] = any(not (0 <= a < h and 0 <= b < w) or not mask[a, b] for a, b in nbrs)
    return out


def test_png_layout_size_and_outline_positions(tmp_path):
    image, ref, pred = _tiny_case()
    assert pick_slices([ref, pred]) == [(1, 2), (2, 3)]
    path = write_png(str(tmp_path / "case.png"), image, [ref, pred], min_panel=40)
    png = _read_png(path)
    k = 4  # ceil(40 / 12)
    panel_h, panel_w = 12, 10
    assert png.shape == (k * (2 * panel_h + SEPARATOR), k * (2 * panel_w + SEPARATOR), 3)
    small = png[::k, ::k]  # undo the integer upscaling
    for row, (cls, z) in enumerate([(1, 2), (2, 3)]):
        y0 = row * (panel_h + SEPARATOR)
        for col, labels in enumerate((ref, pred)):
            x0 = col * (panel_w + SEPARATOR)
            panel = small[y0:y0 + panel_h, x0:x0 + panel_w]
            for c in (1, 2):
                coloured = np.all(panel == class_color(c), axis=-1)
                expected = _hand_outline(labels[z] == c)
                np.testing.assert_array_equal(coloured, expected, err_msg=f"row {row}, panel {col}, class {c}")
    # white separators between the panels and rows
    assert (small[:, panel_w:panel_w + SEPARATOR] == 255).all() and (small[panel_h:panel_h + SEPARATOR] == 255).all()


def test_plain_image_panel_and_selection():
    from nnunetv2_semisup.evaluation.pictures import render
    image, ref, _ = _tiny_case()
    rgb = render(image, [None, ref], min_panel=1)
    left = rgb[:12, :10]
    assert (left[..., 0] == left[..., 1]).all() and (left[..., 1] == left[..., 2]).all()  # grey only: no outline
    assert select_cases({"a": 0.9, "b": 0.1, "c": float("nan"), "d": 0.5}, "worst", 2) == ["b", "d"]
    assert select_cases({"a": 0.9, "b": 0.1, "d": 0.5}, "best", 1) == ["a"]
    assert select_cases({"b": 0.1, "a": 0.2}) == ["a", "b"]
    with pytest.raises(ValueError, match="render needs"):
        render(None, [None])


def test_evaluate_png_through_the_cli(tmp_path, nnunet_env):
    image, ref, pred = _tiny_case()
    for sub in ("labelsTs", "pred", "imagesTs"):
        (tmp_path / sub).mkdir()
    for case, (r, p) in {"c1": (ref, pred), "c2": (ref, ref)}.items():
        for arr, path in ((r, tmp_path / "labelsTs" / f"{case}.nii.gz"), (p, tmp_path / "pred" / f"{case}.nii.gz"),
                          (image, tmp_path / "imagesTs" / f"{case}_0000.nii.gz")):
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    (tmp_path / "labelsTs" / "dataset.json").write_text(
        '{"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}}')
    out = tmp_path / "png"
    proc = run_cli(["nnUNetv2_semisup_evaluate", "-ref", tmp_path / "labelsTs", "-pred", tmp_path / "pred", "-np", 1,
                    "--png", out, "--images", tmp_path / "imagesTs", "--png-cases", "worst", "--png-n", 1],
                   nnunet_env)
    assert "written: 1 picture(s)" in proc.stdout
    assert sorted(os.listdir(out)) == ["c1.png"]  # the worse case (c2 is perfect)
    png = _read_png(str(out / "c1.png"))
    assert png.shape[0] > 100 and png.shape[1] > 2 * 100
    proc = run_cli(["nnUNetv2_semisup_evaluate", "-ref", tmp_path / "labelsTs", "-pred", tmp_path / "pred", "-np", 1,
                    "--png", out, "--images", tmp_path / "nope"], nnunet_env, expect_ok=False)
    assert proc.returncode == 1 and "no image" in proc.stderr
