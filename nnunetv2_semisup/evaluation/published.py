"""Published result rows for ``--compare-paper DATASET/SETTING`` (docs/evaluation.md, "--compare-paper").

Values are copied verbatim from the papers' tables. Dice/Jaccard in %, distances in
voxels of each paper's evaluation grid; which convention each table uses is docs/evaluation.md §7 and is printed with
every table. Rows marked ``quoted`` were not measured under the citing paper's own protocol.

Main tables are keyed ``DATASET/SETTING`` (``LA/8``); the papers' ablation tables are keyed
``DATASET/SETTING/ablation`` (``LA/8/ablation``: M&N Table 4, CML Table 4; ``Synapse/20/ablation``: SKCDF Tables
3-5; ``ACDC/7/ablation``: CML Table 4's ACDC columns). Ablation rows carry the port's trainer variant that re-runs them (docs/<method>.md and
``methods/<method>/variants.py``), so a variant run can be put beside its row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

SYNAPSE_CLASSES = ("Sp", "RK", "LK", "Ga", "Es", "Li", "St", "Ao", "IVC", "PSV", "Pa", "RAG", "LAG")
AMOS_CLASSES = ("Sp", "RK", "LK", "Ga", "Es", "Li", "St", "Ao", "IVC", "Pa", "RAG", "LAG", "Du", "Bl", "P/U")


@dataclass(frozen=True)
class PublishedTable:
    """One published table (or the part of it for one setting).

    ``columns`` are ``dice``, ``jaccard``, ``hd95``, ``asd`` (foreground means) followed, for multi-organ
    tables, by per-class Dice columns (``n_class_columns`` of them) and then by any further published columns
    that a run of this package does not fill (e.g. CML Table 4's ACDC columns). ``rows`` are (method, values as
    printed in the paper, note). ``variants``, if given, holds one entry per row: the trainer class of this
    package that re-runs the row (``—`` if none).
    """

    source: str
    convention: str
    preset: Optional[str]
    columns: Tuple[str, ...]
    rows: Tuple[Tuple[str, Tuple[str, ...], str], ...]
    n_class_columns: int = 0
    variants: Tuple[str, ...] = ()


_MN_CONV = ("medpy Dice/Jaccard %, HD95 pooled P95 and ASD directed pred->gt in voxels; M&N's own rows: 3D U-Net, "
            "last checkpoint, no post-processing, {grid}; baseline rows quoted from the cited papers (mostly the "
            "UA-MT protocol: 20 GT-cropped LA volumes, often LCC, best-on-test)")
_MN_LA = _MN_CONV.format(grid="raw LA challenge Testing Set at native 0.625 mm (voxels x 0.625 = mm)")
_MN_PANC = _MN_CONV.format(grid="raw CT at original resolution, fold-1 test fraction")
_CML_CONV = ("medpy Dice %, HD95 pooled P95 and ASD directed pred->gt in voxels; UA-MT LA h5 (GT-cropped, 0.625 mm), "
             "20 test volumes, LCC on, empty prediction -> zeros, best Dice on the test list; no Jaccard reported")
_CML_BRATS = ("medpy Dice %, HD95 pooled P95 and ASD directed in voxels; SSL4MIS/URPC BraTS2019 h5 (FLAIR, "
              "brain-cropped, 1 mm), whole tumour; empty-mask handling and LCC not verified")
_SKCDF_CONV = ("medpy Dice x100 per class and mean over classes, ASD directed pred->gt in voxels of the resized "
               "80x160x160 grid, DHC empty-mask policy, no post-processing, best epoch on the eval split; "
               "{runs}; HD95 and Jaccard not reported")

OWN, QUOTED = "own", "quoted"
METRICS = ("dice", "jaccard", "hd95", "asd")

_MN_T1 = PublishedTable("M&N Table 1 (LA, 8 labeled)", _MN_LA, "medpy", METRICS, (
    ("3D UNet (labeled only)", ("88.26", "79.89", "11.19", "3.29"), OWN),
    ("SegFormer from scratch", ("83.05", "73.25", "15.79", "5.40"), OWN),
    ("SegFormer pretrained (ADE20K)", ("88.61", "79.87", "10.49", "3.35"), OWN),
    ("SASSNet", ("87.32", "77.72", "9.62", "2.55"), QUOTED),
    ("MC-Net", ("87.71", "78.31", "9.36", "2.18"), QUOTED),
    ("SS-Net", ("88.55", "79.62", "7.49", "1.90"), QUOTED),
    ("MC-Net+", ("88.96", "80.25", "7.93", "1.86"), QUOTED),
    ("CAML", ("89.62", "81.28", "8.76", "2.02"), QUOTED),
    ("DK-UXNet", ("90.41", "82.69", "7.32", "1.71"), QUOTED),
    ("UA-MT", ("84.25", "73.48", "13.84", "3.36"), QUOTED),
    ("LG-ER-MT", ("85.54", "75.12", "13.29", "3.77"), QUOTED),
    ("DUWM", ("85.91", "75.75", "12.67", "3.31"), QUOTED),
    ("AD-MT", ("90.55", "82.79", "5.81", "1.70"), QUOTED),
    ("BCP", ("89.62", "81.31", "6.81", "1.76"), QUOTED),
    ("Co-BioNet", ("89.20", "80.68", "6.44", "1.90"), QUOTED),
    ("GraphCL", ("90.24", "82.31", "6.42", "1.71"), QUOTED),
    ("M&N", ("91.56", "84.47", "4.59", "1.40"), OWN),
))

_MN_T2 = PublishedTable("M&N Table 2 (LA, 4 labeled)", _MN_LA, "medpy", METRICS, (
    ("3D UNet (labeled only)", ("82.01", "72.42", "29.95", "9.91"), OWN),
    ("SegFormer from scratch", ("71.01", "58.40", "14.34", "7.07"), OWN),
    ("SegFormer pretrained (ADE20K)", ("84.23", "74.49", "8.24", "3.57"), OWN),
    ("SS-Net", ("86.33", "76.15", "9.97", "2.31"), QUOTED),
    ("CAML", ("87.34", "77.65", "9.76", "2.49"), QUOTED),
    ("DK-UXNet", ("85.96", "75.91", "11.72", "2.64"), QUOTED),
    ("AD-MT", ("89.63", "81.28", "6.56", "1.85"), QUOTED),
    ("BCP", ("88.02", "78.72", "7.90", "2.15"), QUOTED),
    ("GraphCL", ("88.80", "80.00", "7.16", "2.10"), QUOTED),
    ("M&N", ("90.47", "82.66", "4.72", "1.59"), OWN),
))

_MN_T3 = PublishedTable("M&N Table 3 (Pancreas-CT, 6 labeled)", _MN_PANC, "medpy",
                        METRICS, (
    ("3D UNet (labeled only)", ("59.53", "44.17", "18.52", "1.79"), OWN),
    ("SegFormer from scratch", ("43.76", "28.32", "19.67", "6.86"), OWN),
    ("SegFormer pretrained (ADE20K)", ("68.57", "53.34", "16.39", "4.77"), OWN),
    ("MC-Net", ("68.94", "54.74", "16.28", "3.16"), QUOTED),
    ("MC-Net+", ("74.01", "60.02", "12.59", "3.34"), QUOTED),
    ("AD-MT", ("80.21", "67.51", "7.18", "1.66"), QUOTED),
    ("Co-BioNet", ("77.89", "64.79", "8.81", "1.39"), QUOTED),
    ("M&N", ("81.67", "69.53", "6.56", "1.67"), OWN),
))

_NA = "—"
_CML_LA_FULL = ("V-Net (80 labeled, all)", ("91.47", _NA, "5.48", "1.51"), QUOTED)

_CML_T1_4 = PublishedTable("CML Table 1 (LA, 4 labeled / 76 unlabeled)", _CML_CONV, "uamt_lcc",
                           METRICS, (
    ("V-Net (4 labeled only)", ("52.55", _NA, "47.05", "9.87"), QUOTED),
    _CML_LA_FULL,
    ("UA-MT", ("82.26", _NA, "13.71", "3.82"), QUOTED),
    ("SASSNet", ("81.60", _NA, "16.16", "3.58"), QUOTED),
    ("DTC", ("81.25", _NA, "14.90", "3.99"), QUOTED),
    ("URPC", ("82.48", _NA, "14.65", "3.65"), QUOTED),
    ("MC-Net", ("83.59", _NA, "14.07", "2.70"), QUOTED),
    ("SS-Net", ("86.33", _NA, "9.97", "2.31"), QUOTED),
    ("MCF", ("86.52", _NA, "9.12", "2.40"), QUOTED),
    ("CML", ("87.63", _NA, "8.92", "2.23"), OWN),
))

_CML_T1_8 = PublishedTable("CML Table 1 (LA, 8 labeled / 72 unlabeled)", _CML_CONV, "uamt_lcc",
                           METRICS, (
    ("V-Net (8 labeled only)", ("82.74", _NA, "13.35", "3.26"), QUOTED),
    _CML_LA_FULL,
    ("UA-MT", ("87.79", _NA, "8.68", "2.12"), QUOTED),
    ("SASSNet", ("87.54", _NA, "9.84", "2.59"), QUOTED),
    ("DTC", ("87.51", _NA, "8.23", "2.36"), QUOTED),
    ("URPC", ("86.92", _NA, "11.13", "2.28"), QUOTED),
    ("MC-Net", ("87.62", _NA, "10.03", "1.82"), QUOTED),
    ("SS-Net", ("88.55", _NA, "7.49", "1.90"), QUOTED),
    ("MCF", ("88.05", _NA, "8.32", "2.08"), QUOTED),
    ("CML", ("90.36", _NA, "6.06", "1.68"), OWN),
))

_CML_T3_25 = PublishedTable("CML Table 3 (BraTS2019, 25 labeled / 225 unlabeled)", _CML_BRATS, "uamt",
                            METRICS, (
    ("V-Net (25 labeled only)", ("78.32", _NA, "22.29", "7.36"), QUOTED),
    ("V-Net (250 labeled, all)", ("88.23", _NA, "7.21", "1.53"), QUOTED),
    ("MT", ("81.70", _NA, "13.28", "3.56"), QUOTED),
    ("DAN", ("82.50", _NA, "15.11", "3.79"), QUOTED),
    ("UA-MT", ("80.93", _NA, "17.71", "5.43"), QUOTED),
    ("ICT", ("82.70", _NA, "13.43", "4.07"), QUOTED),
    ("EM", ("82.35", _NA, "14.70", "3.68"), QUOTED),
    ("URPC", ("84.16", _NA, "11.01", "2.63"), QUOTED),
    ("MCF", ("83.67", _NA, "12.58", "3.28"), QUOTED),
    ("CML", ("85.26", _NA, "9.08", "1.83"), OWN),
))

_CML_T3_50 = PublishedTable("CML Table 3 (BraTS2019, 50 labeled / 200 unlabeled)", _CML_BRATS, "uamt",
                            METRICS, (
    ("V-Net (50 labeled only)", ("80.18", _NA, "20.57", "6.09"), QUOTED),
    ("V-Net (250 labeled, all)", ("88.23", _NA, "7.21", "1.53"), QUOTED),
    ("MT", ("85.03", _NA, "7.80", "1.89"), QUOTED),
    ("DAN", ("84.63", _NA, "8.96", "2.34"), QUOTED),
    ("UA-MT", ("85.05", _NA, "12.31", "3.03"), QUOTED),
    ("ICT", ("84.67", _NA, "8.97", "2.39"), QUOTED),
    ("EM", ("84.82", _NA, "12.37", "3.21"), QUOTED),
    ("URPC", ("85.49", _NA, "8.47", "2.04"), QUOTED),
    ("MCF", ("84.85", _NA, "11.24", "2.29"), QUOTED),
    ("CML", ("86.63", _NA, "7.83", "1.45"), OWN),
))

_CML_ACDC = ("medpy Dice %, HD95 pooled P95 and ASD directed in voxels of the anisotropic native grid (no spacing); "
             "per class (RV, Myo, LV) on each 3D volume of 2D slice predictions (slices resized to 256 x 256), mean over "
             "the 40 test volumes, then over the classes; class missing in the prediction -> zeros; no LCC; best Dice "
             "on val.list. nnU-Net's 2d configuration resamples instead of resizing")


def _acdc_table(n: int, rows) -> PublishedTable:
    return PublishedTable(f"CML Table 2 (ACDC, {n} labeled patients / {70 - n} unlabeled)", _CML_ACDC, "uamt", METRICS,
                          tuple((m, (d, _NA, h, a), note) for m, d, h, a, note in rows))


_CML_ACDC_FULL = ("U-Net (70 patients labeled, all)", "91.44", "4.30", "0.99", QUOTED)
_CML_T2_3 = _acdc_table(3, (
    ("U-Net (3 patients labeled only)", "47.83", "31.16", "12.62", QUOTED), _CML_ACDC_FULL,
    ("UA-MT", "46.04", "20.08", "7.75", QUOTED), ("SASSNet", "57.77", "20.05", "6.06", QUOTED),
    ("DTC", "56.90", "23.36", "7.39", QUOTED), ("URPC", "55.87", "13.60", "3.74", QUOTED),
    ("MC-Net", "62.85", "7.62", "2.33", QUOTED), ("SS-Net", "65.82", "6.67", "2.28", QUOTED),
    ("MCF", "82.37", "5.74", "1.59", QUOTED), ("CML", "88.53", "1.87", "0.57", OWN)))
_CML_T2_7 = _acdc_table(7, (
    ("U-Net (7 patients labeled only)", "79.41", "9.35", "2.70", QUOTED), _CML_ACDC_FULL,
    ("UA-MT", "81.65", "6.88", "2.02", QUOTED), ("SASSNet", "84.50", "5.42", "1.86", QUOTED),
    ("DTC", "84.29", "12.81", "4.01", QUOTED), ("URPC", "83.10", "4.84", "1.53", QUOTED),
    ("MC-Net", "86.44", "5.50", "1.84", QUOTED), ("SS-Net", "86.78", "6.07", "1.40", QUOTED),
    ("MCF", "87.67", "3.89", "1.14", QUOTED), ("CML", "89.42", "1.42", "0.52", OWN)))

_SYN = METRICS + SYNAPSE_CLASSES


def _dice_asd(method, dice, asd, classes="", note=QUOTED):
    """A row of a table that publishes Dice and ASD only (plus per-class Dice, space-separated, if given)."""
    return method, (dice, _NA, _NA, asd) + tuple(classes.split()), note


_syn = _amos = _dice_asd  # short names keep the per-class rows of the Synapse and AMOS tables on one line


_SKCDF_T1 = PublishedTable(
    "SKCDF Table 1 (Synapse, 20 % labeled = 4 cases)",
    _SKCDF_CONV.format(runs="mean ± std over 3 seeds (0, 1, 666)"), "dhc", _SYN, (
        _syn("VNet (fully supervised)", "62.09 ± 1.2", "10.28 ± 3.9",
             "84.6 77.2 73.8 73.3 38.2 94.6 68.4 72.1 71.2 58.2 48.5 17.9 29.0"),
        _syn("UA-MT", "20.26 ± 2.2", "71.67 ± 7.4", "48.2 31.7 22.2 0.0 0.0 81.2 29.1 23.3 27.5 0.0 0.0 0.0 0.0"),
        _syn("URPC", "25.68 ± 5.1", "72.74 ± 15.5", "66.7 38.2 56.8 0.0 0.0 85.3 33.9 33.1 14.8 0.0 5.1 0.0 0.0"),
        _syn("CPS", "33.55 ± 3.7", "41.21 ± 9.1", "62.8 55.2 45.4 35.9 0.0 91.1 31.3 41.9 49.2 8.8 14.5 0.0 0.0"),
        _syn("SS-Net", "35.08 ± 2.8", "50.81 ± 6.5", "62.7 67.9 60.9 34.3 0.0 89.9 20.9 61.7 44.8 0.0 8.7 4.2 0.0"),
        _syn("DST", "34.47 ± 1.6", "37.69 ± 2.9", "57.7 57.2 46.4 43.7 0.0 89.0 33.9 43.3 46.9 9.0 21.0 0.0 0.0"),
        _syn("DePL", "36.27 ± 0.9", "36.02 ± 0.8", "62.8 61.0 48.2 54.8 0.0 90.2 36.0 42.5 48.2 10.7 17.0 0.0 0.0"),
        _syn("Adsh", "35.29 ± 0.5", "39.61 ± 4.6", "55.1 59.6 45.8 52.2 0.0 89.4 32.8 47.6 53.0 8.9 14.4 0.0 0.0"),
        _syn("CReST", "38.33 ± 3.4", "22.85 ± 9.0", "62.1 64.7 53.8 43.8 8.1 85.9 27.2 54.4 47.7 14.4 13.0 18.7 4.6"),
        _syn("SimiS", "40.0 ± 0.6", "32.98 ± 0.5", "62.3 69.4 50.7 61.4 0.0 87.0 33.0 59.0 57.2 29.2 11.8 0.0 0.0"),
        _syn("Basak et al.", "33.24 ± 0.6", "43.78 ± 2.5",
             "57.4 53.8 48.5 46.9 0.0 87.8 28.7 42.3 45.4 6.3 15.0 0.0 0.0"),
        _syn("CLD", "41.07 ± 1.2", "32.15 ± 3.3", "62.0 66.0 59.3 61.5 0.0 89.0 31.7 62.8 49.4 28.6 18.5 0.0 0.0"),
        _syn("DHC", "48.61 ± 0.9", "10.71 ± 2.6", "62.8 69.5 59.2 66.0 13.2 85.2 36.9 67.9 61.5 37.0 30.9 31.4 10.6"),
        _syn("GenericSSL", "60.88 ± 0.7", "2.52 ± 0.4",
             "85.2 66.9 67.0 52.7 62.9 89.6 52.1 83.0 74.9 41.8 43.4 44.8 27.2"),
        _syn("SKCDF", "64.27 ± 1.36", "1.45 ± 0.09",
             "79.5 72.1 67.6 59.8 60.7 93.3 61.7 85.4 78.5 41.8 50.9 46.4 37.8", OWN),
    ), n_class_columns=len(SYNAPSE_CLASSES))

_AMOS = METRICS + AMOS_CLASSES


_SKCDF_T2 = PublishedTable(
    "SKCDF Table 2 (AMOS, 5 % labeled = 10 cases)", _SKCDF_CONV.format(runs="one run (seed 0)"), "dhc", _AMOS, (
        _amos("VNet (fully)", "76.50", "2.01", "92.2 92.2 93.3 65.5 70.3 95.3 82.4 91.4 85.0 74.9 58.6 58.1 65.6 64.4 58.3"),
        _amos("UA-MT", "42.16", "15.48", "59.8 64.9 64.0 35.3 34.1 77.7 37.8 61.0 46.0 33.3 26.9 12.3 18.1 29.7 31.6"),
        _amos("URPC", "44.93", "27.44", "67.0 64.2 67.2 36.1 0.0 83.1 45.5 67.4 54.4 46.7 0.0 29.4 35.2 44.5 33.2"),
        _amos("CPS", "41.08", "20.37", "56.1 60.3 59.4 33.3 25.4 73.8 32.4 65.7 52.1 31.1 25.5 6.2 18.4 40.7 35.8"),
        _amos("SS-Net", "33.88", "54.72", "65.4 68.3 69.9 37.8 0.0 75.1 33.2 68.0 56.6 33.5 0.0 0.0 0.0 0.2 0.2"),
        _amos("DST", "41.44", "21.12", "58.9 63.3 63.8 37.7 29.6 74.6 36.1 66.1 49.9 32.8 13.5 5.5 17.6 39.1 33.1"),
        _amos("DePL", "41.97", "20.42", "55.7 62.4 57.7 36.6 31.3 68.4 33.9 65.6 51.9 30.2 23.3 10.2 20.9 43.9 37.7"),
        _amos("Adsh", "40.33", "24.53", "56.0 63.6 57.3 34.7 25.7 73.9 30.7 65.7 51.9 27.1 20.2 0.0 18.6 43.5 35.9"),
        _amos("CReST", "46.55", "14.62", "66.5 64.2 65.4 36.0 32.2 77.8 43.6 68.5 52.9 40.3 24.7 19.5 26.5 43.9 36.4"),
        _amos("SimiS", "47.27", "11.51", "77.4 72.5 68.7 32.1 14.7 86.6 46.3 74.6 54.2 41.6 24.4 17.9 21.9 47.9 28.2"),
        _amos("Basak et al.", "38.73", "31.76",
              "68.8 59.0 54.2 29.0 0.0 83.7 39.3 61.7 52.1 34.6 0.0 0.0 26.8 45.7 26.2"),
        _amos("CLD", "46.10", "15.86", "67.2 68.5 71.4 41.0 21.0 76.1 42.4 69.8 52.1 37.9 24.7 23.4 22.7 38.1 35.2"),
        _amos("DHC", "49.53", "13.89", "68.1 69.6 71.1 42.3 37.0 76.8 43.8 70.8 57.4 43.2 27.0 28.7 29.1 41.4 36.7"),
        _amos("GenericSSL", "50.03", "5.21", "73.1 76.0 76.5 29.1 44.9 82.5 49.0 72.8 61.7 48.5 30.2 19.7 36.4 32.9 18.2"),
        _amos("SKCDF", "53.81", "5.97", "77.1 77.9 71.2 34.1 50.4 88.6 51.6 80.9 58.9 48.8 33.0 30.2 32.2 45.9 26.4",
              OWN),
    ), n_class_columns=len(AMOS_CLASSES))

# ----------------------------------------------------------------------------------------------- ablation tables
_MN_ABL = ("medpy Dice/Jaccard %, HD95 pooled P95 and ASD directed pred->gt in voxels; all rows are M&N's own runs: "
           "LA 8 labeled, last checkpoint, no post-processing, raw LA challenge Testing Set at native 0.625 mm "
           "(voxels x 0.625 = mm); port variants from docs/mn.md §4")

_MN_T4 = PublishedTable("M&N Table 4 (ablations, LA, 8 labeled)", _MN_ABL, "medpy",
                        METRICS, (
    ("ResUNet (ResNet-50, ImageNet) whole + 3D UNet", ("91.11", "83.74", "5.38", "1.41"), OWN),
    ("SegFormer LoRA + SwinUNETR", ("90.67", "83.03", "5.24", "2.16"), OWN),
    ("SegFormer LoRA + 3D UNet, no iterative co-training", ("89.40", "81.32", "6.06", "1.74"), OWN),
    ("SegFormer LoRA + 3D UNet, no LRG", ("87.14", "77.35", "8.43", "2.36"), OWN),
    ("SegFormer decoder fine-tuning + 3D UNet", ("89.49", "81.28", "6.44", "1.75"), OWN),
    ("SegFormer whole fine-tuning + 3D UNet", ("91.39", "84.20", "5.02", "1.38"), OWN),
    ("SegFormer LoRA + 3D UNet (M&N)", ("91.56", "84.47", "4.59", "1.40"), OWN),
), variants=(_NA, _NA, "nnUNetTrainerMN_fixedpseudo", "nnUNetTrainerMN_uniform", "nnUNetTrainerMN_decoder",
             "nnUNetTrainerMN_whole", "nnUNetTrainerMN"))

_CML_ABL = ("LA columns: " + _CML_CONV + "; 10 % labeled = 8 LA volumes. ACDC columns: 2D slices stacked per volume, "
            "medpy mean over RV/Myo/LV, 7 labeled, for reference only here (a 2d-configuration run compares with "
            "--compare-paper ACDC/7/ablation). Port "
            "variants: docs/cml.md §4 (_noDis) and methods/cml/variants.py (_noUnsup, _supOnly)")

_CML_T4 = PublishedTable("CML Table 4 (loss ablation, 10 % labeled)", _CML_ABL, "uamt_lcc",
                         ("dice", "jaccard", "hd95", "asd", "ACDC Dice", "ACDC 95HD", "ACDC ASD"), (
    ("L_sup^l", ("82.74", _NA, "13.35", "3.26", "79.41", "9.35", "2.70"), OWN),
    ("L_sup^l + L_dis", ("83.73", _NA, "18.92", "4.80", "80.27", "7.69", "2.36"), OWN),
    ("L_sup^l + L_sup^u", ("88.16", _NA, "9.83", "2.32", "87.75", "6.35", "1.71"), OWN),
    ("L_sup^l + L_dis + L_sup^u (CML)", ("90.36", _NA, "6.06", "1.68", "89.42", "1.42", "0.52"), OWN),
), variants=("nnUNetTrainerCML_supOnly", "nnUNetTrainerCML_noUnsup", "nnUNetTrainerCML_noDis", "nnUNetTrainerCML"))

_CML_T4_ACDC = PublishedTable(
    "CML Table 4 (loss ablation, ACDC columns, 7 labeled patients)",
    _CML_ACDC + "; port variants (in the 2d configuration): docs/cml.md §4 (_noDis) and methods/cml/variants.py "
    "(_noUnsup, _supOnly)", "uamt", METRICS, tuple(
        (m, (d, _NA, h, a), OWN) for m, d, h, a in (
            ("L_sup^l", "79.41", "9.35", "2.70"), ("L_sup^l + L_dis", "80.27", "7.69", "2.36"),
            ("L_sup^l + L_sup^u", "87.75", "6.35", "1.71"), ("L_sup^l + L_dis + L_sup^u (CML)", "89.42", "1.42", "0.52"))),
    variants=_CML_T4.variants)

_SKCDF_ABL = _SKCDF_CONV.format(runs="mean ± std over 3 seeds (0, 1, 666)")

_SKCDF_T3 = PublishedTable(
    "SKCDF Table 3 (component ablation, Synapse 20 %; DF = decoupled decoders, ABSH = auxiliary balanced heads)",
    _SKCDF_ABL + "; port variants from docs/skcdf.md §4 / Table 3", "dhc", _SYN, (
        _syn("pseudo-label baseline", "44.66 ± 2.5", "33.46 ± 1.99",
             "66.5 62.2 47.7 41.8 0.0 91.6 52.5 81.7 74.0 31.9 30.8 0.0 0.0", OWN),
        _syn("+ DF", "57.4 ± 0.9", "13.0 ± 2.08",
             "74.1 69.3 61.8 61.8 0.0 90.0 60.3 82.7 79.1 41.3 48.4 48.3 29.1", OWN),
        _syn("+ DF + SKCM", "59.17 ± 1.95", "7.78 ± 4.61",
             "76.9 67.2 66.9 49.9 17.9 92.8 63.2 84.4 78.0 40.2 50.1 42.9 38.8", OWN),
        _syn("+ DF + ABSH", "63.57 ± 1.21", "1.26 ± 0.14",
             "79.0 70.7 64.1 59.9 62.0 93.7 64.2 84.5 78.1 39.5 47.1 46.9 36.7", OWN),
        _syn("all (SKCDF)", "64.27 ± 1.36", "1.45 ± 0.09",
             "79.5 72.1 67.6 59.8 60.7 93.3 61.7 85.4 78.5 41.8 50.9 46.4 37.8", OWN),
    ), n_class_columns=len(SYNAPSE_CLASSES),
    variants=(_NA, "nnUNetTrainerSKCDF_DF", "nnUNetTrainerSKCDF_noABSH", "nnUNetTrainerSKCDF_noSKCM",
              "nnUNetTrainerSKCDF"))

_SKCDF_T4 = PublishedTable(
    "SKCDF Table 4 (inference decoder and decoder EMA, Synapse 20 %, DF-only setting)",
    _SKCDF_ABL + "; port variants: the DF-only classes of methods/skcdf/variants.py (docs/skcdf.md §4 names "
    "nnUNetTrainerSKCDF_noEMA, the full model without any transfer, for 'w/o EMA')", "dhc",
    METRICS, (
        _dice_asd("inference decoder labeled, decoder EMA no", "53.71 ± 1.64", "11.39 ± 0.04", note=OWN),
        _dice_asd("inference decoder unlabeled, decoder EMA no", "50.53 ± 1.00", "31.23 ± 0.78", note=OWN),
        _dice_asd("inference decoder labeled, decoder EMA yes", "57.21 ± 0.85", "11.56 ± 0.75", note=OWN),
        _dice_asd("inference decoder unlabeled, decoder EMA yes", "57.40 ± 0.90", "13.00 ± 2.08", note=OWN),
    ), variants=("nnUNetTrainerSKCDF_DF_noEMA_inferL", "nnUNetTrainerSKCDF_DF_noEMA", "nnUNetTrainerSKCDF_DF_inferL",
                 "nnUNetTrainerSKCDF_DF"))

_SKCDF_T5 = PublishedTable(
    "SKCDF Table 5 (transfer order, Synapse 20 %, DF + ABSH setting; D = decoder, H = head)",
    _SKCDF_ABL + "; only the paper's order H -> D -> H is implemented (in the DF + ABSH setting: "
    "nnUNetTrainerSKCDF_noSKCM, same numbers as Table 3 '+ DF + ABSH')", "dhc",
    METRICS, (
        _dice_asd("D", "54.79 ± 1.88", "14.58 ± 4.91", note=OWN),
        _dice_asd("H → D", "62.51 ± 1.01", "1.89 ± 0.76", note=OWN),
        _dice_asd("D → H → H", "60.90 ± 1.46", "2.67 ± 0.64", note=OWN),
        _dice_asd("H → H → D", "62.40 ± 0.67", "1.34 ± 0.12", note=OWN),
        _dice_asd("H → D → H", "63.57 ± 1.21", "1.26 ± 0.14", note=OWN),
    ), variants=(_NA, _NA, _NA, _NA, "nnUNetTrainerSKCDF_noSKCM"))

#: ``--compare-paper`` keys (case-insensitive) -> published tables, in print order.
COMPARISONS: Dict[str, List[PublishedTable]] = {
    "LA/8": [_MN_T1, _CML_T1_8],
    "LA/4": [_MN_T2, _CML_T1_4],
    "Pancreas/6": [_MN_T3],
    "Synapse/20": [_SKCDF_T1],
    "AMOS/5": [_SKCDF_T2],
    "BraTS2019/25": [_CML_T3_25],
    "BraTS2019/50": [_CML_T3_50],
    "ACDC/3": [_CML_T2_3],
    "ACDC/7": [_CML_T2_7],
    "LA/8/ablation": [_MN_T4, _CML_T4],
    "Synapse/20/ablation": [_SKCDF_T3, _SKCDF_T4, _SKCDF_T5],
    "ACDC/7/ablation": [_CML_T4_ACDC],
}


def published_tables(key: str) -> List[PublishedTable]:
    """Tables for ``DATASET/SETTING`` (case-insensitive, e.g. ``la/8``); KeyError lists the valid keys."""
    for k, tables in COMPARISONS.items():
        if k.lower() == key.strip().lower():
            return tables
    raise KeyError(f"unknown --compare-paper setting {key!r}; available: {', '.join(COMPARISONS)}")
