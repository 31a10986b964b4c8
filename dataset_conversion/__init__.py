"""Dataset converters (installed as nnunetv2_semisup_conversion).

Console commands: nnUNetv2_semisup_convert_LA, nnUNetv2_semisup_convert_Pancreas, nnUNetv2_semisup_convert_Synapse,
nnUNetv2_semisup_convert_AMOS, nnUNetv2_semisup_convert_BraTS2019, nnUNetv2_semisup_convert_ACDC,
nnUNetv2_semisup_convert_own and nnUNetv2_semisup_add_unlabeled. Contract: docs/datasets.md; user
documentation: docs/datasets.md.
"""
