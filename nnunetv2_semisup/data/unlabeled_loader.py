"""Training data streams: one augmented nnU-Net loader per stream, resizable per epoch, and the iterator that
joins the labeled and unlabeled streams into one batch dict for ``train_step``.
"""
from collections import OrderedDict
from typing import Callable, Optional, Tuple

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


class AugmentedStream:
    """nnU-Net's ``nnUNetDataLoader`` + augmentations in background workers, with a batch size that can change.

    One augmenter (worker pool) per batch size; the ``max_alive`` most recently used ones stay alive, because M&N's
    LRG alternates between two compositions (the 3D and the 2D epochs read different learning rates) and
    restarting workers every epoch would cost seconds each time. Idle pools only hold their prefetched batches.
    A batch size of 0 means the stream is idle.
    """
    max_alive = 2

    def __init__(self, dataset, initial_patch_size, final_patch_size, label_manager, transforms,
                 oversample_foreground_percent: float, probabilistic_oversampling: bool, num_processes: int,
                 pin_memory: bool, num_cached: Optional[int] = None):
        self.dataset = dataset
        self.loader_args = dict(patch_size=initial_patch_size, final_patch_size=final_patch_size,
                                label_manager=label_manager, oversample_foreground_percent=oversample_foreground_percent,
                                transforms=transforms, probabilistic_oversampling=probabilistic_oversampling)
        self.num_processes, self.pin_memory = num_processes, pin_memory
        self.num_cached = num_cached if num_cached is not None else max(6, num_processes // 2)  # nnU-Net's values
        self.batch_size = 0
        self._augmenters: "OrderedDict[int, object]" = OrderedDict()

    @property
    def augmenter(self):
        """The running augmenter for the current batch size (None if idle or not started)."""
        return self._augmenters.get(self.batch_size)

    def _build(self):
        loader = nnUNetDataLoader(self.dataset, self.batch_size, **self.loader_args)
        if self.num_processes == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=self.num_processes,
                                            num_cached=self.num_cached, seeds=None,
                                            pin_memory=self.pin_memory, wait_time=0.002)

    def set_batch_size(self, batch_size: int) -> bool:
        """Returns True if a worker pool was started for this batch size (False: idle, or one was running)."""
        self.batch_size = batch_size
        if batch_size == 0:
            return False
        if batch_size in self._augmenters:
            self._augmenters.move_to_end(batch_size)
            return False
        self._start()
        return True

    def _start(self):
        self._augmenters[self.batch_size] = self._build()
        while len(self._augmenters) > self.max_alive:
            _, oldest = self._augmenters.popitem(last=False)
            _finish(oldest)

    def set_dataset(self, dataset) -> None:
        """Swap the dataset (e.g. new pseudo-label class locations); workers restart on the next batch."""
        self.finish()
        self.dataset = dataset

    def __next__(self):
        if self.augmenter is None:
            if self.batch_size == 0:
                raise RuntimeError("stream has batch size 0")
            self._start()
        return next(self.augmenter)

    def finish(self):
        """Stop every worker pool of this stream."""
        for augmenter in self._augmenters.values():
            _finish(augmenter)
        self._augmenters.clear()


def keep_first(batch: dict, b_l: int, b_u: int) -> dict:
    """The batch with its first ``b_l`` labeled and ``b_u`` unlabeled patches (a part with 0 is removed)."""
    if b_l > batch["b_l"] or b_u > batch["b_u"]:
        raise ValueError(f"an iteration cannot use {(b_l, b_u)} patches when the streams deliver "
                         f"{(batch['b_l'], batch['b_u'])}; get_batch_composition must return the most of each part")
    def first(v, n):  # a tensor/array/list of keys, or deep supervision's list of targets
        per_scale = isinstance(v, (list, tuple)) and v and isinstance(v[0], (torch.Tensor, np.ndarray))
        return [t[:n] for t in v] if per_scale else v[:n]
    out = {"b_l": b_l, "b_u": b_u}
    if b_l > 0:
        out.update({k: first(v, b_l) for k, v in batch.items() if k not in ("b_l", "b_u", "unlabeled")})
    if b_u > 0:
        out["unlabeled"] = {k: first(v, b_u) for k, v in batch["unlabeled"].items()}
    return out


def _finish(augmenter) -> None:
    if isinstance(augmenter, NonDetMultiThreadedAugmenter):
        augmenter._finish()


class SemiSupBatchIterator:
    """What ``self.dataloader_train`` is in a semi-supervised trainer.

    ``next()`` returns nnU-Net's labeled batch dict (``data``, ``target``, ``keys``; absent when b_l = 0) with the
    unlabeled batch under ``"unlabeled"`` (``data``, ``keys``; absent when b_u = 0) and the composition under
    ``"b_l"``/``"b_u"``.

    ``iteration_composition(i)`` (the trainer's hook of that name): the ``(b_l, b_u)`` that iteration i of the epoch
    uses when a method varies it within the epoch (M&N's LRG), or None. The streams deliver the epoch's composition
    (at least what any iteration uses) and are always both read, so their sampling does not depend on the split;
    the iterator keeps the first b_l labeled and b_u unlabeled patches.
    """

    def __init__(self, labeled: AugmentedStream, unlabeled: Optional[AugmentedStream],
                 iteration_composition: Optional[Callable[[int], Optional[Tuple[int, int]]]] = None):
        self.labeled = labeled
        self.unlabeled = unlabeled
        self.iteration_composition = iteration_composition
        self.iteration = 0  # batches delivered in the current epoch (the trainer resets it at each epoch start)

    @property
    def composition(self):
        return self.labeled.batch_size, (self.unlabeled.batch_size if self.unlabeled is not None else 0)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        b_l, b_u = self.composition
        batch = dict(next(self.labeled)) if b_l > 0 else {}
        if b_u > 0:
            u = next(self.unlabeled)
            batch["unlabeled"] = {"data": u["data"], "keys": u["keys"]}
        batch["b_l"], batch["b_u"] = b_l, b_u
        wanted = self.iteration_composition(self.iteration) if self.iteration_composition is not None else None
        self.iteration += 1
        return batch if wanted is None or tuple(wanted) == (b_l, b_u) else keep_first(batch, *wanted)

    def finish(self):
        self.labeled.finish()
        if self.unlabeled is not None:
            self.unlabeled.finish()
