"""M&N trainer variants (docs/mn.md): tiny subclasses that change attributes, as nnU-Net's own variants do.

- ``nnUNetTrainerMN_whole``: whole SegFormer trainable, no LoRA (Table 4 "Whole").
- ``nnUNetTrainerMN_decoder``: SegFormer encoder frozen; decode head, output head, adapter trainable
  (Table 4 "Decoder", the paper's description).
- ``nnUNetTrainerMN_freeze``: the whole SegFormer frozen, only the new output head (and adapter) trains — the
  reference code's ``freeze`` option (the other reading of Table 4 "Decoder").
- ``nnUNetTrainerMN_scratch``: SegFormer from random initialisation (config of ``nnUNet_semisup_segformer``),
  all weights trainable — the papers' "SegFormer from scratch" setting inside M&N.
- ``nnUNetTrainerMN_lrglinear``: reference LRG b_u = ⌊(e_m − W)/(T_m − W)·B⌋.
- ``nnUNetTrainerMN_uniform``: no LRG, b_u ~ Binomial(B, |U|/(|L|+|U|)) per iteration (Table 4 "no LRG").
- ``nnUNetTrainerMN_fixedpseudo``: 2D trained in warm-up only, then a fixed teacher (Table 4 "no iterative
  co-training").
- ``nnUNetTrainerMN_paper``: reference hyperparameters (B = 5, 8 iterations/epoch, W = 500, 4000 own epochs per
  model, AdamW for both, composite schedule with restart, no clipping, foreground oversampling 0.5, [0, 1]
  SegFormer input without ImageNet mean/std, CT through the reference's [−175, 250] HU window).
- ``nnUNetTrainerMN_paper_lrglinear``: ``_paper`` + linear LRG, the fully code-faithful schedule.
- ``nnUNetTrainerMN_patchWindow``: the 2D input mapped to [0, 1] by each patch's own percentiles (the default
  before 2026-12-06; resumes runs started then).
- ``nnUNetTrainerMN_labeledIntact``: not in the paper, a benchmark variant — nnU-Net's B labeled patches stay in
  every batch and LRG's b_u unlabeled patches come on top (B + b_u per step) instead of replacing labeled ones, so
  the 3D model sees as many labeled patches per step as nnU-Net alone (docs/benchmarks.md, issue 28).
- ``nnUNetTrainerMN_labeledIntact_short``: ``_labeledIntact`` on the short schedule (the quality benchmark's row).
- ``nnUNetTrainerMN_short``: test/demo variant (``ShortScheduleMixin``), 6 epochs, chunks of 16 slices.
"""
import torch

from nnunetv2_semisup.methods.mn.trainer import nnUNetTrainerMN
from nnunetv2_semisup.training.short_schedule import ShortScheduleMixin

__all__ = ["nnUNetTrainerMN", "nnUNetTrainerMN_whole", "nnUNetTrainerMN_decoder", "nnUNetTrainerMN_freeze",
           "nnUNetTrainerMN_scratch", "nnUNetTrainerMN_lrglinear",
           "nnUNetTrainerMN_uniform", "nnUNetTrainerMN_fixedpseudo", "nnUNetTrainerMN_paper",
           "nnUNetTrainerMN_paper_lrglinear", "nnUNetTrainerMN_patchWindow", "nnUNetTrainerMN_labeledIntact",
           "nnUNetTrainerMN_short", "nnUNetTrainerMN_labeledIntact_short"]


class nnUNetTrainerMN_whole(nnUNetTrainerMN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mn_2d_finetune = "whole"


class nnUNetTrainerMN_decoder(nnUNetTrainerMN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mn_2d_finetune = "decoder"


class nnUNetTrainerMN_freeze(nnUNetTrainerMN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mn_2d_finetune = "freeze"


class nnUNetTrainerMN_scratch(nnUNetTrainerMN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mn_2d_pretrained = False
        self.mn_2d_finetune = "whole"  # LoRA adapts pretrained weights; random ones are trained whole


class nnUNetTrainerMN_lrglinear(nnUNetTrainerMN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mn_lrg_mode = "linear"


class nnUNetTrainerMN_uniform(nnUNetTrainerMN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mn_lrg_mode = "uniform"


class nnUNetTrainerMN_fixedpseudo(nnUNetTrainerMN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mn_cotraining = False


class nnUNetTrainerMN_paper(nnUNetTrainerMN):
    """Reference hyperparameters (docs/mn.md). E = 7500 global epochs = W + 2·3500, so each model runs
    4000 own epochs; pseudo-label refreshes at own 3D epochs 500, 1000, 1500, 2000, 3000."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.batch_size_override = 5
        self.num_iterations_per_epoch = 8
        # nnU-Net's 50 validation iterations per epoch would cost 6x the 8 training iterations over 7500 epochs;
        # 8 keep the per-epoch pseudo-Dice (the reference validated every 50 3D epochs)
        self.num_val_iterations_per_epoch = 8
        self.num_epochs = 7500
        self.mn_warmup_epochs = 500
        self.mn_3d_optimizer, self.initial_lr, self.weight_decay = "adamw", 1e-4, 0.01
        self.mn_2d_lr, self.mn_2d_weight_decay = 1e-3, 0.01
        self.mn_schedule = "reference"
        self.grad_clip = self.mn_2d_grad_clip = None
        self.oversample_foreground_percent = 0.5
        self.unlabeled_oversample_foreground_percent = self.mn_unlabeled_oversample = 0.5
        self.mn_lrg_mode = "paper"
        self.mn_lrg_batch_size = 5  # = B: one composition per epoch, exactly eq. 10
        self.mn_2d_input_mapping = "unit"  # the reference fed [0, 1] images, no ImageNet mean/std
        self.mn_2d_input_window = "reference"  # CT: its [-175, 250] HU window; other channels: the dataset's


class nnUNetTrainerMN_paper_lrglinear(nnUNetTrainerMN_paper):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mn_lrg_mode = "linear"


class nnUNetTrainerMN_patchWindow(nnUNetTrainerMN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mn_2d_input_window = "patch"


class nnUNetTrainerMN_labeledIntact(nnUNetTrainerMN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mn_labeled_batch_intact = True


class nnUNetTrainerMN_short(ShortScheduleMixin, nnUNetTrainerMN):
    """Tests and the offline demo: 6 epochs (W = 1; the 3D and 2D models then alternate and b_u reaches 1 for
    B = 2), chunks of 16 slices so chunking and checkpointing are exercised."""
    short_epochs = 6

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mn_2d_chunk_size = 16


class nnUNetTrainerMN_labeledIntact_short(ShortScheduleMixin, nnUNetTrainerMN_labeledIntact):
    """The quality benchmark's labeled-batch-intact M&N row (``_labeledIntact`` on the short schedule)."""
    short_epochs = 6

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mn_2d_chunk_size = 16
