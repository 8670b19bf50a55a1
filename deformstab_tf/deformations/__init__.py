"""Deformations: displacement fields, the one resampler, keypoints and boxes through a field,
and random deformation layers."""

from deformstab_tf.deformations.affine import affine_displacement, affine_matrices
from deformstab_tf.deformations.diffeo import (
    diffeo_displacement,
    temperature_for_displacement,
    temperature_range,
    typical_displacement,
)
from deformstab_tf.deformations.layers import (
    DEFORMATION_LAYERS,
    BaseRandomDeformation,
    RandomAffine,
    RandomDiffeomorphism,
    RandomThinPlateSpline,
    deformation_layer,
)
from deformstab_tf.deformations.points import deform_boxes, deform_keypoints
from deformstab_tf.deformations.tps import (
    control_grid,
    tps_displacement,
    tps_displacement_from_points,
    tps_interpolation_matrix,
)
from deformstab_tf.deformations.warp import FILL_MODES, INTERPOLATIONS, shift, warp, warp_affine

__all__ = [
    "DEFORMATION_LAYERS",
    "FILL_MODES",
    "INTERPOLATIONS",
    "BaseRandomDeformation",
    "RandomAffine",
    "RandomDiffeomorphism",
    "RandomThinPlateSpline",
    "affine_displacement",
    "affine_matrices",
    "control_grid",
    "deform_boxes",
    "deform_keypoints",
    "deformation_layer",
    "diffeo_displacement",
    "shift",
    "temperature_for_displacement",
    "temperature_range",
    "tps_displacement",
    "tps_displacement_from_points",
    "tps_interpolation_matrix",
    "typical_displacement",
    "warp",
    "warp_affine",
]
