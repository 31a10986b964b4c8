"""Load one legacy checkpoint into a freshly built trainer (as ``nnUNetv2_train --c`` does) and compare, tensor by
tensor, what the trainer now holds with what the file holds (used by tests/test_checkpoint_compat.py).

    python tests/compat_load_worker.py DATASET_ID TRAINER CHECKPOINT REPORT.json

The report lists every compared entry and every difference: the network weights, each of the trainer's
``extra_checkpoint_objects`` (modules, optimizers, EMA teachers...) and the method state.
"""
import json
import sys

import numpy as np
import torch


def flatten(prefix, obj, out):
    """Leaves of nested dicts/lists/tuples as {path: value}; tensors and arrays are kept as numpy arrays."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            flatten(f"{prefix}.{k}", v, out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten(f"{prefix}[{i}]", v, out)
    elif isinstance(obj, torch.Tensor):
        out[prefix] = obj.detach().cpu().numpy()
    elif isinstance(obj, np.ndarray):
        out[prefix] = obj
    else:
        out[prefix] = obj
    return out


def same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


def main(dataset_id, trainer_name, checkpoint_file, report_file):
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2_semisup.training.semisup_base import unwrap

    trainer = get_trainer_from_args(dataset_id, "3d_fullres", "all", trainer_name, "nnUNetPlans",
                                    device=torch.device("cpu"))
    trainer.load_checkpoint(checkpoint_file)
    saved = torch.load(checkpoint_file, map_location="cpu", weights_only=False)

    held = {"network_weights": unwrap(trainer.network).state_dict()}
    for key, obj in trainer.extra_checkpoint_objects.items():
        if obj is not None:
            held[key] = (unwrap(obj) if isinstance(obj, torch.nn.Module) else obj).state_dict()
    method = trainer.get_method_state()
    # where the legacy files (format 1) keep each part of the method state, written out here independently of the
    # package's migration: SKCDF and CML under a top-level key, M&N's pseudo-label store next to "method"
    legacy_key = {"nnUNetTrainerSKCDF_short": "skcdf_state", "nnUNetTrainerCML_short": "cml_state"}.get(trainer_name)
    file_method = dict(saved[legacy_key] if legacy_key else saved["semisup_state"]["method"])
    if trainer_name == "nnUNetTrainerMN_short":
        file_method.update({k: saved["semisup_state"][k] for k in ("class_locations_file", "pseudo_label_round")})
    compared, differ = [], []
    for key, value in held.items():
        a = flatten(key, value, {})
        b = flatten(key, saved[key], {})
        if set(a) != set(b):
            differ.append(f"{key}: entries {sorted(set(a) ^ set(b))[:5]}")
        for k in sorted(set(a) & set(b)):
            compared.append(k)
            if not same(a[k], b[k]):
                differ.append(k)
    a, b = flatten("method", method, {}), flatten("method", file_method, {})
    for k in sorted(set(a) | set(b)):
        compared.append(k)
        if k not in a or k not in b or not same(a[k], b[k]):
            differ.append(k)
    report = {"extra_keys": sorted(trainer.extra_checkpoint_objects),
              "unused_here": sorted(k for k, o in trainer.extra_checkpoint_objects.items() if o is None), "compared": compared, "differ": differ,
              "current_epoch": trainer.current_epoch, "n_method_entries": len(b),
              # method state the file predates: the value the trainer adopted for it
              "added_since": {k: str(a[k]) for k in a if k not in b}}
    with open(report_file, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
