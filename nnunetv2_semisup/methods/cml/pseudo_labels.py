"""CML's hard pseudo-labels (docs/cml.md): one subnet's logits → labels cleaned by the
largest-connected-component filter (the paper's "NMS").

C = 2: foreground where p₁ ≥ threshold, else argmax; then, per patch and per foreground class, only its largest
full-connectivity component is kept (26-neighbourhood in 3D, 8 in 2D), ties → the lowest component index (raster
order); removed voxels become background. Runs on CPU with connected-components-3d.
"""
from typing import Tuple

import cc3d
import numpy as np
import torch


def largest_component_per_class(seg: np.ndarray) -> np.ndarray:
    """Keep, for every foreground class of one label map (2D or 3D), only its largest full-connectivity component.

    Ties keep the lowest component index (raster order of cc3d's labelling); removed voxels become 0; other
    classes' voxels are untouched. Background (0) is never filtered.
    """
    seg = np.ascontiguousarray(seg)
    if seg.ndim not in (2, 3):
        raise ValueError(f"largest_component_per_class expects a 2D or 3D label map, got shape {seg.shape}")
    if not seg.any():
        return seg.copy()
    connectivity = 26 if seg.ndim == 3 else 8
    # multi-label mode: voxels of different classes are never connected, so this labels each class separately
    components = cc3d.connected_components(seg.astype(np.uint16, copy=False), connectivity=connectivity)
    flat_comp = components.ravel()
    n = int(flat_comp.max())
    sizes = np.bincount(flat_comp, minlength=n + 1)
    comp_class = np.zeros(n + 1, dtype=np.int64)
    comp_class[flat_comp] = seg.ravel()
    keep = np.zeros(n + 1, dtype=bool)
    for c in np.unique(comp_class[1:]):
        ids = np.flatnonzero(comp_class == c)
        ids = ids[ids > 0]
        keep[ids[np.argmax(sizes[ids])]] = True  # argmax → first (lowest index) among equal sizes
    return np.where(keep[components], seg, 0).astype(seg.dtype, copy=False)


@torch.no_grad()
def cml_pseudo_labels(logits: torch.Tensor, lcc: bool = True, binary_threshold: float = 0.5
                      ) -> Tuple[torch.Tensor, float]:
    """Hard pseudo-labels (B, ...) long of full-resolution logits (B, C, ...) and the fraction of foreground voxels
    the LCC filter removed (0 when there was no foreground or ``lcc`` is off). No gradient."""
    logits = logits.detach().float()
    if logits.shape[1] == 2:
        hard = (torch.softmax(logits, 1)[:, 1] >= binary_threshold).long()
    else:
        hard = logits.argmax(1)
    if not lcc:
        return hard, 0.0
    seg = hard.cpu().numpy().astype(np.uint16)
    before = int(np.count_nonzero(seg))
    filtered = np.stack([largest_component_per_class(s) for s in seg])
    removed = before - int(np.count_nonzero(filtered))
    return torch.from_numpy(filtered.astype(np.int64)).to(logits.device), (removed / before if before else 0.0)
