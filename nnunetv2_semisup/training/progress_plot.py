"""nnU-Net's local logger extended with per-epoch series for each loss term and the batch composition.

nnU-Net's ``LocalLogger`` only accepts pre-registered keys and its ``progress.png`` shows its own series; this
subclass registers extra series and draws the loss terms (``loss_*``) and the batch composition in a fourth panel
and monitored values that are not losses (``monitor_*``) in a fifth panel, below nnU-Net's own three panels in the
same ``progress.png``.
"""
import io
import os
import tempfile
from typing import Iterable

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402
from PIL import Image  # noqa: E402

NNUNET_KEYS = tuple(LocalLogger().my_fantastic_logging)  # nnU-Net's own series
NNUNET_PANELS = 3  # rows of nnU-Net's progress.png (loss/pseudo Dice, epoch time, learning rate)


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
        """``progress.png`` = nnU-Net's own plot, drawn by its unmodified code, with our panels below it.

        nnU-Net's method writes its figure and closes it, so it is drawn into a temporary folder and its pixels are
        pasted unchanged above our panels (drawn at nnU-Net's panel size). Nothing of nnU-Net's module is touched, so
        a change of its plot shows up as is.
        """
        logs = self.my_fantastic_logging
        monitored = [k for k in self.extra_keys if k.startswith("monitor_")]
        epoch = min(len(v) for v in logs.values()) - 1
        with tempfile.TemporaryDirectory(prefix="semisup_progress_") as tmp:
            super().plot_progress_png(tmp)
            with Image.open(os.path.join(tmp, "progress.png")) as img:
                theirs = img.convert("RGB")
        n_ours = 2 if monitored else 1
        panel_px = theirs.height / NNUNET_PANELS
        dpi = 100
        fig, axes = plt.subplots(n_ours, 1, figsize=(theirs.width / dpi, n_ours * panel_px / dpi), dpi=dpi,
                                 squeeze=False)
        axes = axes[:, 0]
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
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=dpi, format="png")
        plt.close(fig)
        buffer.seek(0)
        with Image.open(buffer) as img:
            ours = img.convert("RGB")
        canvas = Image.new("RGB", (theirs.width, theirs.height + ours.height), "white")
        canvas.paste(theirs, (0, 0))
        canvas.paste(ours, (0, theirs.height))
        target = os.path.join(output_folder, "progress.png")
        partial = target + ".partial.png"
        canvas.save(partial)
        os.replace(partial, target)  # a reader never sees half a PNG
