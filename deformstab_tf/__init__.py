"""deformstab_tf: deformation layers, switchable-downsampling CNNs and stability measures.

- `deformstab_tf.deformations`: displacement fields (TPS, affine, diffeomorphism), the one
  resampler `warp` (and `warp_affine`, straight from 2x3 matrices), integer `shift`, boxes and
  keypoints through a field (`deform_boxes`, `deform_keypoints`), and the random deformation
  layers.
- `deformstab_tf.layers`: every Keras layer of the package in one namespace.
- `deformstab_tf.models`: VGG / ResNet builders whose downsampling is a switch, and reference
  architectures (fully connected, LeNet, MobileNetV2, EfficientNetB0).
- `deformstab_tf.measures`: per-layer sensitivity, relative stability, shift consistency,
  translation-sensitivity maps and kernel smoothness (and images' local homogeneity);
  `StabilityCallback` runs them during `model.fit`.
- `deformstab_tf.data`: the synthetic task, TFDS and image-folder sources for training.
- `deformstab_tf.training`: resumable training runs (what `trainers/train.py` runs).
- `deformstab_tf.reports`: stability reports of saved models; reading run directories.
- `deformstab_tf.plots`: per-layer profile figures.
"""

from deformstab_tf import data
from deformstab_tf.callbacks import StabilityCallback
from deformstab_tf.deformations import (
    DEFORMATION_LAYERS,
    RandomAffine,
    RandomDiffeomorphism,
    RandomThinPlateSpline,
    affine_displacement,
    affine_matrices,
    deform_boxes,
    deform_keypoints,
    deformation_layer,
    diffeo_displacement,
    shift,
    tps_displacement,
    tps_displacement_from_points,
    warp,
    warp_affine,
)
from deformstab_tf.measures import (
    MeasureResult,
    kernel_smoothness,
    local_homogeneity,
    normalized_sensitivity,
    relative_stability,
    shift_consistency,
    similarity_map,
    smooth_kernels,
    translation_sensitivity_map,
)
from deformstab_tf.models import (
    DOWNSAMPLING,
    BlurPool2D,
    Subsample2D,
    build_resnet,
    build_vgg,
    cifar_vgg,
    efficientnet_b0,
    fully_connected,
    imagenet_vgg,
    lenet,
    mobilenet_v2,
    permute_input_channels,
    probe_layer_names,
    recalibrate_batch_norm,
    resnet18,
)
from deformstab_tf.plots import plot_profile

__version__ = "0.1.0"

__all__ = [
    "DEFORMATION_LAYERS",
    "DOWNSAMPLING",
    "BlurPool2D",
    "MeasureResult",
    "RandomAffine",
    "RandomDiffeomorphism",
    "RandomThinPlateSpline",
    "StabilityCallback",
    "Subsample2D",
    "affine_displacement",
    "affine_matrices",
    "build_resnet",
    "build_vgg",
    "cifar_vgg",
    "data",
    "deform_boxes",
    "deform_keypoints",
    "deformation_layer",
    "diffeo_displacement",
    "efficientnet_b0",
    "fully_connected",
    "imagenet_vgg",
    "kernel_smoothness",
    "lenet",
    "local_homogeneity",
    "mobilenet_v2",
    "normalized_sensitivity",
    "permute_input_channels",
    "plot_profile",
    "probe_layer_names",
    "recalibrate_batch_norm",
    "relative_stability",
    "resnet18",
    "shift",
    "shift_consistency",
    "similarity_map",
    "smooth_kernels",
    "tps_displacement",
    "tps_displacement_from_points",
    "translation_sensitivity_map",
    "warp",
    "warp_affine",
]
