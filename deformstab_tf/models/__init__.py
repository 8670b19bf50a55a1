"""Functional-API CNNs whose interleaved downsampling is a switch, and their layers.

- `build_vgg`, `cifar_vgg`, `imagenet_vgg`: VGG-style nets of Ruderman et al. (2018).
- `build_resnet`, `resnet18`: ResNets whose stage-entry downsampling follows the same switch.
- `DOWNSAMPLING`: the valid values of the `downsample` switch.
- `Subsample2D`, `BlurPool2D`: the downsampling layers Keras lacks.
- `BatchNormalization`: Keras's, on TensorFlow's fused kernel (2x faster `cifar_vgg` steps).
- `downsampling_layers`: maps a switch value to the layers of one downsampling unit.
- `probe_layer_names`: the probe points (`input`, `block{b}_conv{k}`, `block{b}_down`, ...) in
  forward order, for the stability measures.
- `fully_connected`, `lenet`, `mobilenet_v2`, `efficientnet_b0`: reference architectures of
  Petrini et al.'s (2021) CIFAR-10 comparison (no switch; probed at the `"units"` selection).
- `recalibrate_batch_norm`: re-estimates BatchNormalization's moving statistics after a
  transform of the weights (e.g. the permutation below).
- `permute_input_channels`: a copy whose convolutions have their input channels permuted per
  filter (Tomasini et al. 2022's channel-pooling test).
"""

from deformstab_tf.models.downsampling import (
    DOWNSAMPLING,
    BlurPool2D,
    Subsample2D,
    binomial_filter,
    downsampling_layers,
    probe_layer_names,
)
from deformstab_tf.models.normalization import BatchNormalization, recalibrate_batch_norm
from deformstab_tf.models.permutation import permute_input_channels
from deformstab_tf.models.reference import efficientnet_b0, fully_connected, lenet, mobilenet_v2
from deformstab_tf.models.resnet import build_resnet, resnet18
from deformstab_tf.models.vgg import build_vgg, cifar_vgg, imagenet_vgg

__all__ = [
    "DOWNSAMPLING",
    "BatchNormalization",
    "BlurPool2D",
    "Subsample2D",
    "binomial_filter",
    "build_resnet",
    "build_vgg",
    "cifar_vgg",
    "downsampling_layers",
    "efficientnet_b0",
    "fully_connected",
    "imagenet_vgg",
    "lenet",
    "mobilenet_v2",
    "permute_input_channels",
    "probe_layer_names",
    "recalibrate_batch_norm",
    "resnet18",
]
