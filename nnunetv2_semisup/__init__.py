"""Semi-supervised 3D segmentation on nnU-Net v2: M&N, SKCDF, CML and Mean Teacher trainers."""
__version__ = "0.1.0"
