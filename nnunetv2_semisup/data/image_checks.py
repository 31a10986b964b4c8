"""Checks of input scans with nnU-Net's strictness (``nnUNetv2_plan_and_preprocess --verify_dataset_integrity``
refuses NaN in labeled images), applied where our commands read scans that nnU-Net never verifies: the unlabeled
scans (``nnUNetv2_semisup_preprocess``, ``nnUNetv2_semisup_add_unlabeled``, ``nnUNetv2_semisup_convert_own --check``)
and every image a converter writes.

A scan is refused for NaN or ±Inf voxels (nnU-Net's normalisation would spread them over the whole case and the
semi-supervised losses would turn NaN), for having no voxels or one constant value (nothing to learn, and a
z-score normalisation divides by zero), for a non-invertible direction matrix (no valid geometry to resample or
export), and for a channel whose grid (shape, spacing, origin, direction) differs from channel 0's.
"""
from typing import List, Optional, Sequence

import numpy as np

FIX_HINT = ("Fix the file (replace NaN/Inf voxels, e.g. by the image minimum; re-export an empty or constant scan "
            "from its source) or remove the case, then run the command again.")


def array_problems(array: np.ndarray) -> List[str]:
    """What is wrong with the voxel values of one image (empty list: nothing)."""
    array = np.asarray(array)
    if array.size == 0:
        return [f"the image has no voxels (shape {tuple(array.shape)})"]
    problems = []
    finite = None
    if np.issubdtype(array.dtype, np.floating):
        n_nan = int(np.count_nonzero(np.isnan(array)))
        n_inf = int(np.count_nonzero(np.isinf(array)))
        if n_nan:
            problems.append(f"{n_nan} NaN voxel(s) of {array.size}")
        if n_inf:
            problems.append(f"{n_inf} infinite voxel(s) of {array.size}")
        if n_nan or n_inf:
            finite = array[np.isfinite(array)]
    values = array if finite is None else finite
    if values.size and values.min() == values.max():
        problems.append(f"every {'finite ' if finite is not None else ''}voxel has the same value "
                        f"{values.flat[0]!r} (a constant image)")
    return problems


DAMAGED_HINT = "re-export it from its source (or remove the case)"


# what a reader raises on a file it cannot read (SimpleITK: RuntimeError; nibabel/gzip: EOFError, OSError, ...)
READ_ERRORS = (RuntimeError, OSError, EOFError, ValueError)


def damaged_file_message(path: str, error: BaseException) -> str:
    """One line for a file that cannot be read in full: which file, the reader's last word, the fix."""
    detail = (str(error).strip().splitlines() or [""])[-1][:200]
    return f"file {path} is damaged or not an image ({type(error).__name__}{': ' + detail if detail else ''}); " \
           f"{DAMAGED_HINT}"


def nifti_nonfinite_problems(path: str) -> List[str]:
    """Read a NIfTI file in full as stored and count its NaN/Inf voxels.

    SimpleITK's NIfTI reader returns NaN/Inf as 0 and reads a truncated ``.nii.gz`` without complaint (the missing
    slices come back blank), so the array nnU-Net reads can show neither: the file's own voxels are read here (with
    nibabel), and a file that cannot be read to its end is reported as damaged."""
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        return []
    import nibabel
    try:
        data = np.asanyarray(nibabel.load(str(path)).dataobj)
    except Exception as e:  # noqa: BLE001 - EOFError, zlib.error, ImageFileError, OSError...: all mean "damaged"
        return [damaged_file_message(path, e)]
    if not np.issubdtype(data.dtype, np.floating):
        return []
    out = []
    n_nan, n_inf = int(np.count_nonzero(np.isnan(data))), int(np.count_nonzero(np.isinf(data)))
    if n_nan:
        out.append(f"{n_nan} NaN voxel(s) of {data.size} (SimpleITK would silently read them as 0)")
    if n_inf:
        out.append(f"{n_inf} infinite voxel(s) of {data.size}")
    return out


def file_array_problems(path: str, array: np.ndarray) -> List[str]:
    """``array_problems`` of what a reader returned, plus NaN/Inf the reader may have hidden (NIfTI)."""
    hidden = nifti_nonfinite_problems(path)
    seen = array_problems(array)
    if hidden:  # the file's own counts replace the reader's
        seen = [p for p in seen if "NaN" not in p and "infinite" not in p]
    return hidden + seen


def direction_problem(direction: Optional[Sequence[float]]) -> Optional[str]:
    """A direction matrix (flat, row-major, as SimpleITK gives it) that cannot be inverted, or None."""
    if direction is None:
        return None
    d = np.asarray(direction, dtype=float)
    k = int(round(np.sqrt(d.size)))
    if k * k != d.size or k == 0:
        return f"direction {tuple(direction)} is not a square matrix"
    det = float(np.linalg.det(d.reshape(k, k)))
    if not np.isfinite(det) or abs(det) < 1e-6:
        return f"the direction matrix {tuple(round(float(x), 6) for x in d)} is not invertible (determinant {det:.3g})"
    return None


def grid_mismatch(reference: dict, other: dict, rtol: float = 1e-3) -> Optional[str]:
    """Compare two grids ``{"shape", "spacing", "origin", "direction"}`` (missing keys are skipped)."""
    for key in ("shape", "spacing", "origin", "direction"):
        a, b = reference.get(key), other.get(key)
        if a is None or b is None:
            continue
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if a.shape != b.shape or (key == "shape" and not np.array_equal(a, b)) or \
                not np.allclose(a, b, rtol=rtol, atol=rtol):
            return f"{key} {tuple(b.tolist())} differs from channel 0's {tuple(a.tolist())}"
    return None


def sitk_image_problems(image) -> List[str]:
    """``array_problems`` and ``direction_problem`` of a SimpleITK image."""
    import SimpleITK as sitk
    problems = array_problems(sitk.GetArrayViewFromImage(image))
    d = direction_problem(image.GetDirection())
    return problems + ([d] if d else [])


def case_channel_problems(files: Sequence[str], arrays: Sequence[np.ndarray], grids: Sequence[dict]) -> List[str]:
    """Problems of a multi-channel case, each prefixed with its file: values, direction, grid vs channel 0."""
    out = []
    for i, (f, a, g) in enumerate(zip(files, arrays, grids)):
        for p in file_array_problems(f, a) + [p for p in [direction_problem(g.get("direction"))] if p]:
            out.append(f"{f}: {p}")
        if i:
            m = grid_mismatch(grids[0], g)
            if m:
                out.append(f"{f}: channel {i} {m}")
    return out
