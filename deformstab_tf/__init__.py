"""deformstab_tf: deformation layers, switchable-downsampling CNNs and stability measures for Keras 3."""

__version__ = "0.1.0"
