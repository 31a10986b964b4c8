"""M&N's pseudo-label refreshes (docs/mn.md): the 3D model's hard predictions of the unlabeled cases make later
unlabeled crops foreground-aware (through the base's ``unlabeled_class_locations_file`` hook); ``class_locations_file``
and ``pseudo_label_round`` are M&N's method state."""
from typing import Optional

from batchgenerators.utilities.file_and_folder_operations import join
from torch import distributed as dist

from nnunetv2_semisup.data.pseudo_labels import predict_class_locations
from nnunetv2_semisup.data.unlabeled_dataset import UnlabeledDataset, write_class_locations
from nnunetv2_semisup.training.helpers import eval_mode
from nnunetv2_semisup.training.semisup_base import unwrap


class PseudoLabelRefreshMixin:  # for a subclass of nnUNetTrainerSemiSup
    def refresh_unlabeled_pseudo_labels(self, export_nifti: bool = True) -> str:
        """Predict every unlabeled case with the nnU-Net network (sliding window, no TTA, deep supervision off),
        store the hard labels' class locations for foreground-aware unlabeled crops, and optionally export the hard
        pseudo-labels as images in the original geometry to ``<output_folder>/pseudo_labels/round_<k>/``.

        Returns the path of the class-location store. In DDP, rank 0 predicts and the others wait."""
        self.pseudo_label_round += 1
        folder = join(self.output_folder, "pseudo_labels")
        filename = join(folder, f"class_locations_round{self.pseudo_label_round}.pkl")
        if self.local_rank == 0:
            self.set_deep_supervision_enabled(False)
            try:
                with eval_mode(self.network):
                    export = join(folder, f"round_{self.pseudo_label_round}") if export_nifti else None
                    locations = predict_class_locations(
                        unwrap(self.network), self._unlabeled_stream.dataset.inner, self.plans_manager,
                        self.configuration_manager, self.dataset_json, self.device, export, type(self).__name__)
            finally:
                self.set_deep_supervision_enabled(self.enable_deep_supervision)
            write_class_locations(locations, filename)
            self.print_to_log_file(f"Pseudo-label class locations (round {self.pseudo_label_round}) -> {filename}")
        if self.is_ddp:
            dist.barrier()
        self.set_class_locations_file(filename)
        return filename

    def unlabeled_class_locations_file(self) -> Optional[str]:
        return self.class_locations_file

    def set_class_locations_file(self, filename: Optional[str]) -> None:
        self.class_locations_file = filename
        if self._unlabeled_stream is not None:
            current = self._unlabeled_stream.dataset
            self._unlabeled_stream.set_dataset(UnlabeledDataset(self.dataset_class, self.unlabeled_preprocessed_folder,
                                                                class_locations_file=filename,
                                                                rebuild_command=current.rebuild_command))
