"""Own data for semi-supervised training.

Two entry points:

1. ``nnUNetv2_semisup_convert_own --check -d XXX``: an existing nnU-Net raw dataset with an ``imagesUnlabeled/``
   folder is validated (naming ``{case}_{channel:04d}{file_ending}``, channel count, labels present for imagesTr,
   image/label geometry, label values, no case in two roles) and its dataset.json gets the ``"semisup"`` record
   (``source: own``; a record written by a converter keeps its provenance, and the validation cases of
   ``splits_semisup.json`` are not counted as labeled).
2. ``nnUNetv2_semisup_convert_own -i FOLDER --csv cases.csv -d XXX --name NAME --channel-names CT --labels
   background,organ``: the CSV has the columns ``case, role, image_0000[, image_0001 ...], label`` (role: labeled,
   unlabeled, validation or test; ``label`` empty for unlabeled cases); paths are relative to FOLDER or absolute, an
   image may be a file (NIfTI, NRRD, MHA) or a folder holding one DICOM series. The cases are written in the
   layout of the benchmark converters (``.nii.gz``).
"""
from __future__ import annotations

import argparse
import csv
import os
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunetv2_semisup.data.image_checks import (FIX_HINT, READ_ERRORS, damaged_file_message, direction_problem,
                                                file_array_problems)

from .common import (CaseData, DatasetInfo, Plan, SEMISUP_FORMAT_VERSION, SourceCase, cli, converter_record,
                     find_existing_dataset, label_to_uint8, load_json, print_summary, progress,
                     put_label_on_image_grid, raw_root, require_dir, run_conversion, warn, write_json_atomic)
from nnunetv2_semisup.data.leak_guard import LEAK_HINT, leak_problem, reference_digests, voxel_digest

from .errors import ConversionError
from .nnunet_folders import CASE_NAME, check_channels, group_channel_files, label_files, read_scan, role_lists

ROLES = ("labeled", "unlabeled", "validation", "test")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_semisup_convert_own", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset ID")
    p.add_argument("--check", action="store_true", help="validate an existing raw dataset with imagesUnlabeled/ and "
                                                        "add the semisup record to its dataset.json")
    p.add_argument("-i", "--input", default=None, help="folder the CSV paths are relative to")
    p.add_argument("--csv", default=None, help="CSV with columns case, role, image_0000[, image_0001 ...], label")
    p.add_argument("--name", default=None, help="dataset name (CSV mode)")
    p.add_argument("--channel-names", default=None,
                   help="CSV mode: comma-separated channel names in image_XXXX order; they choose nnU-Net's "
                        "normalisation (CT, MRI, noNorm, ...), e.g. CT or T2,ADC")
    p.add_argument("--labels", default=None, help="CSV mode: comma-separated label names for values 0, 1, 2, ... "
                                                  "starting with background, e.g. background,liver,tumour")
    p.add_argument("--transductive", action="store_true",
                   help="CSV mode: also write the test images to imagesUnlabeled/; --check: allow test cases in "
                        "imagesUnlabeled/")
    p.add_argument("--write-unlabeled-labels", action="store_true",
                   help="CSV mode, diagnostics only: write labels given for unlabeled cases to labelsUnlabeled/")
    p.add_argument("--overwrite", action="store_true", help="CSV mode: replace an existing dataset with this ID")
    p.add_argument("--quiet", action="store_true", help="no progress bar (also off when output is not a terminal)")
    p.add_argument("--allow-copies", action="store_true",
                   help="do not refuse an unlabeled scan whose voxels equal a test or labeled scan's (the leak "
                        "guard); for a deliberate duplicate only")
    return p


# =================================================================================================== --check
def _geometry_matches(a, b) -> bool:
    size_a, sp_a, or_a, dir_a = a
    size_b, sp_b, or_b, dir_b = b
    return (tuple(size_a) == tuple(size_b) and np.allclose(sp_a, sp_b, rtol=1e-3)
            and np.allclose(or_a, or_b, atol=max(1e-3, 0.05 * min(sp_a))) and np.allclose(dir_a, dir_b, atol=1e-3))


def check_existing(dataset_id: int, transductive: bool, argv, quiet: bool = False, allow_copies: bool = False) -> str:
    folder = find_existing_dataset(raw_root(), dataset_id)
    if folder is None:
        raise ConversionError(f"no dataset with ID {dataset_id} in {raw_root()} (expected a folder "
                              f"Dataset{dataset_id:03d}_<Name>)")
    dj_path = os.path.join(folder, "dataset.json")
    if not os.path.isfile(dj_path):
        raise ConversionError(f"{folder}: dataset.json missing")
    dj = load_json(dj_path)
    for k in ("channel_names", "labels", "numTraining", "file_ending"):
        if k not in dj:
            raise ConversionError(f"{dj_path}: key {k!r} missing (nnU-Net needs channel_names, labels, numTraining, "
                                  f"file_ending)")
    if "dataset" in dj:
        raise ConversionError(f"{dj_path}: datasets described by a 'dataset' file list are not supported; use the "
                              f"imagesTr/labelsTr folder layout")
    fe = dj["file_ending"]
    nch = len(dj["channel_names"])
    label_values = set()
    for v in dj["labels"].values():
        label_values.update(v if isinstance(v, (list, tuple)) else [v])
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    groups = {sub: group_channel_files(os.path.join(folder, sub), fe, sub)
              for sub in ("imagesTr", "imagesUnlabeled", "imagesTs")}
    for sub, g in groups.items():
        check_channels(g, nch, sub)
    if not groups["imagesTr"]:
        raise ConversionError(f"{folder}/imagesTr has no cases")
    if not groups["imagesUnlabeled"]:
        raise ConversionError(f"{folder}/imagesUnlabeled is missing or empty; add your unlabeled scans with "
                              f"nnUNetv2_semisup_add_unlabeled -d {dataset_id} -i <folder>")
    if len(groups["imagesTr"]) != dj["numTraining"]:
        raise ConversionError(f"{dj_path}: numTraining is {dj['numTraining']} but imagesTr has "
                              f"{len(groups['imagesTr'])} cases")
    labels_tr = label_files(os.path.join(folder, "labelsTr"), fe)
    labels_ts = label_files(os.path.join(folder, "labelsTs"), fe)
    for case in groups["imagesTr"]:
        if case not in labels_tr:
            raise ConversionError(f"case {case}: label missing; expected labelsTr/{case}{fe}")
    both = sorted(set(groups["imagesTr"]) & set(groups["imagesUnlabeled"]))
    if both:
        raise ConversionError(f"case(s) in both imagesTr and imagesUnlabeled: {', '.join(both)}")
    both_ts = sorted(set(groups["imagesTs"]) & set(groups["imagesUnlabeled"]))
    if both_ts and not transductive:
        raise ConversionError(f"test case(s) also in imagesUnlabeled: {', '.join(both_ts)}; remove them, or pass "
                              f"--transductive if training on the test images is intended")
    both_tr_ts = sorted(set(groups["imagesTr"]) & set(groups["imagesTs"]))
    if both_tr_ts:
        raise ConversionError(f"case(s) in both imagesTr and imagesTs: {', '.join(both_tr_ts)}")
    if os.path.isdir(os.path.join(folder, "labelsUnlabeled")):
        warn("labelsUnlabeled/ exists: diagnostics only, trainers never read it")

    example = next(iter(groups["imagesTr"].values()))[0]
    rw = determine_reader_writer_from_dataset_json(dj, example)()
    sitk_based = all(f.lower().endswith((".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")) for f in [example])

    def geom(path):
        if sitk_based:
            from .nnunet_folders import read_info
            size, sp, org, dr, comps = read_info(path)
            if comps != 1:
                raise ConversionError(f"{path}: {comps} components per voxel; expected one file per channel")
            return size, sp, org, dr
        data, props = rw.read_images([path])
        return tuple(data.shape[1:]), tuple(props["spacing"]), (0.0,) * 3, (1.0,)

    ref_dim = len(geom(example)[0])
    for sub, g in groups.items():
        for case, chans in g.items():
            gs = [geom(chans[c]) for c in sorted(chans)]
            if len(gs[0][0]) != ref_dim:
                raise ConversionError(f"{sub}: case {case} is {len(gs[0][0])}D; imagesTr cases are {ref_dim}D")
            for c, gc in enumerate(gs[1:], start=1):
                if not _geometry_matches(gs[0], gc):
                    raise ConversionError(f"{sub}: case {case}: channel {c} geometry differs from channel 0")
            lab = labels_tr.get(case) if sub == "imagesTr" else labels_ts.get(case) if sub == "imagesTs" else None
            if lab is not None:
                gl = geom(lab)
                if not _geometry_matches(gs[0], gl):
                    raise ConversionError(f"case {case}: image and label geometry differ (size {gs[0][0]} vs "
                                          f"{gl[0]}, spacing {gs[0][1]} vs {gl[1]})")
                seg, _ = rw.read_seg(lab)
                values = set(int(v) for v in np.unique(seg))
                if not values <= label_values:
                    raise ConversionError(f"case {case}: unexpected label values {sorted(values - label_values)} in "
                                          f"{lab}; dataset.json labels allow {sorted(label_values)}")
    # the unlabeled scans reach training without nnU-Net's integrity check: verify their voxels here
    problems = []
    forbidden = None if allow_copies else reference_digests(
        folder, fe, bool(transductive), lambda f: rw.read_images([f])[0][0])
    for case, chans in progress(sorted(groups["imagesUnlabeled"].items()), desc="checking unlabeled scans",
                                  quiet=quiet):
        for c in sorted(chans):
            try:
                data, props = rw.read_images([chans[c]])
            except READ_ERRORS as e:
                problems.append(damaged_file_message(chans[c], e))
                continue
            found = file_array_problems(chans[c], data) + [p for p in [direction_problem(
                props.get("sitk_stuff", {}).get("direction"))] if p]
            if c == 0 and forbidden:
                found += [p for p in [leak_problem(case, chans[c], voxel_digest(data[0]), forbidden)] if p]
            problems += [f"{chans[c]}: {p}" for p in found]
    if problems:
        hint = LEAK_HINT if any("has the same voxels as" in p for p in problems) else FIX_HINT
        raise ConversionError("unlabeled scan(s) refused:\n  " + "\n  ".join(problems) + f"\n{hint} "
                              f"dataset.json was not changed.")
    rec = check_record(folder, dj, groups, bool(both_ts), argv)
    dj["semisup"] = rec
    write_json_atomic(dj, dj_path)
    print_summary(rec, folder)
    print(f"{folder}: OK")
    return folder


OWN_DEFAULTS = {"source": "own", "source_variant": "own", "gt_cropped": False, "resized": False,
                "spacing_source": "header", "split": "custom", "labeled_selection": "list:imagesTr",
                "missing_cases": []}


def check_record(folder: str, dj: dict, groups: dict, transductive: bool, argv) -> dict:
    """The "semisup" record after --check: the provenance of an existing record (source, source_variant, split,
    spacing, crops, missing cases, the converter's command line, ...) is kept; the role lists follow the folders, with
    labeled = imagesTr minus the validation cases of splits_semisup.json."""
    old = dj.get("semisup", {}) if isinstance(dj.get("semisup"), dict) else {}
    tr, un, ts = sorted(groups["imagesTr"]), sorted(groups["imagesUnlabeled"]), sorted(groups["imagesTs"])
    check = converter_record(argv, "nnUNetv2_semisup_convert_own")
    rec = dict(OWN_DEFAULTS)
    rec.update(old)
    rec["format_version"] = SEMISUP_FORMAT_VERSION
    rec.update(role_lists(folder, tr, un, ts, old))
    rec["transductive"] = transductive
    rec["case_id_map"] = old.get("case_id_map", {c: c for c in tr + un + ts})
    rec.setdefault("converter", check)   # a converter-made dataset keeps the command that built it
    rec["checked_with"] = check
    return rec


# =================================================================================================== CSV
def _resolve(base: str, p: str) -> str:
    p = p.strip()
    return p if os.path.isabs(p) else os.path.join(base, p)


def _csv_case(case: str, images: List[str], label: Optional[str], allowed: Sequence[int], state: dict) -> SourceCase:
    def load(with_label: bool) -> CaseData:
        imgs = [read_scan(p, case) for p in images]
        lab = None
        if label and (with_label or state["write_unlabeled_labels"]):
            lab = label_to_uint8(case, read_scan(label, case), allowed=allowed)
            lab = put_label_on_image_grid(case, imgs[0], lab)
        return CaseData(imgs, lab)

    return SourceCase(case, os.path.basename(images[0].rstrip(os.sep)), load, bool(label), label or "")


def convert_csv(args, argv) -> str:
    base = require_dir(args.input)
    if not args.csv or not os.path.isfile(args.csv):
        raise ConversionError(f"--csv {args.csv}: file not found")
    if not args.name:
        raise ConversionError("--name is required when building a dataset from a CSV")
    if not args.labels or not args.channel_names:
        raise ConversionError("--labels and --channel-names are required when building a dataset from a CSV, e.g. "
                              "--channel-names CT --labels background,liver")
    label_names = [s.strip() for s in args.labels.split(",") if s.strip()]
    if len(label_names) < 2 or label_names[0] != "background":
        raise ConversionError(f"--labels {args.labels!r}: expected background first, then at least one class")
    labels = {n: i for i, n in enumerate(label_names)}
    channels = [s.strip() for s in args.channel_names.split(",") if s.strip()]
    with open(args.csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ConversionError(f"{args.csv}: no rows")
    cols = [c.strip() for c in (rows[0].keys())]
    image_cols = sorted(c for c in cols if c.startswith("image_"))
    expected = [f"image_{c:04d}" for c in range(len(image_cols))]
    if image_cols != expected or not image_cols or "case" not in cols or "role" not in cols:
        raise ConversionError(f"{args.csv}: columns {cols}; expected case, role, image_0000[, image_0001 ...], label")
    if len(channels) != len(image_cols):
        raise ConversionError(f"--channel-names gives {len(channels)} name(s) but the CSV has {len(image_cols)} image "
                              f"column(s)")
    state = {"write_unlabeled_labels": args.write_unlabeled_labels}
    cases: Dict[str, SourceCase] = {}
    roles: Dict[str, List[str]] = {r: [] for r in ROLES}
    for n, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        case, role = row.get("case", ""), row.get("role", "").lower()
        if not CASE_NAME.match(case) or "." in case:
            raise ConversionError(f"{args.csv} line {n}: case name {case!r}: use letters, digits, '_' and '-'")
        if case in cases:
            raise ConversionError(f"{args.csv} line {n}: case {case} listed twice")
        if role not in ROLES:
            raise ConversionError(f"{args.csv} line {n}: case {case}: role {role!r}; expected one of {', '.join(ROLES)}")
        images = []
        for c in image_cols:
            if not row.get(c):
                raise ConversionError(f"case {case}: {c} is empty; every case needs all {len(image_cols)} channel(s)")
            path = _resolve(base, row[c])
            if not os.path.exists(path):
                raise ConversionError(f"case {case}: image missing: {path}")
            images.append(path)
        label = _resolve(base, row["label"]) if row.get("label") else None
        if label is not None and not os.path.exists(label):
            raise ConversionError(f"case {case}: label missing: {label}")
        if role in ("labeled", "validation") and label is None:
            raise ConversionError(f"case {case} ({role}): label missing; the label column is empty")
        if role == "unlabeled" and label is not None and not args.write_unlabeled_labels:
            warn(f"case {case} is unlabeled but has a label in the CSV; it is not written (see "
                 f"--write-unlabeled-labels)")
            label = None
        cases[case] = _csv_case(case, images, label, tuple(labels.values()), state)
        roles[role].append(case)
    if not roles["labeled"]:
        raise ConversionError(f"{args.csv}: no labeled case")
    plan = Plan(roles["labeled"], roles["unlabeled"], roles["validation"], roles["test"], [],
                f"list:{os.path.basename(args.csv)}", [])
    run_args = SimpleNamespace(dataset_id=args.dataset_id, name=args.name, overwrite=args.overwrite,
                               transductive=args.transductive, write_unlabeled_labels=args.write_unlabeled_labels,
                               quiet=args.quiet, allow_copies=args.allow_copies)
    info = DatasetInfo("own", "own", "", labels, {str(i): c for i, c in enumerate(channels)},
                       description="own data, converted by nnunetv2_semisup", licence="see the data owner",
                       record={"spacing_source": "header", "intensity": "as provided"})
    return run_conversion(run_args, info, cases, plan, "custom", converter_record(argv, "nnUNetv2_semisup_convert_own"),
                          refuse_copies=not args.allow_copies)


def run(argv: Optional[Sequence[str]] = None) -> str:
    args = build_parser().parse_args(argv)
    if args.check:
        if args.csv or args.input:
            raise ConversionError("--check validates an existing dataset; do not combine it with -i/--csv")
        return check_existing(args.dataset_id, args.transductive, argv, args.quiet, args.allow_copies)
    if not args.input or not args.csv:
        raise ConversionError("give either --check -d ID (existing dataset) or -i FOLDER --csv FILE -d ID --name NAME")
    return convert_csv(args, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
