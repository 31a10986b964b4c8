"""Synthetic 3D datasets for the tests, the demo and the quality benchmark (no downloads needed).

``nnUNetv2_semisup_make_synthetic -d ID [--labeled N] [--unlabeled M] [--test K] [--seed S]`` writes a raw
nnU-Net dataset: imagesTr/labelsTr (labeled), imagesUnlabeled, imagesTs/labelsTs and dataset.json.

Each volume is a noisy "body" with three structures: a large irregular organ (label 1), a second organ (label 2)
and a small lesion inside the first organ (label 3, about 10–100 voxels at 24×48×48). Shape, size, orientation,
position, intensities, noise level and a smooth multiplicative bias field vary per case, and unlabeled distractor blobs
with organ-like intensities sit in the body, so thresholding does not solve it and a few labeled cases do not
saturate Dice. Spacing is anisotropic (1 x 1 x 2.5 mm by default, SimpleITK x/y/z order).

Presets (``--preset``): ``default`` is the generator above (tests, demo). ``cohort`` (the quality benchmark) makes
labels the limit, like a real multi-centre cohort: every case comes from one of three fixed "scanners" that differ in
the *contrast between structures* (which tissue is brighter than which — per-image normalisation cannot undo that),
noise, bias field and resolution (blur), and the anatomy varies in position, size, orientation and topology (the
second organ is sometimes split in two, the small lesion sometimes absent). A few labeled cases see one or two
scanners; the unlabeled and test cases see all three.
"""
import argparse
import os
import shutil
import sys
from typing import Optional, Tuple

import numpy as np

LABELS = {"background": 0, "organ": 1, "organ2": 2, "lesion": 3}
DEFAULT_SHAPE = (24, 48, 48)  # z, y, x (numpy order)
DEFAULT_SPACING = (1.0, 1.0, 2.5)  # x, y, z (SimpleITK order)


def _grid(shape):
    return np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")


def _smooth_field(rng, shape, scale):
    """Smooth random field in [-1, 1]: a few low-frequency cosines."""
    z, y, x = _grid(shape)
    field = np.zeros(shape, np.float32)
    for _ in range(4):
        k = rng.uniform(0.5, 2.0, 3) * np.pi / np.array(shape)
        field += np.cos(k[0] * z + k[1] * y + k[2] * x + rng.uniform(0, 2 * np.pi))
    return scale * field / 4


def _body(rng, shape, centre, radii, spacing_zyx):
    """The body: an axis-aligned ellipsoid (physical radii) with a slightly wobbling surface."""
    z, y, x = _grid(shape)
    r = (((z - centre[0]) * spacing_zyx[0] / radii[0]) ** 2 + ((y - centre[1]) * spacing_zyx[1] / radii[1]) ** 2
         + ((x - centre[2]) * spacing_zyx[2] / radii[2]) ** 2)
    return r < 1 + _smooth_field(rng, shape, 0.1)


def _ellipsoid(rng, shape, center, radii, spacing_zyx, wobble):
    """Irregular ellipsoid mask: rotated about z, radius perturbed by a smooth field (physical units)."""
    z, y, x = _grid(shape)
    dz, dy, dx = [(g - c) * s for g, c, s in zip((z, y, x), center, spacing_zyx)]
    a = rng.uniform(0, np.pi)
    ry, rx = np.cos(a) * dy - np.sin(a) * dx, np.sin(a) * dy + np.cos(a) * dx
    r = np.sqrt((dz / radii[0]) ** 2 + (ry / radii[1]) ** 2 + (rx / radii[2]) ** 2)
    return r < 1 + _smooth_field(rng, shape, wobble)


def make_case(rng: np.random.Generator, shape: Tuple[int, int, int] = DEFAULT_SHAPE,
              spacing: Tuple[float, float, float] = DEFAULT_SPACING, num_channels: int = 1):
    """Return (images [C, Z, Y, X] float32, label [Z, Y, X] uint8) for one random case."""
    spacing_zyx = np.array(spacing[::-1], np.float32)
    extent = np.array(shape) * spacing_zyx
    seg = np.zeros(shape, np.uint8)
    body = _body(rng, shape, np.array(shape) / 2, extent * np.array([0.6, 0.45, 0.45]), spacing_zyx)

    c1 = np.array(shape) * np.array([0.5, rng.uniform(0.38, 0.5), rng.uniform(0.35, 0.45)])
    organ = _ellipsoid(rng, shape, c1, extent * np.array([0.34, 0.27, 0.23]) * rng.uniform(0.85, 1.15, 3), spacing_zyx,
                       0.15) & body
    c2 = np.array(shape) * np.array([rng.uniform(0.4, 0.6), rng.uniform(0.55, 0.68), rng.uniform(0.6, 0.7)])
    organ2 = _ellipsoid(rng, shape, c2, extent * np.array([0.25, 0.13, 0.11]) * rng.uniform(0.85, 1.2, 3),
                        spacing_zyx, 0.2) & body & ~organ
    seg[organ] = 1
    seg[organ2] = 2
    inside = np.argwhere(organ)
    if len(inside):
        center = inside[rng.integers(len(inside))].astype(np.float32)
        lesion = _ellipsoid(rng, shape, center, np.full(3, rng.uniform(2.0, 3.5)) * spacing_zyx.min() * 1.2,
                            spacing_zyx, 0.1) & organ
        seg[lesion] = 3

    images = []
    for ch in range(num_channels):
        means = {0: rng.uniform(0.0, 0.1), 1: rng.uniform(0.25, 0.4), 2: rng.uniform(0.5, 0.7), 3: rng.uniform(0.65, 0.85)}
        lesion_mean = means[2] - rng.uniform(0.15, 0.3) if ch == 0 else means[2] + rng.uniform(0.15, 0.3)
        img = np.full(shape, means[0], np.float32)
        img[body] = means[1]
        img[seg == 1] = means[2]
        img[seg == 2] = means[3]
        img[seg == 3] = lesion_mean
        for _ in range(rng.integers(3, 7)):  # unlabeled distractors with organ-like intensities
            blob = _ellipsoid(rng, shape, np.array(shape) * rng.uniform(0.2, 0.8, 3),
                              np.full(3, rng.uniform(2.5, 6.0)) * spacing_zyx.max(), spacing_zyx, 0.2) & body & (seg == 0)
            img[blob] = rng.uniform(means[2] - 0.1, means[3] + 0.05)
        img += _smooth_field(rng, shape, 0.08)  # texture
        img *= 1 + _smooth_field(rng, shape, rng.uniform(0.1, 0.3))  # bias field
        img += rng.normal(0, rng.uniform(0.05, 0.12), shape).astype(np.float32)
        images.append(img * 1000)  # MRI-like arbitrary units
    return np.stack(images).astype(np.float32), seg


# ------------------------------------------------------------------------------------------------- preset "cohort"
COHORT_SHAPE = (20, 48, 48)
COHORT_SPACING = (1.0, 1.0, 3.0)
COHORT_VERSION = 3    # bump when the generator changes: benchmark caches compare it
# Three fixed "scanners" (the same for every dataset seed). Tissue intensities of background, body, organ, organ2,
# lesion on a 0-1 scale, in a different *order* per scanner (the organ is darker than the body on A and B, brighter on
# C; organ2 is brighter than the body on B only; the lesion is brighter than the organ on C only), plus noise,
# bias-field and in-plane blur levels. No structure's level lies between the levels of two tissues it touches (organ
# and body, organ2 and body, organ and organ2), where a blurred boundary would look like it: each structure is told
# by its contrast, not by partial volume. Version 2 had six random orders: its fully supervised CPU reference did not
# converge within 8000 iterations, and a trial with three random orders never found the lesion on the scanner where
# its level lay between two others.
COHORT_SCANNER_PROFILES = (
    {"name": "A", "means": (0.0, 0.95, 0.75, 0.55, 0.35), "noise": 0.035, "bias": 0.2, "blur": 0.37},
    {"name": "B", "means": (0.0, 0.55, 0.35, 0.95, 0.15), "noise": 0.07, "bias": 0.15, "blur": 0.17},
    {"name": "C", "means": (0.0, 0.35, 0.55, 0.15, 0.95), "noise": 0.075, "bias": 0.12, "blur": 0.13},
)
COHORT_SCANNERS = len(COHORT_SCANNER_PROFILES)


def cohort_scanners():
    """The fixed scanner profiles (copies): ``means`` (background, body, organ, organ2, lesion), noise, bias, blur."""
    return [dict(p) for p in COHORT_SCANNER_PROFILES]


def make_cohort_case(rng: np.random.Generator, shape: Tuple[int, int, int] = COHORT_SHAPE,
                     spacing: Tuple[float, float, float] = COHORT_SPACING, num_channels: int = 1,
                     scanner: Optional[int] = None):
    """One case of the ``cohort`` preset: (images [C, Z, Y, X] float32, label [Z, Y, X] uint8, scanner index).
    ``scanner`` forces the scanner (the random draw is still made, so the anatomy and the random stream stay those
    of the unforced case)."""
    from scipy.ndimage import gaussian_filter
    spacing_zyx = np.array(spacing[::-1], np.float32)
    extent = np.array(shape) * spacing_zyx
    shape_arr = np.array(shape, np.float32)
    shift = rng.uniform(-0.06, 0.06, 3) * shape_arr
    body_r = extent * np.array([0.62, 0.44, 0.44]) * rng.uniform(0.9, 1.1, 3)
    centre = shape_arr / 2 + shift
    body = _body(rng, shape, centre, body_r, spacing_zyx)
    seg = np.zeros(shape, np.uint8)
    c1 = centre + shape_arr * np.array([0.0, rng.uniform(-0.12, 0.0), rng.uniform(-0.14, -0.02)])
    organ = _ellipsoid(rng, shape, c1, extent * np.array([0.3, 0.24, 0.2]) * rng.uniform(0.75, 1.25, 3), spacing_zyx,
                       0.2) & body
    seg[organ] = 1
    pieces = 2 if rng.random() < 0.35 else 1    # topology: the second organ is sometimes split in two
    for p in range(pieces):
        c2 = centre + shape_arr * np.array([rng.uniform(-0.15, 0.15), rng.uniform(0.1, 0.2) - 0.12 * p,
                                            rng.uniform(0.12, 0.22)])
        piece = _ellipsoid(rng, shape, c2, extent * np.array([0.22, 0.12, 0.1]) * rng.uniform(0.75, 1.25, 3)
                           / (1.3 if pieces == 2 else 1.0), spacing_zyx, 0.2) & body & (seg == 0)
        seg[piece] = 2
    inside = np.argwhere(seg == 1)
    if len(inside) and rng.random() < 0.85:     # the small structure, absent in some cases
        c3 = inside[rng.integers(len(inside))].astype(np.float32)
        lesion = _ellipsoid(rng, shape, c3, np.full(3, rng.uniform(5.0, 7.0)), spacing_zyx, 0.1) & (seg == 1)
        seg[lesion] = 3
    drawn = int(rng.integers(COHORT_SCANNERS))
    scanner = drawn if scanner is None else int(scanner)
    prof = cohort_scanners()[scanner]
    images = []
    for _ in range(num_channels):
        means = np.array(prof["means"], np.float32) + rng.normal(0, 0.02, 5).astype(np.float32)
        img = np.full(shape, means[0], np.float32)
        img[body] = means[1]
        for label in (1, 2, 3):
            img[seg == label] = means[label + 1]
        for _ in range(rng.integers(1, 4)):    # unlabeled distractors with organ-like intensities
            blob = _ellipsoid(rng, shape, shape_arr * rng.uniform(0.25, 0.75, 3),
                              np.full(3, rng.uniform(2.5, 5.0)) * spacing_zyx.max(), spacing_zyx, 0.2) & body & (seg == 0)
            img[blob] = means[rng.integers(2, 4)] + rng.normal(0, 0.05)
        if prof["blur"] > 0.05:                 # resolution: in-plane blur of the scanner
            img = gaussian_filter(img, (0, prof["blur"], prof["blur"]))
        img *= 1 + _smooth_field(rng, shape, prof["bias"])
        img += rng.normal(0, prof["noise"], shape).astype(np.float32)
        images.append(img * rng.uniform(500, 2000) + rng.uniform(-200, 200))   # arbitrary units per scan
    return np.stack(images).astype(np.float32), seg, scanner


def cohort_scanner_plan(num_train: int, num_test: int, unseen: Optional[str] = None, seen_prefix: int = 6) -> list:
    """Scanner index of every case in generation order (training cases, then test cases) for the controlled tracks.

    i.i.d. (``unseen`` None): training case i and test case j come from scanner i mod 3 and j mod 3, so the first
    L = 3k training cases (a label budget) hold k per scanner, and the unlabeled and test cases are balanced.
    Mixed-domain (``unseen`` one of A, B, C): the first ``seen_prefix`` training cases (the largest label budget)
    alternate over the two other scanners, the remaining training cases and the test cases cycle over all three.
    The scanner depends on a case's index only, not on its role, so datasets of one seed with different label
    budgets (and the fully supervised one) hold the same images."""
    names = [p["name"] for p in COHORT_SCANNER_PROFILES]
    if unseen is None:
        train = [i % COHORT_SCANNERS for i in range(num_train)]
    else:
        if unseen not in names:
            raise ValueError(f"unseen scanner must be one of {names}, got {unseen!r}")
        seen = [k for k, n in enumerate(names) if n != unseen]
        train = [seen[i % len(seen)] if i < seen_prefix else i % COHORT_SCANNERS for i in range(num_train)]
    return train + [j % COHORT_SCANNERS for j in range(num_test)]


PRESETS = {"default": (DEFAULT_SHAPE, DEFAULT_SPACING), "cohort": (COHORT_SHAPE, COHORT_SPACING),
           "cohort_iid": (COHORT_SHAPE, COHORT_SPACING)}


def _write(array_zyx, path, spacing, is_seg):
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(array_zyx.astype(np.uint8 if is_seg else np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin((-10.0, 5.0, 20.0))
    sitk.WriteImage(img, path, useCompression=True)


def make_synthetic_dataset(output_folder: str, num_labeled: int = 4, num_unlabeled: int = 16, num_test: int = 6,
                           seed: int = 0, shape: Optional[Tuple[int, int, int]] = None,
                           spacing: Optional[Tuple[float, float, float]] = None, num_channels: int = 1,
                           overwrite: bool = False, preset: str = "default", unseen: Optional[str] = None) -> str:
    """Write a raw nnU-Net dataset to ``output_folder`` (atomically: temporary folder, then rename). ``shape`` and
    ``spacing`` default to the preset's. Cases are drawn in the order labeled, unlabeled, test from one RNG, so a
    dataset with the same seed and more labeled / fewer unlabeled cases holds the same images.

    ``cohort`` draws each case's scanner at random (generator version 3; the first mixed-domain table, benchmark track 'random');
    ``cohort_iid`` assigns scanners by :func:`cohort_scanner_plan` (labeled, unlabeled and test cases from one
    balanced mixture); ``cohort`` with ``unseen`` gives the controlled mixed-domain track (labeled cases never from
    that scanner)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if unseen is not None and preset != "cohort":
        raise ValueError("unseen applies to the cohort preset only")
    shape = tuple(shape or PRESETS[preset][0])
    spacing = tuple(spacing or PRESETS[preset][1])
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    output_folder = os.fspath(output_folder)
    if os.path.exists(output_folder):
        if not overwrite:
            raise FileExistsError(f"{output_folder} exists; use --overwrite to replace it")
        shutil.rmtree(output_folder)
    tmp = output_folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(tmp, sub))
    rng = np.random.default_rng(seed)
    roles = [("imagesTr", "labelsTr", num_labeled), ("imagesUnlabeled", None, num_unlabeled),
             ("imagesTs", "labelsTs", num_test)]
    idx = 0
    scanners = {}
    plan = (cohort_scanner_plan(num_labeled + num_unlabeled, num_test, unseen)
            if preset == "cohort_iid" or unseen is not None else None)
    for img_dir, lab_dir, n in roles:
        for _ in range(n):
            case = f"syn_{idx:03d}"
            if preset in ("cohort", "cohort_iid"):
                images, seg, scanners[case] = make_cohort_case(rng, shape, spacing, num_channels,
                                                               None if plan is None else plan[idx])
            else:
                images, seg = make_case(rng, shape, spacing, num_channels)
            idx += 1
            for c in range(num_channels):
                _write(images[c], os.path.join(tmp, img_dir, f"{case}_{c:04d}.nii.gz"), spacing, False)
            if lab_dir is not None:
                _write(seg, os.path.join(tmp, lab_dir, f"{case}.nii.gz"), spacing, True)
    generate_dataset_json(
        tmp, {str(c): "MRI" if c == 0 else f"MRI{c}" for c in range(num_channels)}, LABELS, num_labeled,
        ".nii.gz", dataset_name=os.path.basename(output_folder),
        description="Synthetic semi-supervised dataset made by nnunetv2_semisup.synthetic",
        semisup={"format_version": 1, "source": "synthetic", "seed": seed, "num_labeled": num_labeled,
                 "num_unlabeled": num_unlabeled, "num_test": num_test, "transductive": False,
                 "shape_zyx": list(shape), "spacing_xyz": list(spacing), "preset": preset,
                 **({"unseen_scanner": unseen} if unseen else {}),
                 **({"case_scanner": scanners} if scanners else {})})
    os.replace(tmp, output_folder)
    return output_folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nnUNetv2_semisup_make_synthetic",
                                     description="Write a synthetic semi-supervised dataset to nnUNet_raw.")
    parser.add_argument("-d", type=int, required=True, help="dataset ID (e.g. 990 -> Dataset990_SemiSupSynthetic)")
    parser.add_argument("--name", default="SemiSupSynthetic", help="dataset name (default: SemiSupSynthetic)")
    parser.add_argument("--labeled", type=int, default=4, help="labeled training cases (default 4)")
    parser.add_argument("--unlabeled", type=int, default=16, help="unlabeled training cases (default 16)")
    parser.add_argument("--test", type=int, default=6, help="test cases with labels in labelsTs (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default",
                        help="default (tests, demo); cohort (three scanners with different tissue contrasts, varied "
                             "anatomy; each case's scanner at random: the mixed-domain benchmark) or cohort_iid (the "
                             "same cases, scanners balanced over labeled, unlabeled and test cases: the i.i.d. "
                             "benchmark)")
    parser.add_argument("--unseen-scanner", choices=[p["name"] for p in COHORT_SCANNER_PROFILES], default=None,
                        help="cohort preset only: no labeled case from this scanner (the first 6 training cases "
                             "alternate over the two others), unlabeled and test cases from all three")
    parser.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="volume shape in voxels (default: the preset's, 24 48 48 / 20 48 48)")
    parser.add_argument("--channels", type=int, default=1, help="number of image channels (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    args = parser.parse_args(argv)
    from nnunetv2.paths import nnUNet_raw
    if not nnUNet_raw.is_set():
        print("ERROR: nnUNet_raw is not set. export nnUNet_raw=/path/to/nnUNet_raw", file=sys.stderr)
        return 1
    if args.labeled < 1:
        print("ERROR: --labeled must be >= 1 (nnU-Net needs labeled cases to plan)", file=sys.stderr)
        return 1
    out = os.path.join(nnUNet_raw, f"Dataset{args.d:03d}_{args.name}")
    try:
        make_synthetic_dataset(out, args.labeled, args.unlabeled, args.test, args.seed,
                               tuple(args.shape) if args.shape else None, num_channels=args.channels,
                               overwrite=args.overwrite, preset=args.preset, unseen=args.unseen_scanner)
    except (FileExistsError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {out}: {args.labeled} labeled, {args.unlabeled} unlabeled, {args.test} test cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
