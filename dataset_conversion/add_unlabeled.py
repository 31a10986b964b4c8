"""Add a folder of your own unlabeled scans to an existing nnU-Net raw dataset's ``imagesUnlabeled/``.

Inputs: NIfTI (.nii.gz/.nii), NRRD, MHA/MHD files, or one DICOM series per sub-folder. With one channel every
file / sub-folder is one case named after it (a trailing ``_0000`` is dropped). With several channels name the
inputs ``{case}_{channel:04d}`` (files or DICOM sub-folders), e.g. ``p1_0000.nrrd``, ``p1_0001.nrrd``. Cases are
written as ``{prefix}{case}_{channel:04d}{file_ending}`` with the dataset's file ending (inputs with another ending
are converted with SimpleITK); channel count, dimension and channel geometry are checked against the dataset; names
already used in imagesTr / imagesUnlabeled / imagesTs are refused. All files are written to a staging folder first
and moved into place only when every case passed; then dataset.json's ``"semisup"`` record is updated.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from typing import Dict, Optional, Sequence

import SimpleITK as sitk

from .common import (SEMISUP_FORMAT_VERSION, cli, converter_record, find_existing_dataset, load_json, raw_root,
                     require_dir, same_grid, write_json_atomic, describe_grid)
from .errors import ConversionError
from .nnunet_folders import existing_case_ids, group_channel_files, list_inputs, read_scan, sanitize_case_name

SITK_WRITABLE = (".nii.gz", ".nii", ".nrrd", ".mha")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_semisup_add_unlabeled", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="ID of an existing nnU-Net raw dataset")
    p.add_argument("-i", "--input", required=True, help="folder with the unlabeled scans")
    p.add_argument("--prefix", default="", help="prepended to every new case name (e.g. 'extra_')")
    return p


def _group_inputs(folder: str, num_channels: int, prefix: str) -> Dict[str, Dict[int, tuple]]:
    items = list_inputs(folder)
    if not items:
        raise ConversionError(f"{folder}: no scans found (NIfTI, NRRD, MHA files or DICOM series sub-folders)")
    groups: Dict[str, Dict[int, tuple]] = {}
    rx = re.compile(r"^(.+)_(\d{4})$")
    for stem, path, kind in items:
        m = rx.match(stem)
        if num_channels == 1:
            case, ch = (m.group(1), int(m.group(2))) if m and int(m.group(2)) == 0 else (stem, 0)
        else:
            if m is None:
                raise ConversionError(f"{path}: the dataset has {num_channels} channels, so inputs must be named "
                                      f"{{case}}_{{channel:04d}} (e.g. {stem}_0000 ... {stem}_{num_channels - 1:04d})")
            case, ch = m.group(1), int(m.group(2))
        case = prefix + sanitize_case_name(case)
        if ch in groups.get(case, {}):
            raise ConversionError(f"case {case}: channel {ch:04d} given twice ({groups[case][ch][0]} and {path})")
        groups.setdefault(case, {})[ch] = (path, kind)
    for case, chans in groups.items():
        if set(chans) != set(range(num_channels)):
            raise ConversionError(
                f"case {case}: channels {sorted(chans)} found; the dataset has {num_channels} channel(s) (dataset.json "
                f"channel_names), expected {', '.join(f'{case}_{c:04d}' for c in range(num_channels))}")
    return groups


def run(argv: Optional[Sequence[str]] = None) -> str:
    args = build_parser().parse_args(argv)
    src = require_dir(args.input)
    folder = find_existing_dataset(raw_root(), args.dataset_id)
    if folder is None:
        raise ConversionError(f"no dataset with ID {args.dataset_id} in {raw_root()}; convert or create it first")
    dj_path = os.path.join(folder, "dataset.json")
    if not os.path.isfile(dj_path):
        raise ConversionError(f"{folder}: dataset.json missing")
    dj = load_json(dj_path)
    fe = dj.get("file_ending")
    nch = len(dj.get("channel_names", {}))
    if not fe or not nch:
        raise ConversionError(f"{dj_path}: file_ending and channel_names are required")
    if fe not in SITK_WRITABLE:
        raise ConversionError(f"dataset file ending {fe} is not a 3D volume format this command writes "
                              f"({', '.join(SITK_WRITABLE)})")
    if args.prefix and not re.fullmatch(r"[A-Za-z0-9_\-]*", args.prefix):
        raise ConversionError(f"--prefix {args.prefix!r}: use letters, digits, '_' and '-'")
    groups = _group_inputs(src, nch, args.prefix)
    taken = existing_case_ids(folder, fe)
    clash = {c: taken[c] for c in groups if c in taken}
    if clash:
        raise ConversionError("case name(s) already used in the dataset: "
                              + ", ".join(f"{c} ({where})" for c, where in clash.items())
                              + "; rename the inputs or use --prefix")
    # dimension of the dataset's images, from one imagesTr file
    tr = group_channel_files(os.path.join(folder, "imagesTr"), fe, "imagesTr")
    ref_dim = None
    if tr:
        r = sitk.ImageFileReader()
        r.SetFileName(next(iter(tr.values()))[0])
        r.ReadImageInformation()
        ref_dim = r.GetDimension()

    unl = os.path.join(folder, "imagesUnlabeled")
    stage = tempfile.mkdtemp(prefix=".imagesUnlabeled.tmp-", dir=folder)
    added: Dict[str, str] = {}
    try:
        for case, chans in sorted(groups.items()):
            imgs = []
            for c in range(nch):
                path, kind = chans[c]
                img = read_scan(path, case)
                if img.GetNumberOfComponentsPerPixel() != 1:
                    raise ConversionError(f"case {case}: {path} has {img.GetNumberOfComponentsPerPixel()} components "
                                          f"per voxel; expected one scalar volume per channel")
                if ref_dim is not None and img.GetDimension() != ref_dim:
                    raise ConversionError(f"case {case}: {path} is {img.GetDimension()}D; the dataset's images are "
                                          f"{ref_dim}D")
                if imgs and not same_grid(imgs[0], img):
                    raise ConversionError(f"case {case}: channel {c} geometry differs from channel 0: "
                                          f"{describe_grid(img)} vs {describe_grid(imgs[0])}")
                imgs.append(img)
                out = os.path.join(stage, f"{case}_{c:04d}{fe}")
                if kind == "file" and path.lower().endswith(fe):
                    shutil.copyfile(path, out)
                else:
                    sitk.WriteImage(img, out, True)
            added[case] = os.path.relpath(chans[0][0], src)
        os.makedirs(unl, exist_ok=True)
        for f in sorted(os.listdir(stage)):
            os.replace(os.path.join(stage, f), os.path.join(unl, f))
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    now = sorted(group_channel_files(unl, fe, "imagesUnlabeled"))
    rec = dj.get("semisup") if isinstance(dj.get("semisup"), dict) else None
    if rec is None:
        rec = {"format_version": SEMISUP_FORMAT_VERSION, "source": "own", "source_variant": "own",
               "gt_cropped": False, "resized": False, "spacing_source": "header", "split": "custom",
               "labeled_selection": "list:imagesTr", "transductive": False, "missing_cases": [],
               "case_id_map": {}}
    rec["unlabeled_cases"] = now
    rec["num_unlabeled"] = len(now)
    rec.setdefault("case_id_map", {}).update(added)
    rec.setdefault("added_unlabeled", []).append({
        "source_folder": src, "cases": sorted(added),
        "converter": converter_record(argv, "nnUNetv2_semisup_add_unlabeled")})
    dj["semisup"] = rec
    write_json_atomic(dj, dj_path)
    print(f"added {len(added)} unlabeled case(s) to {unl} (now {len(now)}): {', '.join(sorted(added)[:10])}"
          f"{' ...' if len(added) > 10 else ''}")
    print(f"next: nnUNetv2_semisup_preprocess -d {args.dataset_id} -c 3d_fullres (after nnUNetv2_plan_and_preprocess)")
    return unl


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
