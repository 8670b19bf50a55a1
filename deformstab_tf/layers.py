"""The package's Keras layers in one namespace (``deformstab_tf.layers``)."""

from deformstab_tf.deformations.layers import (
    BaseRandomDeformation,
    RandomAffine,
    RandomDiffeomorphism,
    RandomThinPlateSpline,
)
from deformstab_tf.models.downsampling import BlurPool2D, Subsample2D

__all__ = [
    "BaseRandomDeformation",
    "BlurPool2D",
    "RandomAffine",
    "RandomDiffeomorphism",
    "RandomThinPlateSpline",
    "Subsample2D",
]
