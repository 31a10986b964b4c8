"""``nnUNetv2_semisup_preprocess``: preprocess ``imagesUnlabeled/`` with the dataset's own plans.

Every unlabeled scan goes through the configuration's own nnU-Net preprocessor (``run_case`` without a
segmentation: transpose, crop to nonzero, normalise, resample) and is stored like nnU-Net's cases in
``nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/`` with empty ``class_locations``. A separate folder,
so nnU-Net's splits, ``fold all`` and validation only ever see labeled cases.

Every scan is checked first (``image_checks``: NaN/Inf voxels, an empty or constant image, a non-invertible
direction, channels on different grids) and refused with the file and the fix. Writes are atomic per case
(temporary sub-folder, then renames with the data file last), so an interrupted run leaves no half-written case; a
re-run reads every finished case back, redoes the ones that cannot be read (a damaged copy, a full disk) and
processes what is missing.
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from typing import Dict, List, Optional

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

from nnunetv2_semisup.cli_errors import is_explained, os_error_message
from nnunetv2_semisup.data.image_checks import FIX_HINT, READ_ERRORS, case_channel_problems, damaged_file_message
from nnunetv2_semisup.data.leak_guard import (LEAK_HINT, channel0_files, leak_problem, orientation_warning,
                                              reference_digests, voxel_digest)
from nnunetv2_semisup.data.unlabeled_raw import UnlabeledDataError, find_unlabeled_cases
from nnunetv2_semisup.progress import progress
from nnunetv2_semisup.trainer_dir import ext_trainer_env_problem

STATE_FILE = "semisup_preprocess.json"
CASE_FINGERPRINT_KEY = "semisup_preprocessing_sha256"  # in each unlabeled case's properties


def unlabeled_folder_name(data_identifier: str) -> str:
    return data_identifier + "_unlabeled"


def _dataset_class_files(dataset_class, case: str) -> List[str]:
    """Files one case consists of, data file LAST (its presence marks a complete case)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    if issubclass(dataset_class, nnUNetDatasetBlosc2):
        return [case + "_seg.b2nd", case + ".pkl", case + ".b2nd"]
    return [case + ".pkl", case + ".npz"]


# the configuration entries that change what the preprocessor writes (not the network, patch or batch size)
PREPROCESSING_KEYS = ("data_identifier", "preprocessor_name", "spacing", "normalization_schemes", "use_mask_for_norm",
                      "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg",
                      "resampling_fn_seg_kwargs")


def _configuration_fingerprint(plans: dict, configuration_manager, plans_identifier: str, configuration: str) -> dict:
    conf = configuration_manager.configuration
    blob = json.dumps({"conf": {k: conf.get(k) for k in PREPROCESSING_KEYS},
                       "norm": plans.get("foreground_intensity_properties_per_channel"),
                       "transpose": plans.get("transpose_forward")}, sort_keys=True, default=str)
    return {"plans_identifier": plans_identifier, "configuration": configuration,
            "sha256": hashlib.sha256(blob.encode()).hexdigest()}


def _same_preprocessing(saved: dict, current: dict) -> bool:
    # only what is written counts, not the plans' name: nnU-Net's ResEnc presets reuse nnUNetPlans' data
    return saved.get("sha256") == current["sha256"]


def stale_preprocessing_problem(folder: str, plans: dict, configuration_manager, plans_identifier: str,
                                configuration: str) -> Optional[str]:
    """Why the unlabeled cases in ``folder`` do not match the current plans (None if they do): a re-planned dataset
    keeps its data_identifier, so the folder name alone cannot tell."""
    state_file = os.path.join(folder, STATE_FILE)
    if not os.path.isfile(state_file):
        return f"{folder} has no {STATE_FILE} (not written by nnUNetv2_semisup_preprocess)"
    if not _same_preprocessing(load_json(state_file), _configuration_fingerprint(
            plans, configuration_manager, plans_identifier, configuration)):
        return (f"{folder} was preprocessed with different plans than the current ones (spacing, normalisation, "
                f"resampling or intensity statistics of configuration '{configuration}' changed)")
    return None


def preprocess_unlabeled_case(case: str, image_files: List[str], output_folder: str, plans: dict,
                              configuration: str, dataset_json: dict, dataset_class,
                              forbidden: Optional[Dict[str, str]] = None) -> None:
    """Preprocess one unlabeled case exactly like nnU-Net's preprocessor does an unlabeled (test) image.

    ``forbidden``: ``{voxel digest: scan}`` of the test/labeled scans this case must not copy (leak guard)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, comp_blosc2_params
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    # read channel by channel (nnU-Net's run_case reads them together and only prints on mismatches), check with
    # nnU-Net's strictness, then the preprocessor's own run_case_npy — the same arrays and properties as run_case
    rw = plans_manager.image_reader_writer_class()
    arrays, grids, props = [], [], []
    for f in image_files:
        try:
            a, p = rw.read_images([f])
        except READ_ERRORS as e:
            raise UnlabeledDataError(f"Unlabeled case '{case}': {damaged_file_message(f, e)}. Nothing of this case "
                                     f"was written.") from None
        arrays.append(a)
        props.append(p)
        sitk_stuff = p.get("sitk_stuff", {})
        grids.append({"shape": a.shape[1:], "spacing": p.get("spacing"), "origin": sitk_stuff.get("origin"),
                      "direction": sitk_stuff.get("direction")})
    problems = case_channel_problems(image_files, arrays, grids)
    if forbidden:
        problems += [p for p in [leak_problem(case, image_files[0], voxel_digest(arrays[0][0]), forbidden)] if p]
    if problems:
        hint = LEAK_HINT if forbidden and any("has the same voxels as" in p for p in problems) else FIX_HINT
        raise UnlabeledDataError(f"Unlabeled case '{case}' refused:\n  " + "\n  ".join(problems) + f"\n{hint} "
                                 f"Nothing of this case was written.")
    data, seg, properties = preprocessor.run_case_npy(np.vstack(arrays).astype(np.float32, copy=False), None,
                                                      props[0], plans_manager, configuration_manager, dataset_json)
    if data.shape[0] != len(dataset_json["channel_names"]):
        raise UnlabeledDataError(
            f"Unlabeled case '{case}' ({image_files}) has {data.shape[0]} channel(s) after reading, dataset.json "
            f"declares {len(dataset_json['channel_names'])} ({dict(dataset_json['channel_names'])}). Store one "
            f"single-channel image per channel file.")
    # the fingerprint of the plans travels with the case: a folder whose state file is lost still knows each case's
    properties[CASE_FINGERPRINT_KEY] = _configuration_fingerprint(plans, configuration_manager, "", configuration)[
        "sha256"]
    label_manager = plans_manager.get_label_manager(dataset_json)
    # Same keys as labeled cases, no locations: foreground-forced crops fall back to uniform ones.
    properties["class_locations"] = {k: [] for k in (label_manager.foreground_regions if label_manager.has_regions
                                                     else label_manager.foreground_labels)}
    data = data.astype(np.float32, copy=False)
    seg = seg.astype(np.int16, copy=False)  # 0 inside the nonzero mask, -1 outside, like nnU-Net

    tmp = os.path.join(output_folder, f".tmp_{case}_{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        if issubclass(dataset_class, nnUNetDatasetBlosc2):
            patch = tuple(configuration_manager.patch_size)
            blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
            blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
            dataset_class.save_case(data, seg, properties, os.path.join(tmp, case), chunks=chunks, blocks=blocks,
                                    chunks_seg=chunks_seg, blocks_seg=blocks_seg)
        else:
            dataset_class.save_case(data, seg, properties, os.path.join(tmp, case))
        for f in _dataset_class_files(dataset_class, case):
            os.replace(os.path.join(tmp, f), os.path.join(output_folder, f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _preprocess_star(args) -> None:
    preprocess_unlabeled_case(*args)


def _is_complete(output_folder: str, dataset_class, case: str) -> bool:
    return all(os.path.isfile(os.path.join(output_folder, f)) for f in _dataset_class_files(dataset_class, case))


def read_problem(output_folder: str, dataset_class, case: str, fingerprint: Optional[str] = None,
                 trust_unrecorded: bool = True) -> Optional[str]:
    """Why a finished case cannot be used (None if it can): it cannot be read back (an interrupted copy, a full
    disk; loaded with nnU-Net's dataset class, every array decompressed), or it records another plans fingerprint
    than ``fingerprint``, or it records none (written before cases carried theirs) and ``trust_unrecorded`` is False
    (the folder's state file, the other witness, is missing)."""
    try:
        data, seg, _, properties = dataset_class(output_folder, [case]).load_case(case)
        np.asarray(data[:])
        np.asarray(seg[:])
        if not isinstance(properties, dict):
            return "its properties file does not hold a dict"
    except Exception as e:  # blosc2 / pickle / numpy errors of a damaged file
        return f"cannot be read: {type(e).__name__}: {e}"
    recorded = properties.get(CASE_FINGERPRINT_KEY)
    if fingerprint is not None and recorded is not None and recorded != fingerprint:
        return "it was preprocessed with other plans than the current ones"
    if fingerprint is not None and recorded is None and not trust_unrecorded:
        return f"it records no plans fingerprint and {STATE_FILE} is missing, so nothing vouches for it"
    return None


def _remove_case(output_folder: str, dataset_class, case: str) -> None:
    for f in _dataset_class_files(dataset_class, case):
        p = os.path.join(output_folder, f)
        if os.path.isfile(p):
            os.remove(p)


def _existing_cases(output_folder: str, dataset_class) -> set:
    suffix = _dataset_class_files(dataset_class, "")[-1]
    return {f[: -len(suffix)] for f in os.listdir(output_folder) if f.endswith(suffix) and not f.startswith(".")
            and not f.endswith("_seg" + suffix)}


def preprocess_unlabeled(dataset_name_or_id, configurations: List[str], plans_identifier: str = "nnUNetPlans",
                         num_processes: int = 4, overwrite: bool = False, verbose: bool = True,
                         allow_copies: bool = False) -> dict:
    """Preprocess all unlabeled scans of a dataset for the given configurations.

    Returns ``{configuration: output_folder}``. Raises UnlabeledDataError with the command to run when the
    dataset has not been planned/preprocessed, or the unlabeled raw data are missing or malformed.
    """
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except RuntimeError as e:
        raise UnlabeledDataError(f"Dataset {dataset_name_or_id} not found: {e}") from e
    raw_folder = os.path.join(nnUNet_raw, dataset_name)
    pp_base = os.path.join(nnUNet_preprocessed, dataset_name)
    plans_file = os.path.join(pp_base, plans_identifier + ".json")
    plan_cmd = f"nnUNetv2_plan_and_preprocess -d {dataset_name_or_id} -c {' '.join(configurations)}"
    if not os.path.isfile(plans_file):
        if plans_identifier != "nnUNetPlans":
            # nnUNetv2_plan_and_preprocess writes nnUNetPlans only; other plans come from their planner
            known = {"nnUNetResEncUNetMPlans": "nnUNetPlannerResEncM", "nnUNetResEncUNetLPlans": "nnUNetPlannerResEncL",
                     "nnUNetResEncUNetXLPlans": "nnUNetPlannerResEncXL"}
            planner = known.get(plans_identifier, "<the planner of these plans>")
            raise UnlabeledDataError(
                f"Plans file {plans_file} not found: plans '{plans_identifier}' have not been made for this dataset. "
                f"Run `nnUNetv2_plan_experiment -d {dataset_name_or_id} -pl {planner}` (after "
                f"`{plan_cmd}`, which preprocesses the labeled cases these plans share), then this command again.")
        raise UnlabeledDataError(
            f"Plans file {plans_file} not found: the dataset has not been planned yet. Run `{plan_cmd}` first "
            f"(stock nnU-Net, labeled cases), then this command again.")
    dataset_json_file = os.path.join(pp_base, "dataset.json")
    if not os.path.isfile(dataset_json_file):
        raise UnlabeledDataError(f"{dataset_json_file} not found. Run `{plan_cmd}` first.")
    plans = load_json(plans_file)
    dataset_json = load_json(dataset_json_file)
    # the raw dataset.json carries the "semisup" record (e.g. the transductive flag) written by the converters
    raw_dataset_json_file = os.path.join(raw_folder, "dataset.json")
    raw_dataset_json = load_json(raw_dataset_json_file) if os.path.isfile(raw_dataset_json_file) else dataset_json
    cases = find_unlabeled_cases(raw_folder, {**dataset_json, "semisup": raw_dataset_json.get("semisup", {})})
    plans_manager = PlansManager(plans)
    problem = labeled_label_value_problem(raw_folder, dataset_json, plans_manager, dataset_name_or_id)
    if problem:
        raise UnlabeledDataError(problem)

    outputs = {}
    for configuration in configurations:
        if configuration not in plans_manager.available_configurations:
            raise UnlabeledDataError(
                f"Configuration '{configuration}' is not in {plans_file} (available: "
                f"{plans_manager.available_configurations}). 3d_lowres only exists for large images.")
        configuration_manager = plans_manager.get_configuration(configuration)
        labeled_folder = os.path.join(pp_base, configuration_manager.data_identifier)
        if not os.path.isdir(labeled_folder) or not os.listdir(labeled_folder):
            raise UnlabeledDataError(
                f"Preprocessed labeled data {labeled_folder} not found: run `nnUNetv2_plan_and_preprocess -d "
                f"{dataset_name_or_id} -c {configuration}` (or nnUNetv2_preprocess) first.")
        dataset_class = infer_dataset_class(labeled_folder)
        out = os.path.join(pp_base, unlabeled_folder_name(configuration_manager.data_identifier))
        fingerprint = _configuration_fingerprint(plans, configuration_manager, plans_identifier, configuration)
        state_file = os.path.join(out, STATE_FILE)
        if overwrite and os.path.isdir(out):
            shutil.rmtree(out)
        os.makedirs(out, exist_ok=True)
        if os.path.isfile(state_file) and not _same_preprocessing(load_json(state_file), fingerprint):
            raise UnlabeledDataError(
                f"{out} was preprocessed with different plans than the current {plans_file} (spacing, "
                f"normalisation, resampling or intensity statistics of configuration '{configuration}' changed). "
                f"Re-run with --overwrite to redo all unlabeled cases.")
        state_was_missing = not os.path.isfile(state_file)
        for stale in [d for d in os.listdir(out) if d.startswith(".tmp_")]:
            shutil.rmtree(os.path.join(out, stale), ignore_errors=True)  # leftovers of an interrupted run
        for removed in sorted(_existing_cases(out, dataset_class) - set(cases)):
            print(f"Removing {removed} from {out}: no longer in imagesUnlabeled")
            _remove_case(out, dataset_class, removed)

        done = [c for c in cases if _is_complete(out, dataset_class, c)]
        unreadable = []
        for c in progress(done, desc=f"{configuration}: checking finished cases", quiet=not verbose):
            problem = read_problem(out, dataset_class, c, fingerprint["sha256"], trust_unrecorded=not state_was_missing)
            if problem:
                print(f"{c}: the preprocessed case is not usable ({problem}); preprocessing it again")
                _remove_case(out, dataset_class, c)
                unreadable.append(c)
        if state_was_missing:  # written once every kept case has shown its own fingerprint (or was removed)
            save_json(fingerprint, state_file)
        todo = [c for c in cases if not _is_complete(out, dataset_class, c)]
        if verbose:
            print(f"{configuration}: {len(cases)} unlabeled cases, {len(cases) - len(todo)} already done"
                  f"{f' ({len(unreadable)} unusable removed)' if unreadable else ''}, {len(todo)} to preprocess "
                  f"-> {out}")
        if todo and verbose:
            warning = orientation_warning(channel0_files(os.path.join(raw_folder, "imagesTr"),
                                                         dataset_json["file_ending"]).values(),
                                          {c: cases[c][0] for c in todo})
            if warning:
                print(warning)
        forbidden = None
        if todo and not allow_copies:
            # the scans an unlabeled one must not copy (imagesTs unless transductive, imagesTr), read once
            rw = plans_manager.image_reader_writer_class()
            transductive = bool(raw_dataset_json.get("semisup", {}).get("transductive", False))
            forbidden = reference_digests(raw_folder, dataset_json["file_ending"], transductive,
                                          lambda f: rw.read_images([f])[0][0])
        args = [(c, cases[c], out, plans, configuration, dataset_json, dataset_class, forbidden) for c in todo]
        bar = progress(total=len(args), desc=f"{configuration}: preprocessing", quiet=not verbose)
        if num_processes <= 1 or len(args) <= 1:
            for a in args:
                preprocess_unlabeled_case(*a)
                bar.update()
        else:
            with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
                for _ in pool.imap_unordered(_preprocess_star, args):
                    bar.update()
        bar.close()
        outputs[configuration] = out

    install_semisup_splits(raw_folder, pp_base, verbose=verbose)
    return outputs


def labeled_label_value_problem(raw_folder: str, dataset_json: dict, plans_manager, dataset_id) -> Optional[str]:
    """The first labeled case holding a label value that dataset.json does not declare (None if none does).

    nnU-Net checks this only with ``--verify_dataset_integrity``; without it the semi-supervised losses fail deep in
    training with a torch index error that names no case. Label-based datasets only (regions are nnU-Net's to check).
    """
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    label_manager = plans_manager.get_label_manager(dataset_json)
    if label_manager.has_regions:
        return None
    allowed = set(int(v) for v in label_manager.all_labels)
    if label_manager.ignore_label is not None:
        allowed.add(int(label_manager.ignore_label))
    rw = plans_manager.image_reader_writer_class()
    for case, files in sorted(get_filenames_of_train_images_and_targets(raw_folder, dataset_json).items()):
        seg, _ = rw.read_seg(files["label"])
        extra = sorted(set(np.unique(seg).astype(int).tolist()) - allowed)
        if extra:
            return (f"Labeled case '{case}' ({files['label']}) holds label value(s) {extra} that dataset.json does not "
                    f"declare (labels {dict(dataset_json['labels'])}); training would fail with an index error. Fix "
                    f"the label file or dataset.json, then re-plan with `nnUNetv2_plan_and_preprocess -d {dataset_id} "
                    f"--verify_dataset_integrity`.")
    return None


def install_semisup_splits(raw_folder: str, preprocessed_folder: str, verbose: bool = True) -> bool:
    """Copy ``splits_semisup.json`` of the raw dataset to ``splits_final.json`` unless one exists."""
    src = os.path.join(raw_folder, "splits_semisup.json")
    dst = os.path.join(preprocessed_folder, "splits_final.json")
    if not os.path.isfile(src):
        return False
    if os.path.isfile(dst):
        if verbose and load_json(dst) != load_json(src):
            print(f"Note: {dst} exists and differs from {src}; keeping the existing nnU-Net split.")
        return False
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    if verbose:
        print(f"Installed {src} as {dst} (train with fold 0)")
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_semisup_preprocess",
        description="Preprocess nnUNet_raw/DatasetXXX/imagesUnlabeled/ with the dataset's nnU-Net plans "
                    "(run after nnUNetv2_plan_and_preprocess). Output: <data_identifier>_unlabeled/ next to "
                    "nnU-Net's preprocessed folders. Re-running only processes missing cases.")
    parser.add_argument("-d", required=True, help="dataset name or ID")
    parser.add_argument("-c", nargs="+", default=["3d_fullres"],
                        help="configuration(s), e.g. 2d 3d_fullres 3d_lowres (default: 3d_fullres)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-np", type=int, default=4, help="number of processes (default: 4)")
    parser.add_argument("--overwrite", action="store_true", help="redo every case (e.g. after re-planning)")
    parser.add_argument("--allow-copies", action="store_true",
                        help="do not refuse an unlabeled scan whose voxels equal a test (imagesTs) or labeled "
                             "(imagesTr) scan's (the leak guard); for a deliberate duplicate only")
    parser.add_argument("--quiet", action="store_true", help="print errors only (no progress bars or summaries)")
    args = parser.parse_args(argv)
    try:
        preprocess_unlabeled(args.d, args.c, args.plans, args.np, args.overwrite, verbose=not args.quiet,
                             allow_copies=args.allow_copies)
    except UnlabeledDataError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if not is_explained(e):
            raise
        print(f"ERROR: {os_error_message(e)}", file=sys.stderr)
        return 1
    problem = ext_trainer_env_problem()
    if problem:
        print(f"\nNote: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
