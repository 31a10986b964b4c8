"""Discovery and checks of the unlabeled raw scans in ``nnUNet_raw/DatasetXXX/imagesUnlabeled/``.

The folder uses nnU-Net's imagesTr naming, ``{case}_{channel:04d}{file_ending}``. Everything that could make the
unlabeled stream silently wrong is an error here, with the file and what to do: a wrong file ending, a missing
channel, a case that is also labeled, or a test case used without the dataset's ``transductive`` flag.
"""
import os
import re
from typing import Dict, List

UNLABELED_FOLDER = "imagesUnlabeled"


class UnlabeledDataError(RuntimeError):
    """Raised for bad or missing unlabeled raw data; the message names the file and the fix."""


def _case_ids(folder: str, file_ending: str) -> set:
    if not os.path.isdir(folder):
        return set()
    pattern = re.compile(r"(.+)_\d{4}" + re.escape(file_ending) + r"$")
    return {m.group(1) for f in os.listdir(folder) if (m := pattern.match(f))}


def find_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """Return ``{case_id: [channel files in channel order]}`` for every scan in ``imagesUnlabeled/``.

    Raises UnlabeledDataError for a missing/empty folder, files that do not follow the naming scheme or file
    ending, cases with missing or extra channels, cases that are also in imagesTr, and imagesTs cases unless
    ``dataset_json["semisup"]["transductive"]`` is true.
    """
    folder = os.path.join(os.fspath(raw_dataset_folder), UNLABELED_FOLDER)
    add_hint = (f"Put unlabeled scans there named like imagesTr ({{case}}_0000{dataset_json.get('file_ending', '')}), "
                f"e.g. with nnUNetv2_semisup_add_unlabeled -d DATASET_ID -i FOLDER or one of the "
                f"nnUNetv2_semisup_convert_* converters.")
    if not os.path.isdir(folder):
        raise UnlabeledDataError(f"No unlabeled scans: folder {folder} does not exist. {add_hint}")
    file_ending = dataset_json["file_ending"]
    num_channels = len(dataset_json["channel_names"])
    files = sorted(f for f in os.listdir(folder) if not f.startswith("."))
    if not files:
        raise UnlabeledDataError(f"No unlabeled scans: folder {folder} is empty. {add_hint}")

    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(file_ending) + r"$")
    channels: Dict[str, Dict[int, str]] = {}
    for f in files:
        m = pattern.match(f)
        if m is None:
            raise UnlabeledDataError(
                f"{os.path.join(folder, f)}: unexpected file name. Expected {{case}}_{{channel:04d}}{file_ending} "
                f"(file_ending from dataset.json), e.g. case001_0000{file_ending}. Rename or convert the file.")
        channels.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(folder, f)

    expected = set(range(num_channels))
    cases = {}
    for case, chans in sorted(channels.items()):
        if set(chans) != expected:
            missing = sorted(expected - set(chans))
            extra = sorted(set(chans) - expected)
            raise UnlabeledDataError(
                f"Unlabeled case '{case}' in {folder}: dataset.json declares {num_channels} channel(s) "
                f"{dict(dataset_json['channel_names'])}, but the case has channel files "
                f"{sorted(chans)} (missing: {missing}, unexpected: {extra}). Every case needs exactly the files "
                + ", ".join(f"{case}_{c:04d}{file_ending}" for c in sorted(expected)) + ".")
        cases[case] = [chans[c] for c in sorted(chans)]

    labeled = _case_ids(os.path.join(raw_dataset_folder, "imagesTr"), file_ending) & set(cases)
    if labeled:
        raise UnlabeledDataError(
            f"Cases {sorted(labeled)} are both in imagesTr (labeled) and in {UNLABELED_FOLDER}. A case is either "
            f"labeled or unlabeled; remove it from {folder}.")
    test = _case_ids(os.path.join(raw_dataset_folder, "imagesTs"), file_ending) & set(cases)
    if test and not dataset_json.get("semisup", {}).get("transductive", False):
        raise UnlabeledDataError(
            f"Cases {sorted(test)} of imagesTs are also in {UNLABELED_FOLDER}: training on test images is "
            f"transductive. Remove them from {folder}, or, if intended, record it in dataset.json as "
            f'"semisup": {{"transductive": true}} (the converters do this with --transductive).')
    return cases
