"""nnU-Net's local logger extended with per-epoch series for each loss term and the batch composition.

nnU-Net's ``LocalLogger`` only accepts pre-registered keys and its ``progress.png`` shows its own series; this
subclass registers extra series and draws the loss terms (``loss_*``) and the batch composition in a fourth panel
and monitored values that are not losses (``monitor_*``) in a fifth panel of the same ``progress.png``.
"""
from typing import Iterable

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
from nnunetv2.training.logging import nnunet_logger  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

NNUNET_KEYS = tuple(LocalLogger().my_fantastic_logging)  # nnU-Net's own series


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
        """nnU-Net's own ``progress.png`` (its three panels, drawn by its code) with our panels below them."""
        logs = self.my_fantastic_logging
        monitored = [k for k in self.extra_keys if k.startswith("monitor_")]
        epoch = min(len(v) for v in logs.values()) - 1
        n_ours = 2 if monitored else 1

        def draw_ours(axes):
            x = list(range(epoch + 1))
            for k in self.extra_keys:
                if k.startswith("loss_"):
                    axes[0].plot(x, logs[k][:epoch + 1], label=k, linewidth=3)
            axes[0].set_xlabel("epoch"), axes[0].set_ylabel("loss term"), axes[0].legend(loc=(0, 1))
            twin = axes[0].twinx()
            for k, style in (("batch_labeled", "--"), ("batch_unlabeled", ":")):
                if k in logs:
                    twin.step(x, logs[k][:epoch + 1], ls=style, color="k", label=k, where="post")
            twin.set_ylabel("samples per batch"), twin.legend(loc=(0.5, 1))
            for k in monitored:  # values that are not losses (weights, mask fractions, stages)
                axes[1].plot(x, logs[k][:epoch + 1], label=k, linewidth=3)
            if monitored:
                axes[1].set_xlabel("epoch"), axes[1].set_ylabel("monitored value"), axes[1].legend(loc=(0, 1))

        class MorePanels:  # stands in for pyplot inside nnU-Net's plot_progress_png: its figure gets our rows too
            def __getattr__(self, name):
                return getattr(plt, name)

            def subplots(self, nrows, ncols=1, figsize=(30, 54), **kwargs):
                fig, axes = plt.subplots(nrows + n_ours, ncols, figsize=(figsize[0], figsize[1] * (nrows + n_ours)
                                                                         / nrows), **kwargs)
                draw_ours(axes[nrows:])
                return fig, axes[:nrows]

        nnunet_logger.plt = MorePanels()
        try:
            super().plot_progress_png(output_folder)
        finally:
            nnunet_logger.plt = plt
