"""Add a folder of your own unlabeled scans to an existing nnU-Net raw dataset's ``imagesUnlabeled/``.

Inputs: NIfTI (.nii.gz/.nii), NRRD, MHA/MHD files, or one DICOM series per sub-folder. With one channel every
file / sub-folder is one case named after it (a trailing ``_0000`` is dropped). With several channels name the
inputs ``{case}_{channel:04d}`` (files or DICOM sub-folders), e.g. ``p1_0000.nrrd``, ``p1_0001.nrrd``. Cases are
written as ``{prefix}{case}_{channel:04d}{file_ending}`` with the dataset's file ending (inputs with another ending
are converted with SimpleITK); channel count, dimension and channel geometry are checked against the dataset, and a
scan with NaN/Inf voxels, no voxels, one constant value or a non-invertible direction is refused; names
already used in imagesTr / imagesUnlabeled / imagesTs are refused. All-or-nothing: every case is checked and written
to a staging folder inside the dataset first; only then are the files moved into ``imagesUnlabeled/`` and
dataset.json's ``"semisup"`` record updated (unlabeled, labeled, validation and test lists from the folders). A failure
while moving moves the files back; after a hard interruption the next run undoes the partial add (a journal in the
dataset folder records it) and says so. Do not run two adds on one dataset at the same time.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import uuid
from typing import Dict, Optional, Sequence, Tuple

import SimpleITK as sitk

from nnunetv2_semisup.data.image_checks import FIX_HINT, nifti_nonfinite_problems, sitk_image_problems
from nnunetv2_semisup.data.leak_guard import LEAK_HINT, leak_problem, reference_digests, voxel_digest

from .common import (SEMISUP_FORMAT_VERSION, cli, converter_record, find_existing_dataset, load_json, progress,
                     raw_root, require_dir, same_grid, write_json_atomic, describe_grid)
from .errors import ConversionError
from .nnunet_folders import (existing_case_ids, group_channel_files, list_inputs, read_scan, role_lists,
                             sanitize_case_name)

SITK_WRITABLE = (".nii.gz", ".nii", ".nrrd", ".mha")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_semisup_add_unlabeled", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="ID of an existing nnU-Net raw dataset")
    p.add_argument("-i", "--input", required=True, help="folder with the unlabeled scans")
    p.add_argument("--prefix", default="", help="prepended to every new case name (e.g. 'extra_')")
    p.add_argument("--quiet", action="store_true", help="no progress bar (also off when output is not a terminal)")
    p.add_argument("--allow-copies", action="store_true",
                   help="do not refuse a scan whose voxels equal a test (imagesTs) or labeled (imagesTr) scan's "
                        "(the leak guard); for a deliberate duplicate only")
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


def _open_dataset(dataset_id: int) -> Tuple[str, str, dict]:
    folder = find_existing_dataset(raw_root(), dataset_id)
    if folder is None:
        raise ConversionError(f"no dataset with ID {dataset_id} in {raw_root()}; convert or create it first")
    dj_path = os.path.join(folder, "dataset.json")
    if not os.path.isfile(dj_path):
        raise ConversionError(f"{folder}: dataset.json missing")
    return folder, dj_path, load_json(dj_path)


def _dataset_format(dj: dict, dj_path: str) -> Tuple[str, int]:
    fe = dj.get("file_ending")
    nch = len(dj.get("channel_names", {}))
    if not fe or not nch:
        raise ConversionError(f"{dj_path}: file_ending and channel_names are required")
    if fe not in SITK_WRITABLE:
        raise ConversionError(f"dataset file ending {fe} is not a 3D volume format this command writes "
                              f"({', '.join(SITK_WRITABLE)})")
    return fe, nch


def _reference_dim(folder: str, fe: str) -> Optional[int]:
    """Dimension of the dataset's images, from one imagesTr file."""
    tr = group_channel_files(os.path.join(folder, "imagesTr"), fe, "imagesTr")
    if not tr:
        return None
    r = sitk.ImageFileReader()
    r.SetFileName(next(iter(tr.values()))[0])
    r.ReadImageInformation()
    return r.GetDimension()


def _stage_case(case: str, chans: Dict[int, tuple], stage: str, fe: str, ref_dim: Optional[int],
                forbidden: Optional[Dict[str, str]] = None) -> None:
    imgs = []
    for c in range(len(chans)):
        path, kind = chans[c]
        try:
            img = read_scan(path, case)
        except ConversionError as e:
            raise ConversionError(f"{e} Nothing was added.") from None
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise ConversionError(f"case {case}: {path} has {img.GetNumberOfComponentsPerPixel()} components "
                                  f"per voxel; expected one scalar volume per channel")
        if ref_dim is not None and img.GetDimension() != ref_dim:
            raise ConversionError(f"case {case}: {path} is {img.GetDimension()}D; the dataset's images are "
                                  f"{ref_dim}D")
        if imgs and not same_grid(imgs[0], img):
            raise ConversionError(f"case {case}: channel {c} geometry differs from channel 0: "
                                  f"{describe_grid(img)} vs {describe_grid(imgs[0])}")
        problems = sitk_image_problems(img) + (nifti_nonfinite_problems(path) if kind == "file" else [])
        if problems:
            raise ConversionError(f"case {case}: {path}: {'; '.join(problems)}. {FIX_HINT} Nothing was added.")
        if c == 0 and forbidden:
            leak = leak_problem(case, path, voxel_digest(sitk.GetArrayViewFromImage(img)), forbidden)
            if leak:
                raise ConversionError(f"{leak}. {LEAK_HINT} Nothing was added.")
        imgs.append(img)
        out = os.path.join(stage, f"{case}_{c:04d}{fe}")
        if kind == "file" and path.lower().endswith(fe):
            shutil.copyfile(path, out)
        else:
            sitk.WriteImage(img, out, True)


# --------------------------------------------------------------------------------------------------- all-or-nothing
# Every case is checked and written into STAGE (inside the dataset folder, so the moves are renames on one file
# system) before anything is moved. The moves and the dataset.json update are recorded in JOURNAL first: a failure
# moves the files back; after a hard interruption (kill, power loss) the next run finds the journal and undoes the
# partial add, or only cleans up if dataset.json already records it.
STAGE = ".imagesUnlabeled.staging"
JOURNAL = ".add_unlabeled.journal.json"


def _fresh_stage(folder: str) -> str:
    stage = os.path.join(folder, STAGE)
    if os.path.isdir(stage):   # left by a run interrupted while staging: nothing of it was moved
        print(f"NOTE: removing {stage}, left by an interrupted nnUNetv2_semisup_add_unlabeled before it had moved "
              f"anything")
        shutil.rmtree(stage)
    os.mkdir(stage)
    return stage


def _remove_files(folder: str, names: Sequence[str]) -> int:
    n = 0
    for f in names:
        p = os.path.join(folder, f)
        if os.path.isfile(p):
            os.remove(p)
            n += 1
    return n


def _clear_journal(folder: str) -> None:
    shutil.rmtree(os.path.join(folder, STAGE), ignore_errors=True)
    j = os.path.join(folder, JOURNAL)
    if os.path.isfile(j):
        os.remove(j)


def _is_recorded(dj: dict, add_id: str) -> bool:
    rec = dj.get("semisup") if isinstance(dj.get("semisup"), dict) else {}
    return any(isinstance(e, dict) and e.get("add_id") == add_id for e in rec.get("added_unlabeled", []))


def recover_interrupted_add(folder: str, dj: dict) -> None:
    """Undo (or, if dataset.json records it, just clean up after) an add that was interrupted while moving files."""
    path = os.path.join(folder, JOURNAL)
    if not os.path.isfile(path):
        return
    try:
        journal = load_json(path)
        add_id, files, src = journal["add_id"], list(journal["files"]), journal.get("source_folder", "?")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{path}: unreadable journal of an interrupted nnUNetv2_semisup_add_unlabeled ({e}); "
                              f"compare imagesUnlabeled/ with dataset.json's semisup unlabeled_cases, remove files "
                              f"not listed there, then delete {path}")
    if _is_recorded(dj, add_id):
        print(f"NOTE: the previous add from {src} had completed; removing its journal")
    else:
        unl = os.path.join(folder, "imagesUnlabeled")
        n = _remove_files(unl, files)
        if journal.get("created_imagesUnlabeled") and os.path.isdir(unl) and not os.listdir(unl):
            os.rmdir(unl)
        print(f"NOTE: the previous add from {src} was interrupted; it was undone ({n} of its {len(files)} file(s) "
              f"had reached imagesUnlabeled and were removed). Run it again to add those scans.")
    _clear_journal(folder)


def _commit(folder: str, stage: str, dj: dict, dj_path: str, add_id: str, src: str) -> None:
    """Move the staged files into imagesUnlabeled and write dataset.json; on any failure before dataset.json is
    written the files moved so far are removed again (their staged copies go with the staging folder)."""
    unl = os.path.join(folder, "imagesUnlabeled")
    names = sorted(os.listdir(stage))
    taken = [f for f in names if os.path.exists(os.path.join(unl, f))]
    if taken:
        raise ConversionError(f"imagesUnlabeled already has {', '.join(taken)}; rename the inputs or use --prefix")
    created = not os.path.isdir(unl)
    write_json_atomic({"add_id": add_id, "source_folder": src, "files": names, "created_imagesUnlabeled": created},
                      os.path.join(folder, JOURNAL))
    moved = []
    try:
        os.makedirs(unl, exist_ok=True)
        for f in names:
            os.replace(os.path.join(stage, f), os.path.join(unl, f))
            moved.append(f)
        write_json_atomic(dj, dj_path)
    except BaseException:
        if _is_recorded(load_json(dj_path), add_id):   # interrupted after dataset.json was written: complete
            _clear_journal(folder)
            raise
        _remove_files(unl, moved)
        if created and os.path.isdir(unl) and not os.listdir(unl):
            os.rmdir(unl)
        _clear_journal(folder)
        raise
    _clear_journal(folder)


def _updated_record(dj: dict, folder: str, fe: str, added: Dict[str, str], src: str, add_id: str, argv) -> dict:
    unl = group_channel_files(os.path.join(folder, "imagesUnlabeled"), fe, "imagesUnlabeled")
    rec = dj.get("semisup") if isinstance(dj.get("semisup"), dict) else None
    if rec is None:
        rec = {"format_version": SEMISUP_FORMAT_VERSION, "source": "own", "source_variant": "own",
               "gt_cropped": False, "resized": False, "spacing_source": "header", "split": "custom",
               "labeled_selection": "list:imagesTr", "transductive": False, "missing_cases": [],
               "case_id_map": {}}
    rec = dict(rec)
    tr = group_channel_files(os.path.join(folder, "imagesTr"), fe, "imagesTr")
    ts = group_channel_files(os.path.join(folder, "imagesTs"), fe, "imagesTs")
    rec.update(role_lists(folder, sorted(tr), sorted(set(unl) | set(added)), sorted(ts), rec))
    rec["case_id_map"] = {**rec.get("case_id_map", {}), **added}
    rec["added_unlabeled"] = list(rec.get("added_unlabeled", [])) + [{
        "source_folder": src, "cases": sorted(added), "add_id": add_id,
        "converter": converter_record(argv, "nnUNetv2_semisup_add_unlabeled")}]
    return rec


def run(argv: Optional[Sequence[str]] = None) -> str:
    args = build_parser().parse_args(argv)
    src = require_dir(args.input)
    folder, dj_path, dj = _open_dataset(args.dataset_id)
    recover_interrupted_add(folder, dj)
    dj = load_json(dj_path)
    fe, nch = _dataset_format(dj, dj_path)
    if args.prefix and not re.fullmatch(r"[A-Za-z0-9_\-]*", args.prefix):
        raise ConversionError(f"--prefix {args.prefix!r}: use letters, digits, '_' and '-'")
    groups = _group_inputs(src, nch, args.prefix)
    taken = existing_case_ids(folder, fe)
    clash = {c: taken[c] for c in groups if c in taken}
    if clash:
        raise ConversionError("case name(s) already used in the dataset: "
                              + ", ".join(f"{c} ({where})" for c, where in clash.items())
                              + "; rename the inputs or use --prefix")
    ref_dim = _reference_dim(folder, fe)
    forbidden = None
    if not args.allow_copies:
        rec = dj.get("semisup") if isinstance(dj.get("semisup"), dict) else {}
        forbidden = reference_digests(folder, fe, bool(rec.get("transductive", False)),
                                      lambda f: sitk.GetArrayFromImage(sitk.ReadImage(f)))
    stage = _fresh_stage(folder)
    try:
        for case, chans in progress(sorted(groups.items()), desc="checking and staging", quiet=args.quiet):
            _stage_case(case, chans, stage, fe, ref_dim, forbidden)
        added = {case: os.path.relpath(chans[0][0], src) for case, chans in groups.items()}
        add_id = uuid.uuid4().hex
        dj["semisup"] = _updated_record(dj, folder, fe, added, src, add_id, argv)
        _commit(folder, stage, dj, dj_path, add_id, src)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    unl = os.path.join(folder, "imagesUnlabeled")
    n_now = dj["semisup"]["num_unlabeled"]
    print(f"added {len(added)} unlabeled case(s) to {unl} (now {n_now}): {', '.join(sorted(added)[:10])}"
          f"{' ...' if len(added) > 10 else ''}")
    print(f"next: nnUNetv2_semisup_preprocess -d {args.dataset_id} -c 3d_fullres (after nnUNetv2_plan_and_preprocess)")
    return unl


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
