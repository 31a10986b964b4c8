"""Evaluation settings: modes, empty-mask policies and paper presets (docs/evaluation.md §3, §4).

One job: turn the user's choice of ``mode`` / ``preset`` / ``empty_policy`` / ``lcc`` into one consistent,
validated :class:`EvalSettings`, so that the metric code never has to guess and every output can state exactly
which convention produced it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

MODES = ("mm", "paper")

#: docs/evaluation.md §4. Row semantics are implemented in :func:`nnunetv2_semisup.evaluation.metrics.empty_mask_values`.
EMPTY_POLICIES = ("penalty", "nan", "zeros", "dhc", "raise")

#: Policies allowed in mm mode (docs/evaluation.md §3: "penalty (default) or nan").
MM_POLICIES = ("penalty", "nan")

#: docs/evaluation.md §3 "Paper presets": preset -> (empty policy, LCC on/off, what it reproduces).
PRESETS = {
    "uamt": ("zeros", False, "MC-Net / SS-Net / UA-MT-style test scripts (LCC off)"),
    "uamt_lcc": ("zeros", True, "BCP / CML test scripts (largest connected component on)"),
    "dhc": ("dhc", False, "DHC / GenericSSL (Synapse, AMOS) and SKCDF evaluation"),
    "medpy": ("raise", False, "plain medpy calls (e.g. the M&N test script)"),
}

#: Default policy of paper mode when no preset is given: the UA-MT convention used by most LA / Pancreas tables
#: (equivalent to ``--preset uamt``; the summary then records ``"preset": null``).
PAPER_DEFAULT_POLICY = "zeros"


class SettingsError(ValueError):
    """Inconsistent combination of mode, preset, empty policy and LCC."""


@dataclass(frozen=True)
class EvalSettings:
    """A validated evaluation convention (docs/evaluation.md §3).

    Attributes
    ----------
    mode: ``"mm"`` (physical units, symmetric definitions) or ``"paper"`` (voxel units, medpy conventions).
    preset: paper preset name or ``None``.
    empty_policy: one of :data:`EMPTY_POLICIES`.
    lcc: keep only the largest 26-connected component of each predicted label (paper mode only).
    include_hd: also report the (100th percentile) Hausdorff distance ``hd``.
    """

    mode: str = "mm"
    preset: Optional[str] = None
    empty_policy: str = "penalty"
    lcc: bool = False
    include_hd: bool = False

    @property
    def units(self) -> str:
        return "mm" if self.mode == "mm" else "voxel"

    @property
    def dist_key(self) -> str:
        """Name of the average surface distance column: ``assd`` (mm, symmetric) or ``asd`` (paper, directed)."""
        return "assd" if self.mode == "mm" else "asd"

    @property
    def hd95_definition(self) -> str:
        return "max_directed_p95" if self.mode == "mm" else "pooled_p95"

    @property
    def asd_definition(self) -> str:
        return "assd_pooled" if self.mode == "mm" else "directed_pred_to_ref"

    @property
    def metric_keys(self) -> tuple:
        keys = ("dice", "jaccard", "hd95", self.dist_key)
        return keys + ("hd",) if self.include_hd else keys


def resolve_settings(mode: Optional[str] = None, preset: Optional[str] = None, empty_policy: Optional[str] = None,
                     lcc: Optional[bool] = None, include_hd: bool = False) -> EvalSettings:
    """Validate and complete a user's choice (docs/evaluation.md §3, §4).

    - A preset implies paper mode and fixes the empty policy and LCC; giving a different ``empty_policy`` or
      ``lcc`` together with a preset is an error (the numbers would no longer reproduce the preset's scripts).
    - mm mode (the default) accepts the ``penalty`` (default) and ``nan`` policies and no LCC.
    - paper mode without a preset defaults to the ``zeros`` policy and LCC off (= the ``uamt`` convention); any
      policy may be chosen explicitly.
    ``None`` means "not given".
    """
    if mode is not None and mode not in MODES:
        raise SettingsError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if empty_policy is not None and empty_policy not in EMPTY_POLICIES:
        raise SettingsError(f"unknown empty-mask policy {empty_policy!r}; expected one of {', '.join(EMPTY_POLICIES)}")
    if preset is not None:
        if preset not in PRESETS:
            raise SettingsError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
        if mode == "mm":
            raise SettingsError(f"preset {preset!r} is a paper-mode preset (docs/evaluation.md §3); drop --mode mm "
                                f"or use --mode paper")
        p_policy, p_lcc, _ = PRESETS[preset]
        if empty_policy is not None and empty_policy != p_policy:
            raise SettingsError(f"preset {preset!r} uses the empty-mask policy {p_policy!r}; "
                                f"--empty-policy {empty_policy} contradicts it (drop one of the two)")
        if lcc is not None and bool(lcc) != p_lcc:
            hint = "use --preset uamt_lcc" if preset == "uamt" else "drop --lcc"
            raise SettingsError(f"preset {preset!r} has LCC {'on' if p_lcc else 'off'}; --lcc contradicts it ({hint})")
        return EvalSettings("paper", preset, p_policy, p_lcc, include_hd)
    mode = mode or "mm"
    if mode == "mm":
        policy = empty_policy or "penalty"
        if policy not in MM_POLICIES:
            raise SettingsError(f"empty-mask policy {policy!r} reproduces a paper script and is only available in "
                                f"paper mode; mm mode accepts {' or '.join(MM_POLICIES)} (docs/evaluation.md §3)")
        if lcc:
            raise SettingsError("--lcc is a paper-mode post-processing (docs/evaluation.md §3); mm mode evaluates the "
                                "prediction as it is. Use --mode paper --lcc or --preset uamt_lcc")
        return EvalSettings("mm", None, policy, False, include_hd)
    return EvalSettings("paper", None, empty_policy or PAPER_DEFAULT_POLICY, bool(lcc), include_hd)
