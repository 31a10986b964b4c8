"""Hard pseudo-labels of the unlabeled cases, for foreground-aware unlabeled crops (and for users to inspect: the
export writes each case as an image in the original geometry and as a PNG, image | pseudo-label outlines, under
``png/``).

Prediction reuses nnU-Net's sliding-window predictor on the preprocessed unlabeled arrays (no TTA); the class
locations are sampled with nnU-Net's own ``_sample_foreground_locations`` exactly as preprocessing does for
labeled cases, so nnU-Net's ``nnUNetDataLoader`` uses them unchanged.
"""
import os
import warnings
from typing import Dict, Optional

import numpy as np
import torch
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

from nnunetv2_semisup.evaluation.pictures import write_png
from nnunetv2_semisup.progress import progress


def predict_class_locations(network: torch.nn.Module, dataset, plans_manager, configuration_manager,
                            dataset_json: dict, device: torch.device, export_folder: Optional[str] = None,
                            trainer_name: str = "", show_progress: bool = True) -> Dict[str, dict]:
    """``{case: class_locations}`` of the argmax of ``network`` (eval mode, nnU-Net's sliding window, no TTA) on
    every case of ``dataset``; with ``export_folder`` also each hard pseudo-label as an image in the original
    geometry and a PNG."""
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration_manager, None, dataset_json, trainer_name,
                                    None)
    label_manager = plans_manager.get_label_manager(dataset_json)
    if label_manager.has_regions:
        raise NotImplementedError("pseudo-label class locations are not supported for region-based training")
    if export_folder is not None:
        os.makedirs(export_folder, exist_ok=True)
    locations = {}
    for case in progress(dataset.identifiers, desc="pseudo-labels", quiet=not show_progress):
        data, _, _, properties = dataset.load_case(case)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(np.asarray(data[:]))).cpu()
        seg = logits.argmax(0).numpy().astype(np.int16)
        locations[case] = DefaultPreprocessor._sample_foreground_locations(
            seg[None], label_manager.foreground_labels, seed=1234)
        if export_folder is not None:
            export_prediction_from_logits(logits, properties, configuration_manager, plans_manager, dataset_json,
                                          os.path.join(export_folder, case), False, num_threads_torch=1)
            # image | pseudo-label outlines, in the preprocessed grid (docs: "Pictures")
            write_png(os.path.join(export_folder, "png", f"{case}.png"), np.asarray(data[0]), [None, seg])
    return locations
