"""Fine-tuning a self-trained student on the labeled cases alone (the last step of a noisy-student round, as in the
AbdomenCT-1K semi-supervised baseline): stock ``nnUNetTrainer`` on the student dataset, restricted to the cases its
``dataset.json`` records as labeled, started from the student's weights (``-pretrained_weights``), with a tenth of
nnU-Net's learning rate and of its epochs (our choice: enough to adapt to the true labels, too little to forget
what the pseudo-labels taught).

``nnUNetv2_semisup_selftrain --finetune`` runs it; by hand::

    nnUNetv2_train STUDENT_ID 3d_fullres all -tr nnUNetTrainerSelfTrainFinetune \\
        -pretrained_weights $nnUNet_results/.../nnUNetTrainer__nnUNetPlans__3d_fullres/fold_all/checkpoint_final.pth
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_semisup.training.short_schedule import ShortScheduleMixin

__all__ = ["nnUNetTrainerSelfTrainFinetune", "nnUNetTrainerSelfTrainFinetune_short"]


def labeled_cases_of(dataset_json: dict) -> list:
    """The labeled (not pseudo-labeled) cases of a self-training student dataset."""
    record = dataset_json.get("semisup", {}).get("selftrain")
    if not record or "labeled_cases" not in record:
        raise RuntimeError("nnUNetTrainerSelfTrainFinetune fine-tunes a self-training student on its labeled cases, "
                           "but this dataset's dataset.json has no semisup.selftrain.labeled_cases (it was not made "
                           "by nnUNetv2_semisup_selftrain). Use it on a student dataset.")
    return list(record["labeled_cases"])


class nnUNetTrainerSelfTrainFinetune(nnUNetTrainer):
    """Stock nnU-Net restricted to the labeled cases of a student dataset; LR 1e-3, 100 epochs."""
    finetune_lr = 1e-3
    finetune_epochs = 100

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.finetune_lr
        self.num_epochs = self.finetune_epochs

    def do_split(self):
        tr_keys, val_keys = super().do_split()
        labeled = set(labeled_cases_of(self.dataset_json))
        tr = [k for k in tr_keys if k in labeled]
        val = [k for k in val_keys if k in labeled] or tr
        self.print_to_log_file(f"Fine-tuning on the {len(tr)} labeled cases only (pseudo-labeled cases left out)")
        return tr, val


class nnUNetTrainerSelfTrainFinetune_short(ShortScheduleMixin, nnUNetTrainerSelfTrainFinetune):
    """The short schedule's fine-tuning: a tenth of its epochs (at least one)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = max(1, round(self.num_epochs / 10))
