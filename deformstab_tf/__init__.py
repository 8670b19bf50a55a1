"""deformstab_tf: deformation layers, switchable-downsampling CNNs and stability measures."""

__version__ = "0.1.0"
