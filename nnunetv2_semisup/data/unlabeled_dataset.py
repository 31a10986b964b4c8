"""The unlabeled dataset: nnU-Net's own dataset class over ``<data_identifier>_unlabeled/``, optionally with
pseudo-label class locations so that nnU-Net's foreground-forced crops also work for unlabeled cases.

Unlabeled cases are stored with empty ``class_locations``; until a method provides pseudo-label locations, every
unlabeled crop is uniform. The locations live in a pickle next to the trainer output (never in the raw or
preprocessed data) and are loaded lazily, so the dataset stays cheap to send to augmentation workers.
"""
import os
import pickle
from typing import Dict, List, Optional

from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset


class UnreadableCaseError(RuntimeError):
    """A preprocessed unlabeled case cannot be loaded; the message names its files and the command that rebuilds it."""


class UnlabeledDataset(nnUNetBaseDataset):
    """Wraps an nnU-Net dataset class; ``load_case`` replaces ``class_locations`` from a pseudo-label store."""

    def __init__(self, dataset_class, folder: str, identifiers: Optional[List[str]] = None,
                 class_locations_file: Optional[str] = None, rebuild_command: str = "nnUNetv2_semisup_preprocess"):
        self.inner = dataset_class(folder, identifiers)
        super().__init__(folder, list(self.inner.identifiers))
        self.class_locations_file = class_locations_file
        self.rebuild_command = rebuild_command
        self._class_locations = None

    def _store(self) -> Dict[str, dict]:
        if self._class_locations is None:
            self._class_locations = {}
            if self.class_locations_file is not None:
                with open(self.class_locations_file, "rb") as f:
                    self._class_locations = pickle.load(f)
        return self._class_locations

    def load_case(self, identifier):
        try:
            # (blosc2 arrays stay lazy: a cut-off file already fails to open, since its frame trailer is lost)
            data, seg, seg_prev, properties = self.inner.load_case(identifier)
        except Exception as e:
            files = sorted(f for f in os.listdir(self.source_folder) if f.startswith(identifier + ".")
                           or f.startswith(identifier + "_seg."))
            raise UnreadableCaseError(
                f"Preprocessed unlabeled case '{identifier}' cannot be read ("
                f"{', '.join(os.path.join(self.source_folder, f) for f in files) or 'files missing'}): "
                f"{type(e).__name__}: {e}. The file is damaged (an interrupted copy or a full disk?). Run "
                f"`{self.rebuild_command}`: it reads every finished case back and preprocesses unreadable ones "
                f"again.") from e
        locations = self._store().get(identifier)
        if locations is not None:
            properties = dict(properties)
            properties["class_locations"] = locations
        return data, seg, seg_prev, properties

    def save_case(self, *args, **kwargs):  # pragma: no cover - datasets here are read-only
        raise NotImplementedError("UnlabeledDataset is read-only")

    def get_identifiers(self, folder: str = None) -> List[str]:  # instance use only
        return self.inner.get_identifiers(folder or self.source_folder)


def write_class_locations(class_locations: Dict[str, dict], filename: str) -> None:
    """Atomically write a ``{case: class_locations}`` store."""
    os.makedirs(os.path.dirname(filename), exist_ok=True)
    tmp = filename + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(class_locations, f)
    os.replace(tmp, filename)
