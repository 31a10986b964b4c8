"""Leak guard: an unlabeled scan whose voxels equal a test or labeled scan's is refused.

Name clashes between ``imagesUnlabeled`` and ``imagesTr``/``imagesTs`` are caught by the discovery; a *renamed copy*
is not, and a test scan in the unlabeled pool makes every test number optimistic (the trainers learn from it). So
the voxels are compared: a digest of channel 0's values (as float32, with the shape), the same for any file format
or storage type that holds the same numbers. Using the test scans on purpose is the dataset's documented
``transductive`` flag, which exempts ``imagesTs`` here.
"""
import hashlib
import os
import re
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

LEAK_HINT = ("Remove the copy from the unlabeled scans (a test scan must never train a model; a labeled scan is "
             "already used with its label). To use the test scans as unlabeled data on purpose, convert with "
             "--transductive (documented in the README).")


def voxel_digest(array) -> str:
    """Digest of an image's voxel values and shape (storage type ignored: int16 and float32 copies match)."""
    a = np.ascontiguousarray(np.asarray(array), dtype=np.float32)
    h = hashlib.sha1(repr(tuple(a.shape)).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def channel0_files(folder: str, file_ending: str) -> Dict[str, str]:
    """``{case: channel-0 file}`` of an nnU-Net image folder (imagesTr / imagesTs naming)."""
    if not os.path.isdir(folder):
        return {}
    pattern = re.compile(r"(.+)_0000" + re.escape(file_ending) + r"$")
    return {m.group(1): os.path.join(folder, f) for f in sorted(os.listdir(folder)) if (m := pattern.match(f))}


def reference_digests(raw_dataset_folder: str, file_ending: str, transductive: bool,
                      read_array: Callable[[str], np.ndarray]) -> Dict[str, str]:
    """``{digest: "imagesTs/<case>" or "imagesTr/<case>"}`` of the scans an unlabeled scan must not copy."""
    out = {}
    subs = ("imagesTr",) if transductive else ("imagesTr", "imagesTs")
    for sub in subs:
        for case, f in channel0_files(os.path.join(raw_dataset_folder, sub), file_ending).items():
            try:
                out.setdefault(voxel_digest(read_array(f)), f"{sub}/{case}")
            except Exception:  # noqa: BLE001 - a broken labeled/test file is nnU-Net's check to report, not ours
                continue
    return out


def leak_problem(case: str, path: str, digest: str, references: Dict[str, str]) -> Optional[str]:
    """One line if the unlabeled case copies a reference scan, else None."""
    found = references.get(digest)
    if found is None:
        return None
    return f"unlabeled case '{case}' ({path}) has the same voxels as {found}"


def find_leaks(cases: Iterable[Tuple[str, str, np.ndarray]], references: Dict[str, str]) -> List[str]:
    """Problems for ``(case, path, channel-0 array)`` items that copy a reference scan."""
    out = []
    for case, path, array in cases:
        p = leak_problem(case, path, voxel_digest(array), references)
        if p:
            out.append(p)
    return out


# ------------------------------------------------------------------------------------------------ orientation
def orientation_code(path: str) -> Optional[str]:
    """Three-letter orientation (e.g. 'LPS') from the file's header, or None where it cannot be read (non-3D, a
    format SimpleITK does not read)."""
    import SimpleITK as sitk
    try:
        r = sitk.ImageFileReader()
        r.SetFileName(path)
        r.ReadImageInformation()
        if r.GetDimension() != 3:
            return None
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(r.GetDirection())
    except RuntimeError:
        return None


def orientation_warning(labeled_files: Iterable[str], unlabeled: Dict[str, str], show: int = 10) -> Optional[str]:
    """A warning (not an error: stock nnU-Net uses every scan as stored) when unlabeled scans are stored in another
    orientation than the labeled cases' majority, e.g. flipped or axis-swapped exports."""
    from collections import Counter
    codes = Counter(c for c in (orientation_code(f) for f in labeled_files) if c)
    if not codes:
        return None
    majority, _ = codes.most_common(1)[0]
    odd = {case: code for case, f in unlabeled.items() if (code := orientation_code(f)) and code != majority}
    if not odd:
        return None
    listed = ", ".join(f"{c} ({o})" for c, o in list(sorted(odd.items()))[:show])
    return (f"WARNING: {len(odd)} unlabeled scan(s) are stored in another orientation than the labeled cases' "
            f"{majority}: {listed}{' ...' if len(odd) > show else ''}. nnU-Net uses every scan as stored (it "
            f"resamples by spacing, not orientation), so a flipped or axis-swapped export teaches a flipped anatomy; "
            f"re-export those scans in {majority} if that is what they are.")
