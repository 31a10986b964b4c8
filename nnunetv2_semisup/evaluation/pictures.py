"""Pictures to look at instead of numbers: one PNG per case with image slices through the structures and each
label map's classes outlined (``nnUNetv2_semisup_evaluate --png``, M&N's pseudo-label rounds).

Layout: one row per foreground class present (at most ``max_rows``), showing the slice along the first array axis
(axial for nnU-Net's usual z, y, x arrays) where that class has the most voxels; one panel per label map given
(e.g. reference | prediction; a ``None`` map shows the plain image). Each class is outlined in its colour (tab10:
class 1 blue, 2 orange, 3 green, ...) on the grey image (1st–99th percentile window). The PNG holds exactly these
pixels, scaled up by an integer factor so a panel is at least ``min_panel`` pixels wide (nearest neighbour), with
white separators — no interpolation, so an outline pixel sits exactly on the boundary voxel it marks.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

SEPARATOR = 2  # white pixels between panels and rows (before scaling)


def class_color(c: int) -> np.ndarray:
    """RGB (uint8) of class ``c`` ≥ 1: matplotlib's tab10 cycle."""
    from matplotlib import colormaps
    return (np.asarray(colormaps["tab10"]((int(c) - 1) % 10)[:3]) * 255).round().astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (or on the slice border)."""
    mask = mask.astype(bool)
    inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0)
    return mask & ~inner


def pick_slices(label_maps: Sequence[Optional[np.ndarray]], max_rows: int = 4) -> List[Tuple[Optional[int], int]]:
    """[(class, slice index)] for each foreground class present in any map (the slice with most voxels of it, over
    all maps); [(None, middle slice)] when nothing is labelled."""
    maps = [m for m in label_maps if m is not None]
    depth = maps[0].shape[0] if maps else 0
    classes = sorted({int(c) for m in maps for c in np.unique(m) if c > 0})
    rows = []
    for c in classes[:max_rows]:
        counts = sum(np.count_nonzero(m == c, axis=(1, 2)) for m in maps)
        rows.append((c, int(np.argmax(counts))))
    return rows or [(None, depth // 2)]


def _grey(image_slice: Optional[np.ndarray], shape, window) -> np.ndarray:
    if image_slice is None:
        return np.zeros(shape + (3,), np.uint8)
    lo, hi = window
    g = np.clip((image_slice.astype(np.float64) - lo) / max(hi - lo, 1e-8), 0, 1)
    return np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def render(image: Optional[np.ndarray], label_maps: Sequence[Optional[np.ndarray]], max_rows: int = 4,
           min_panel: int = 192) -> np.ndarray:
    """The RGB picture (uint8, H × W × 3) of a 3D case: ``image`` and every label map are (z, y, x) arrays of one
    grid (``image`` may be None: black background)."""
    ref = next((m for m in label_maps if m is not None), image)
    if ref is None:
        raise ValueError("render needs an image or at least one label map")
    shape = tuple(ref.shape[1:])
    window = (0.0, 1.0)
    if image is not None:
        finite = image[np.isfinite(image)]
        window = tuple(np.percentile(finite, (1, 99))) if finite.size else window
    rows = []
    for _, z in pick_slices(label_maps, max_rows):
        panels = []
        for m in label_maps:
            rgb = _grey(None if image is None else image[z], shape, window)
            if m is not None:
                for c in sorted(int(v) for v in np.unique(m[z]) if v > 0):
                    rgb[outline(m[z] == c)] = class_color(c)
            panels.append(rgb)
        row = panels[0]
        for p in panels[1:]:
            row = np.concatenate((row, np.full((shape[0], SEPARATOR, 3), 255, np.uint8), p), axis=1)
        rows.append(row)
    out = rows[0]
    for r in rows[1:]:
        out = np.concatenate((out, np.full((SEPARATOR, out.shape[1], 3), 255, np.uint8), r), axis=0)
    k = max(1, int(np.ceil(min_panel / max(shape))))
    return np.repeat(np.repeat(out, k, axis=0), k, axis=1)


def write_png(filename: str, image: Optional[np.ndarray], label_maps: Sequence[Optional[np.ndarray]],
              max_rows: int = 4, min_panel: int = 192) -> str:
    """Write ``render(...)`` to ``filename`` (a PNG of exactly those pixels)."""
    import os

    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt
    os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
    plt.imsave(filename, render(image, label_maps, max_rows, min_panel))
    return filename


def select_cases(per_case_dice: Dict[str, float], which: str = "all", n: int = 5) -> List[str]:
    """Cases to draw: ``all`` (sorted by name), or the ``worst``/``best`` ``n`` by mean foreground Dice (NaN last)."""
    if which == "all":
        return sorted(per_case_dice)
    if which not in ("worst", "best"):
        raise ValueError(f"which must be all, worst or best, got {which!r}")
    finite = {c: d for c, d in per_case_dice.items() if np.isfinite(d)}
    order = sorted(finite, key=lambda c: (finite[c], c), reverse=which == "best")
    return order[:n]
