"""The package's Keras layers in one namespace (``deformstab_tf.layers``)."""

from deformstab_tf.deformations.layers import (
    BaseRandomDeformation,
    RandomAffine,
    RandomDiffeomorphism,
    RandomThinPlateSpline,
)

__all__ = [
    "BaseRandomDeformation",
    "RandomAffine",
    "RandomDiffeomorphism",
    "RandomThinPlateSpline",
]
