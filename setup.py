"""nnunetv2_semisup: semi-supervised 3D segmentation trainers (M&N, SKCDF, CML, Mean Teacher) for nnU-Net v2.

torch is deliberately not a requirement: install the build for your hardware first, as nnU-Net says.
"""
from setuptools import find_packages, setup

# The converters live in the top-level folder dataset_conversion/ of the repository and are installed under the
# non-generic import name nnunetv2_semisup_conversion.
conversion_packages = ["nnunetv2_semisup_conversion"] + [
    "nnunetv2_semisup_conversion." + p[len("dataset_conversion."):]
    for p in find_packages(include=["dataset_conversion.*"])
]

setup(
    name="nnunetv2_semisup",
    version="0.1.0",
    description="Semi-supervised trainers (M&N, SKCDF, CML, Mean Teacher) for nnU-Net v2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunetv2_semisup", "nnunetv2_semisup.*"]) + conversion_packages,
    package_dir={"nnunetv2_semisup_conversion": "dataset_conversion"},
    package_data={"nnunetv2_semisup_conversion": ["splits/*/*"]},
    include_package_data=True,
    install_requires=[
        "nnunetv2>=2.8,<2.9",
        "transformers>=4.41",
        "peft>=0.11",
        "SimpleITK>=2.2",
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.2",
        "dynamic-network-architectures>=0.3",
        "numpy",
        "scipy",
        "h5py",
        "connected-components-3d",  # cc3d: per-class largest connected components (CML pseudo-labels)
        "pynrrd",
        "pydicom",
    ],
    extras_require={
        # medpy (GPL-3.0) is used only by the tests, to check the paper-mode metrics against it.
        "test": ["pytest>=7", "medpy>=0.5"],
        # mutation testing (benchmarks/mutation.py mutmut), not part of CI
        "mutation": ["mutmut>=3.3"],
    },
    entry_points={
        "console_scripts": [
            "nnUNetv2_semisup_trainer_dir = nnunetv2_semisup.trainer_dir:main",
            "nnUNetv2_semisup_preprocess = nnunetv2_semisup.data.preprocess_unlabeled:main",
            "nnUNetv2_semisup_make_synthetic = nnunetv2_semisup.synthetic:main",
            "nnUNetv2_semisup_evaluate = nnunetv2_semisup.evaluation.evaluate_cli:main",
            "nnUNetv2_semisup_demo = nnunetv2_semisup.demo:main",
            "nnUNetv2_semisup_selftrain = nnunetv2_semisup.workflows.selftrain_cli:main",
            "nnUNetv2_semisup_rank_unlabeled = nnunetv2_semisup.workflows.rank_unlabeled:main",
            "nnUNetv2_semisup_convert_LA = nnunetv2_semisup_conversion.convert_la:main",
            "nnUNetv2_semisup_convert_Pancreas = nnunetv2_semisup_conversion.convert_pancreas:main",
            "nnUNetv2_semisup_convert_Synapse = nnunetv2_semisup_conversion.convert_synapse:main",
            "nnUNetv2_semisup_convert_AMOS = nnunetv2_semisup_conversion.convert_amos:main",
            "nnUNetv2_semisup_convert_BraTS2019 = nnunetv2_semisup_conversion.convert_brats:main",
            "nnUNetv2_semisup_convert_ACDC = nnunetv2_semisup_conversion.convert_acdc:main",
            "nnUNetv2_semisup_convert_own = nnunetv2_semisup_conversion.convert_own:main",
            "nnUNetv2_semisup_add_unlabeled = nnunetv2_semisup_conversion.add_unlabeled:main",
        ],
    },
)
