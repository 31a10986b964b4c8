"""Published split manifests (case-ID lists only) and the named splits built from them.

The lists are plain text files shipped in ``splits/<Dataset>/`` (one ID per line, order preserved), copied from the
papers' public code; see ``docs/datasets.md`` and the dataset specification. The M&N "fold 1" splits are not published
files: they are derived here from the M&N reference code's sorting rule, exactly as the specification lists them.

Every split works on *source IDs* normalised by the dataset's ``normalise_id`` (LA: the 20-character ID; Pancreas and
Synapse: the four-digit number as a string, e.g. ``"0001"``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import ConversionError

SPLITS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")


def read_id_file(path: str) -> List[str]:
    """One ID per line; blank lines and lines starting with '#' are ignored; order is kept."""
    if not os.path.isfile(path):
        raise ConversionError(f"ID list file not found: {path}")
    with open(path, encoding="utf-8") as f:
        ids = [line.strip() for line in f]
    return [i for i in ids if i and not i.startswith("#")]


def load_list(dataset: str, file_name: str) -> List[str]:
    """A shipped split list, e.g. ``load_list("LA", "train.list")``."""
    return read_id_file(os.path.join(SPLITS_DIR, dataset, file_name))


# --------------------------------------------------------------------------------------------------- ID normalisers
def normalise_la_id(raw: str) -> str:
    s = raw.strip()
    s = os.path.basename(s.rstrip("/"))
    for suffix in (".h5", ".nrrd"):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
    if s.lower().startswith("la_"):
        s = s[3:]
    return s


_FOUR_DIGITS = re.compile(r"(\d{1,4})(?:_norm)?(?:\.h5|\.nii\.gz|\.nii|\.npy)?$")


def normalise_numeric_id(raw: str) -> str:
    """'image0001', '0001.h5', 'img0001', 'pancreas_0001', 'PANCREAS_0001', 'synapse_21', '1' -> '0001'."""
    s = os.path.basename(raw.strip().rstrip("/"))
    m = _FOUR_DIGITS.search(s)
    if m is None:
        raise ConversionError(f"cannot read a case number from ID {raw!r} (expected e.g. 0001, image0001, img0001)")
    return f"{int(m.group(1)):04d}"


# --------------------------------------------------------------------------------------------------- split objects
@dataclass
class Split:
    """A named split: ordered train list, optional validation list, test list.

    ``labeled_lists`` maps an allowed ``--num-labeled`` value to (IDs, file name) for splits whose labeled sets are
    separate lists (Synapse SKCDF); otherwise labeled = the first N IDs of ``train``.
    """
    name: str
    train: List[str]
    test: List[str]
    validation: List[str] = field(default_factory=list)
    default_num_labeled: int = 0
    labeled_lists: Optional[Dict[int, Tuple[List[str], str]]] = None
    allowed_missing: Sequence[str] = ()
    description: str = ""

    def all_ids(self) -> List[str]:
        return list(self.train) + list(self.validation) + list(self.test)


@dataclass
class Selection:
    labeled: List[str]
    unlabeled: List[str]
    validation: List[str]
    test: List[str]
    labeled_selection: str
    missing: List[str]


def _check_disjoint(split: Split) -> None:
    seen: Dict[str, str] = {}
    for role, ids in (("train", split.train), ("validation", split.validation), ("test", split.test)):
        for i in ids:
            if i in seen:
                raise ConversionError(f"split {split.name}: case {i} appears in both {seen[i]} and {role}")
            seen[i] = role


def select_cases(split: Split, available: Sequence[str], num_labeled: Optional[int],
                 labeled_list_file: Optional[str], normalise: Callable[[str], str]) -> Selection:
    """Assign roles. ``available`` = source IDs found on disk. Raises ConversionError on any contract violation."""
    _check_disjoint(split)
    available_set = set(available)
    if labeled_list_file is not None:
        requested = [normalise(i) for i in read_id_file(labeled_list_file)]
        if not requested:
            raise ConversionError(f"--labeled-list {labeled_list_file} is empty")
        dup = sorted({i for i in requested if requested.count(i) > 1})
        if dup:
            raise ConversionError(f"--labeled-list {labeled_list_file}: IDs listed twice: {', '.join(dup)}")
        not_in_train = [i for i in requested if i not in split.train]
        if not_in_train:
            raise ConversionError(
                f"--labeled-list {labeled_list_file}: IDs not in the train list of split {split.name}: "
                f"{', '.join(not_in_train)} (the train list has {len(split.train)} IDs: "
                f"{', '.join(split.train[:5])}, ...)")
        labeled = requested
        selection = f"list:{os.path.basename(labeled_list_file)}"
    elif split.labeled_lists is not None:
        n = split.default_num_labeled if num_labeled is None else num_labeled
        if n not in split.labeled_lists:
            allowed = ", ".join(str(k) for k in sorted(split.labeled_lists))
            raise ConversionError(
                f"--num-labeled {n} is not available for split {split.name}: its labeled sets are published lists, "
                f"not the first N of the train list. Allowed values: {allowed}. For any other set of labeled cases "
                f"use --labeled-list FILE (IDs from the train list).")
        labeled, fname = split.labeled_lists[n]
        labeled = list(labeled)
        selection = fname if ":" in fname else f"list:{fname}"  # e.g. ACDC's "first_patients:7"
    else:
        n = split.default_num_labeled if num_labeled is None else num_labeled
        if n < 1:
            raise ConversionError(f"--num-labeled must be at least 1 (got {n})")
        if n > len(split.train):
            raise ConversionError(
                f"--num-labeled {n} is larger than the train list of split {split.name}, which has "
                f"{len(split.train)} cases")
        labeled = list(split.train[:n])
        selection = f"first_n:{n}"

    labeled_set = set(labeled)
    unlabeled = [i for i in split.train if i not in labeled_set]
    missing = [i for i in split.all_ids() if i not in available_set]
    bad_missing = [i for i in missing if i not in split.allowed_missing]
    if bad_missing:
        raise ConversionError(
            f"split {split.name}: {len(bad_missing)} case(s) of the split were not found in the source: "
            f"{', '.join(bad_missing[:10])}{' ...' if len(bad_missing) > 10 else ''}. Found {len(available_set)} "
            f"cases in the source. Is this the right folder / --variant / --split?")
    missing_set = set(missing)
    sel = Selection(
        labeled=[i for i in labeled if i not in missing_set],
        unlabeled=[i for i in unlabeled if i not in missing_set],
        validation=[i for i in split.validation if i not in missing_set],
        test=[i for i in split.test if i not in missing_set],
        labeled_selection=selection,
        missing=missing,
    )
    if not sel.labeled:
        raise ConversionError(f"split {split.name}: no labeled case left after removing missing cases")
    return sel


# --------------------------------------------------------------------------------------------------- LA
LA_MN_VAL_EXTRA = "ULHWPWKKLTE921LQLH1P"
LA_MN_TEST_EXTRA = "UZUZZT2W9IUSHL6ASOX3"


def la_split(name: str) -> Split:
    train = load_list("LA", "train.list")
    test = load_list("LA", "test.list")
    if name == "uamt_la":
        return Split("uamt_la", train, test, default_num_labeled=8,
                     description="UA-MT convention: train.list (80) / test.list (20); labeled = first N of train.list")
    if name == "mn_la_fold1":
        # M&N reference code: the 100 training IDs sorted, fractions [0, .75) / [.75, .80) / [.80, 1.0)
        return Split("mn_la_fold1", train[:75], [i for i in test if i != LA_MN_VAL_EXTRA] + [LA_MN_TEST_EXTRA],
                     validation=train[75:79] + [LA_MN_VAL_EXTRA], default_num_labeled=8,
                     description="M&N fold 1 (derived from the reference code's sorting rule)")
    raise ConversionError(f"unknown LA split {name!r}; choose one of: uamt_la, mn_la_fold1, custom")


LA_SPLITS = ("uamt_la", "mn_la_fold1")

# --------------------------------------------------------------------------------------------------- Pancreas
PANCREAS_DUPLICATES = ("0025", "0070")


def pancreas_split(name: str) -> Split:
    if name == "mcnet_pancreas82":
        train = [normalise_numeric_id(i) for i in load_list("Pancreas", "mcnet82_train.list")]
        test = [normalise_numeric_id(i) for i in load_list("Pancreas", "mcnet82_test.list")]
        return Split(name, train, test, default_num_labeled=12, allowed_missing=PANCREAS_DUPLICATES,
                     description="MC-Net 82-case lists: 62 train / 20 test; labeled = first N of the train list")
    if name == "coranet_pancreas80":
        lab = [normalise_numeric_id(i) for i in load_list("Pancreas", "coranet80_train_lab.txt")]
        unlab = [normalise_numeric_id(i) for i in load_list("Pancreas", "coranet80_train_unlab.txt")]
        test = [normalise_numeric_id(i) for i in load_list("Pancreas", "coranet80_test.txt")]
        # train list = labeled list followed by the unlabeled list: first 12 = the published labeled list, first 6 =
        # CoraNet's split-generation function for 10 % (0001-0006, unlabeled 0007-0063 without 0025).
        return Split(name, lab + unlab, test, default_num_labeled=12,
                     description="CoraNet/BCP 80-case lists: 12 labeled / 50 unlabeled / 18 test")
    if name == "mn_pancreas_fold1":
        ids = [f"{i:04d}" for i in range(1, 83)]
        return Split(name, ids[:61], ids[65:], validation=ids[61:65], default_num_labeled=6,
                     allowed_missing=PANCREAS_DUPLICATES,
                     description="M&N fold 1 (derived from the reference code's sorting rule)")
    raise ConversionError(
        f"unknown Pancreas split {name!r}; choose one of: mcnet_pancreas82, coranet_pancreas80, mn_pancreas_fold1, custom")


PANCREAS_SPLITS = ("mcnet_pancreas82", "coranet_pancreas80", "mn_pancreas_fold1")

# --------------------------------------------------------------------------------------------------- Synapse


def synapse_split(name: str) -> Split:
    if name == "skcdf_synapse":
        n = normalise_numeric_id
        lists = {}
        for count, tag in ((2, "10p"), (4, "20p"), (8, "40p")):
            fname = f"skcdf_labeled_{tag}.txt"
            lists[count] = ([n(i) for i in load_list("Synapse", fname)], fname)
        return Split(name, [n(i) for i in load_list("Synapse", "skcdf_train.txt")],
                     [n(i) for i in load_list("Synapse", "skcdf_test.txt")],
                     validation=[n(i) for i in load_list("Synapse", "skcdf_eval.txt")],
                     default_num_labeled=4, labeled_lists=lists,
                     description="SKCDF lists: train 20 / eval 4 / test 6; labeled sets 2/4/8 from published lists")
    raise ConversionError(f"unknown Synapse split {name!r}; choose one of: skcdf_synapse, custom")


SYNAPSE_SPLITS = ("skcdf_synapse",)


# --------------------------------------------------------------------------------------------------- custom
def custom_split(available: Sequence[str], test_list_file: Optional[str], normalise: Callable[[str], str]) -> Split:
    """``--split custom``: every source case not in ``--test-list`` is a training case (sorted by ID)."""
    test = [normalise(i) for i in read_id_file(test_list_file)] if test_list_file else []
    test_set = set(test)
    train = sorted(i for i in available if i not in test_set)
    return Split("custom", train, test, default_num_labeled=0,
                 description="custom: all source cases not in --test-list are training cases (sorted)")


# --------------------------------------------------------------------------------------------------- AMOS
AMOS_MRI_FROM = 500            # AMOS IDs >= 500 are MRI scans (release readme)
AMOS_LABELED_LISTS = {4: "dhc_labeled_2p.txt", 10: "dhc_labeled_5p.txt", 21: "dhc_labeled_10p.txt"}
AMOS_BROKEN_20P = 38           # dhc_labeled_20p.txt: drawn from another train list, overlaps eval


def normalise_amos_id(raw: str) -> str:
    """'amos_0078', 'amos_0078.nii.gz', 'amos_0078_image.npy', '78' -> 'amos_0078'."""
    s = os.path.basename(raw.strip().rstrip("/"))
    m = re.search(r"(\d{1,4})(?:_image|_label)?(?:\.nii\.gz|\.nii|\.npy)?$", s)
    if m is None:
        raise ConversionError(f"cannot read an AMOS case number from ID {raw!r} (expected e.g. amos_0078)")
    return f"amos_{int(m.group(1)):04d}"


def amos_is_mri(case_id: str) -> bool:
    return int(case_id.split("_")[-1]) >= AMOS_MRI_FROM


def amos_split(name: str, ct_only: bool = False) -> Split:
    """DHC lists (= SKCDF's copies): train 216 / eval 24 / test 120; labeled sets 4, 10, 21 are separate published
    draws (not nested). ``ct_only`` drops the MRI IDs from every list (a protocol deviation)."""
    if name != "dhc_amos":
        raise ConversionError(f"unknown AMOS split {name!r}; choose one of: dhc_amos, custom")
    keep = (lambda ids: [i for i in ids if not amos_is_mri(i)]) if ct_only else list
    load = lambda f: keep([normalise_amos_id(i) for i in load_list("AMOS", f)])  # noqa: E731
    lists = {n: (load(f), f) for n, f in AMOS_LABELED_LISTS.items()}
    return Split(name, load("dhc_train.txt"), load("dhc_test.txt"), validation=load("dhc_eval.txt"),
                 default_num_labeled=10, labeled_lists=lists,
                 description="DHC/SKCDF lists: train 216 / eval 24 / test 120 (official imagesVa); labeled 4/10/21")


AMOS_SPLITS = ("dhc_amos",)


# --------------------------------------------------------------------------------------------------- BraTS 2019
def normalise_brats_id(raw: str) -> str:
    """'BraTS19_CBICA_AAB_1', '.../BraTS19_CBICA_AAB_1.h5', 'brats19_cbica_aab_1' -> 'BraTS19_CBICA_AAB_1'."""
    s = os.path.basename(raw.strip().rstrip("/"))
    for suffix in (".h5", ".nii.gz", ".nii"):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
    if not re.fullmatch(r"(?i)brats19_[a-z0-9]+_[a-z0-9]+_\d+", s):
        raise ConversionError(f"cannot read a BraTS 2019 subject ID from {raw!r} (expected e.g. BraTS19_CBICA_AAB_1)")
    return "BraTS19_" + s[len("BraTS19_"):].upper()


def brats_split(name: str) -> Split:
    if name != "urpc_brats":
        raise ConversionError(f"unknown BraTS2019 split {name!r}; choose one of: urpc_brats, custom")
    load = lambda f: [normalise_brats_id(i) for i in load_list("BraTS2019", f)]  # noqa: E731
    return Split(name, load("ssl4mis_train.txt"), load("ssl4mis_test.txt"), validation=load("ssl4mis_val.txt"),
                 default_num_labeled=25,
                 description="SSL4MIS/URPC lists: train 250 / val 25 / test 60; labeled = first 25 or 50 of train")


BRATS_SPLITS = ("urpc_brats",)


# --------------------------------------------------------------------------------------------------- ACDC
#: --num-labeled values (patients) of the papers' hard-coded patient -> slice-count map
ACDC_PATIENT_COUNTS = (1, 3, 7, 14, 21, 28, 35, 70)


def normalise_acdc_id(raw: str) -> str:
    """A volume: 'patient099_frame01', 'acdc_patient099_frame01', 'patient099_frame01.h5' -> 'patient099_frame01'."""
    s = os.path.basename(raw.strip().rstrip("/"))
    m = re.search(r"patient(\d{1,3})_frame(\d{2})", s)
    if m is None:
        raise ConversionError(f"cannot read an ACDC volume ID from {raw!r} (expected patientXXX_frame01 or _frame02)")
    return f"patient{int(m.group(1)):03d}_frame{m.group(2)}"


def acdc_patient(volume_id: str) -> str:
    return volume_id.split("_")[0]


def acdc_first_patients(train: Sequence[str], n: int) -> List[str]:
    """The volumes of the first ``n`` patients of the train list, in list order (both frames of each)."""
    patients: List[str] = []
    for v in train:
        if acdc_patient(v) not in patients:
            patients.append(acdc_patient(v))
    chosen = set(patients[:n])
    return [v for v in train if acdc_patient(v) in chosen]


def acdc_split(name: str) -> Split:
    """SSL4MIS lists (= CML = BCP): 70 / 10 / 20 patients, two frames each. Labeled = first N *patients*."""
    if name != "ssl4mis_acdc":
        raise ConversionError(f"unknown ACDC split {name!r}; choose one of: ssl4mis_acdc, custom")
    load = lambda f: [normalise_acdc_id(i) for i in load_list("ACDC", f)]  # noqa: E731
    train = load("ssl4mis_train.list")
    lists = {n: (acdc_first_patients(train, n), f"first_patients:{n}") for n in ACDC_PATIENT_COUNTS}
    return Split(name, train, load("ssl4mis_test.list"), validation=load("ssl4mis_val.list"), default_num_labeled=7,
                 labeled_lists=lists,
                 description="SSL4MIS lists: 140 / 20 / 40 volumes (70 / 10 / 20 patients); labeled = first N patients")


ACDC_SPLITS = ("ssl4mis_acdc",)
