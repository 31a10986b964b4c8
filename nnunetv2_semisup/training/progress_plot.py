"""nnU-Net's local logger extended with per-epoch series for each loss term and the batch composition.

nnU-Net's ``LocalLogger`` only accepts pre-registered keys and its ``progress.png`` shows its own series; this
subclass registers extra series and draws the loss terms (``loss_*``) and the batch composition in a fourth panel
and monitored values that are not losses (``monitor_*``) in a fifth panel of the same ``progress.png``.
"""
from typing import Iterable

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from batchgenerators.utilities.file_and_folder_operations import join  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

NNUNET_KEYS = ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses", "val_losses", "lrs",
               "epoch_start_timestamps", "epoch_end_timestamps")


class SemiSupLocalLogger(LocalLogger):
    def __init__(self, verbose: bool = False):
        super().__init__(verbose)
        self.extra_keys = []

    def register(self, keys: Iterable[str]) -> None:
        """Add per-epoch series (idempotent). Series registered late are padded with NaN up to now."""
        n = len(self.my_fantastic_logging["train_losses"])
        for k in keys:
            if k not in self.my_fantastic_logging:
                self.my_fantastic_logging[k] = [float("nan")] * n
            if k not in self.extra_keys:
                self.extra_keys.append(k)

    def load_checkpoint(self, checkpoint: dict):
        super().load_checkpoint(checkpoint)
        keys, self.extra_keys = list(self.extra_keys), []
        self.register(keys + [k for k in checkpoint if k not in NNUNET_KEYS])

    def plot_progress_png(self, output_folder):
        logs = self.my_fantastic_logging
        epoch = min(len(logs[k]) for k in NNUNET_KEYS + tuple(self.extra_keys)) - 1
        if epoch < 0:
            return
        x = list(range(epoch + 1))
        monitored = [k for k in self.extra_keys if k.startswith("monitor_")]
        fig, axes = plt.subplots(5 if monitored else 4, 1, figsize=(16, 35 if monitored else 28))
        ax = axes[0]
        ax2 = ax.twinx()
        ax.plot(x, logs["train_losses"][:epoch + 1], color="b", label="loss_tr", linewidth=3)
        ax.plot(x, logs["val_losses"][:epoch + 1], color="r", label="loss_val", linewidth=3)
        ax2.plot(x, logs["mean_fg_dice"][:epoch + 1], color="g", ls="dotted", label="pseudo dice", linewidth=2)
        ax2.plot(x, logs["ema_fg_dice"][:epoch + 1], color="g", label="pseudo dice (mov. avg.)", linewidth=3)
        ax.set_xlabel("epoch"), ax.set_ylabel("loss"), ax2.set_ylabel("pseudo dice")
        ax.legend(loc=(0, 1)), ax2.legend(loc=(0.2, 1))
        durations = np.array(logs["epoch_end_timestamps"][:epoch + 1]) - np.array(logs["epoch_start_timestamps"][:epoch + 1])
        axes[1].plot(x, durations, color="b", label="epoch duration", linewidth=3)
        axes[1].set_ylim(bottom=0), axes[1].set_xlabel("epoch"), axes[1].set_ylabel("time [s]")
        axes[1].legend(loc=(0, 1))
        axes[2].plot(x, logs["lrs"][:epoch + 1], color="b", label="learning rate", linewidth=3)
        axes[2].set_xlabel("epoch"), axes[2].set_ylabel("learning rate"), axes[2].legend(loc=(0, 1))
        ax = axes[3]
        for k in self.extra_keys:
            if k.startswith("loss_"):
                ax.plot(x, logs[k][:epoch + 1], label=k, linewidth=3)
        ax.set_xlabel("epoch"), ax.set_ylabel("loss term")
        ax3 = ax.twinx()
        for k, style in (("batch_labeled", "--"), ("batch_unlabeled", ":")):
            if k in logs:
                ax3.step(x, logs[k][:epoch + 1], ls=style, color="k", label=k, where="post")
        ax3.set_ylabel("samples per batch")
        ax.legend(loc=(0, 1)), ax3.legend(loc=(0.5, 1))
        if monitored:  # values that are not losses (weights, mask fractions, stages)
            for k in monitored:
                axes[4].plot(x, logs[k][:epoch + 1], label=k, linewidth=3)
            axes[4].set_xlabel("epoch"), axes[4].set_ylabel("monitored value"), axes[4].legend(loc=(0, 1))
        plt.tight_layout()
        fig.savefig(join(output_folder, "progress.png"))
        plt.close(fig)
