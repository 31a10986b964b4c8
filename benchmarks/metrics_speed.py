"""Time to evaluate one 512×512×200 two-class case (docs/evaluation.md §2 crop).

Compares, on the same synthetic label maps (z, y, x) = (200, 512, 512):
- ``paper`` mode with the union-bounding-box crop (the default),
- ``paper`` mode without the crop (distance transforms over the full array),
- ``mm`` mode with the crop (anisotropic spacing),
- medpy 0.5.2 ``dc``, ``jc``, ``hd95``, ``asd`` per label, as the paper scripts call it (only if medpy is
  installed; medpy is GPL-3.0 and never imported by the package),
and checks that paper mode and medpy agree. Times are seconds of the metric computation on in-memory
arrays (file reading excluded; reading the two .nii.gz files is timed separately); both wall-clock and process
CPU seconds are printed, since wall time on a shared machine depends on its load (also printed).

    python benchmarks/metrics_speed.py [--repeats 3] [--no-medpy]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import SimpleITK as sitk

from nnunetv2_semisup.evaluation.evaluate import read_label_map
from nnunetv2_semisup.evaluation.metrics import label_map_metrics
from nnunetv2_semisup.evaluation.settings import resolve_settings

SHAPE = (200, 512, 512)
SPACING_ZYX = (2.5, 0.8, 0.8)


def make_case(seed: int = 0):
    """Reference: a large ellipsoid (label 1, an organ ~ 160×120×60 voxels) and a small one (label 2); prediction:
    the same shapes shifted, resized and with a few false-positive blobs."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]

    def ellipsoid(c, r):
        return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1.0

    ref = np.zeros(SHAPE, np.uint8)
    ref[ellipsoid((100, 250, 230), (30, 60, 80))] = 1
    ref[ellipsoid((90, 330, 360), (12, 20, 18))] = 2
    pred = np.zeros(SHAPE, np.uint8)
    pred[ellipsoid((102, 254, 226), (28, 63, 78))] = 1
    pred[ellipsoid((92, 328, 363), (10, 22, 17))] = 2
    for _ in range(3):  # false positives far from the organs
        c = (int(rng.integers(20, 180)), int(rng.integers(40, 470)), int(rng.integers(40, 470)))
        pred[ellipsoid(c, (3, 5, 5))] = int(rng.integers(1, 3))
    return pred, ref


def timed(fn, repeats):
    """Best (wall seconds, process CPU seconds) over ``repeats`` calls, and the last result."""
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return (best, best_cpu), result


def medpy_case(pred, ref, labels):
    from medpy.metric import binary as mb

    out = []
    for k in labels:
        p, g = pred == k, ref == k
        out.append({"dice": mb.dc(p, g), "jaccard": mb.jc(p, g), "hd95": mb.hd95(p, g), "asd": mb.asd(p, g)})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the fast variants (best time reported)")
    ap.add_argument("--no-medpy", action="store_true", help="skip the medpy comparison")
    args = ap.parse_args()
    pred, ref = make_case()
    labels = [1, 2]
    print(f"load average at the start: {os.getloadavg()[0]:.1f}; case {SHAPE} (z, y, x), {np.count_nonzero(ref == 1)} + {np.count_nonzero(ref == 2)} reference voxels; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    paper, mm = resolve_settings(preset="uamt"), resolve_settings("mm")
    results = {}
    results["paper, crop"] = timed(lambda: label_map_metrics(pred, ref, labels, None, paper, crop=True), args.repeats)
    results["mm, crop"] = timed(lambda: label_map_metrics(pred, ref, labels, SPACING_ZYX, mm, crop=True),
                                args.repeats)
    results["paper, no crop"] = timed(lambda: label_map_metrics(pred, ref, labels, None, paper, crop=False), 1)
    if not args.no_medpy:
        results["medpy dc+jc+hd95+asd"] = timed(lambda: medpy_case(pred, ref, labels), 1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, arr in (("pred", pred), ("ref", ref)):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(tuple(reversed(SPACING_ZYX)))
            paths.append(os.path.join(tmp, f"{name}.nii.gz"))
            sitk.WriteImage(img, paths[-1], True)
        results["read 2 .nii.gz (SimpleITK)"] = timed(lambda: [read_label_map(p) for p in paths], 1)
    ours = results["paper, crop"][1]
    assert ours == results["paper, no crop"][1], "crop changed the result"
    if "medpy dc+jc+hd95+asd" in results:
        for a, b in zip(ours, results["medpy dc+jc+hd95+asd"][1]):
            for m in ("dice", "jaccard", "hd95", "asd"):
                assert abs(a[m] - b[m]) < 1e-9, (m, a[m], b[m])
        print("paper mode == medpy (1e-9) on both labels; crop == no crop exactly")
    for k in labels:
        r = ours[k - 1]
        print(f"label {k}: Dice {100 * r['dice']:.2f}%  HD95 {r['hd95']:.2f} vox  ASD {r['asd']:.3f} vox")
    print(f"{'variant':32s} {'wall s':>8s} {'CPU s':>8s}")
    for name, ((sec, cpu), _) in results.items():
        print(f"{name:32s} {sec:8.2f} {cpu:8.2f}")
    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
