"""SKCDF trainer variants (docs/skcdf.md): tiny subclasses that change attributes, nnU-Net style.

| class | differs from ``nnUNetTrainerSKCDF`` by | paper |
|---|---|---|
| ``_truemask`` | masked loss averaged over the selected voxels only | — |
| ``_paper`` | reference optimiser/schedule: SGD lr 0.3, momentum 0.9, Nesterov, wd 3e-5, poly 0.9 over 1500 epochs, batch 2 + 2, max(1, ⌊\\|U\\|/2⌋) iterations per epoch, dropout 0.5, no gradient clipping | Tab. 1 |
| ``_noSKCM`` | SKCM replaced by the identity | Tab. 3 "DF + ABSH" |
| ``_noABSH`` | no auxiliary heads / aux losses; EMA head steps skipped (decoder EMA kept) | Tab. 3 "DF + SKCM" |
| ``_noEMA`` | no knowledge transfer | Tab. 4 "w/o EMA" |
| ``_DF`` | neither SKCM nor auxiliary heads (decoupled decoders + decoder EMA) | Tab. 3 "+ DF", Tab. 4 |
| ``_DF_noEMA`` | ``_DF`` without decoder EMA | Tab. 4 "unlabeled / no" |
| ``_DF_inferL``, ``_DF_noEMA_inferL`` | ``_DF`` / ``_DF_noEMA`` predicting with D_l's main head | Tab. 4 "labeled" rows |
| ``_earlyRamp`` | the λ_u ramp spans the first 40 % of the run instead of all of it (half weight at 25 % instead of 63 %; Mean Teacher's default span) — a benchmark variant that tests whether the published ramp holds SKCDF back on a short schedule | — |
| ``_short`` | short schedule for tests and the demo (``ShortScheduleMixin``) | — |
| ``_earlyRamp_short`` | ``_earlyRamp`` on the short schedule (the quality benchmark's early-ramp row) | — |
| ``_paper_short`` | ``_paper``'s optimiser, dropout, batch and no clipping on the short schedule (its epochs × iterations instead of 1500 × ⌊\|U\|/2⌋; the poly decay spans them) — the quality benchmark's paper row | — |

Architecture switches are class attributes (nnU-Net rebuilds the network from the class at prediction time).
"""
import torch

from nnunetv2_semisup.training.short_schedule import ShortScheduleMixin
from nnunetv2_semisup.methods.skcdf.trainer import nnUNetTrainerSKCDF


class nnUNetTrainerSKCDF_truemask(nnUNetTrainerSKCDF):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.skcdf_mask_mode = "true"


class nnUNetTrainerSKCDF_paper(nnUNetTrainerSKCDF):
    """Reference hyperparameters (docs/skcdf.md). lr 0.3 is the Synapse value; use 0.1 for AMOS-like data
    (subclass and set ``initial_lr``)."""
    skcdf_dropout_p = 0.5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 0.3
        self.weight_decay = 3e-5
        self.skcdf_momentum = 0.9
        self.grad_clip = None
        self.num_epochs = 1500
        self.batch_size_override = 2

    def initialize(self):
        super().initialize()
        # the reference repeats the labeled set to the unlabeled set size, drop_last, 2 per batch (the global batch:
        # on several GPUs an iteration still consumes one batch in all)
        if self._unlabeled_available():
            n_u = len(self.dataset_class.get_identifiers(self.unlabeled_preprocessed_folder))
            global_batch = self.batch_size_override or self.configuration_manager.batch_size
            self.num_iterations_per_epoch = max(1, n_u // global_batch)


class nnUNetTrainerSKCDF_noSKCM(nnUNetTrainerSKCDF):
    skcdf_use_skcm = False


class nnUNetTrainerSKCDF_noABSH(nnUNetTrainerSKCDF):
    skcdf_use_aux = False


class nnUNetTrainerSKCDF_noEMA(nnUNetTrainerSKCDF):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.skcdf_use_ema = False


class nnUNetTrainerSKCDF_DF(nnUNetTrainerSKCDF):
    skcdf_use_skcm = False
    skcdf_use_aux = False


class nnUNetTrainerSKCDF_DF_noEMA(nnUNetTrainerSKCDF_DF):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.skcdf_use_ema = False


class nnUNetTrainerSKCDF_DF_inferL(nnUNetTrainerSKCDF_DF):
    skcdf_inference_decoder = "labeled"


class nnUNetTrainerSKCDF_DF_noEMA_inferL(nnUNetTrainerSKCDF_DF_noEMA):
    skcdf_inference_decoder = "labeled"


class nnUNetTrainerSKCDF_earlyRamp(nnUNetTrainerSKCDF):
    """λ_u reaches full weight after 40 % of the run: the unlabeled term acts at ≥ half weight for the last 75 % of
    any schedule (published ramp: the last 37 %). Not in the paper; a benchmark variant (docs/benchmarks.md)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.skcdf_rampup_fraction = 0.4


class nnUNetTrainerSKCDF_short(ShortScheduleMixin, nnUNetTrainerSKCDF):
    """Short schedule for tests and the demo (epochs/iterations via nnUNet_semisup_short_* variables)."""


class nnUNetTrainerSKCDF_DF_short(ShortScheduleMixin, nnUNetTrainerSKCDF_DF):
    pass


class nnUNetTrainerSKCDF_earlyRamp_short(ShortScheduleMixin, nnUNetTrainerSKCDF_earlyRamp):
    pass


class nnUNetTrainerSKCDF_paper_short(ShortScheduleMixin, nnUNetTrainerSKCDF_paper):
    """The reference recipe at the benchmark's budget: ``_paper`` derives its iterations per epoch from the
    unlabeled set in ``initialize``; the short schedule's count replaces it so runs are compared at equal
    iterations."""

    def initialize(self):
        super().initialize()
        self.num_iterations_per_epoch = self.short_iterations_per_epoch()


__all__ = ["nnUNetTrainerSKCDF", "nnUNetTrainerSKCDF_truemask", "nnUNetTrainerSKCDF_paper",
           "nnUNetTrainerSKCDF_noSKCM", "nnUNetTrainerSKCDF_noABSH", "nnUNetTrainerSKCDF_noEMA",
           "nnUNetTrainerSKCDF_DF", "nnUNetTrainerSKCDF_DF_noEMA", "nnUNetTrainerSKCDF_DF_inferL",
           "nnUNetTrainerSKCDF_DF_noEMA_inferL", "nnUNetTrainerSKCDF_short", "nnUNetTrainerSKCDF_DF_short",
           "nnUNetTrainerSKCDF_paper_short", "nnUNetTrainerSKCDF_earlyRamp", "nnUNetTrainerSKCDF_earlyRamp_short"]
