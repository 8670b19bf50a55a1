"""Layer-wise deformation-stability measures.

- `normalized_sensitivity`: Ruderman et al. (2018), cosine distance to the deformed image over the
  median distance between probe images, per probe point.
- `relative_stability`: Petrini et al. (2021) / Tomasini et al. (2022), `R = D / G`, stability to a
  deformation relative to noise of the same norm, per probe point.
- `shift_consistency`: Zhang (2019), agreement of top-1 predictions under two random shifts.
- `translation_sensitivity_map`: Myburgh et al. (2021), cosine similarity of representations to
  those of translated images over a grid of offsets, per probe point (`similarity_map` reads a
  map); `local_homogeneity`: Mouton et al.'s similarity of neighbouring pixels of images.
- `kernel_smoothness`, `smooth_kernels`: TV / L1 of convolution kernels and the Gaussian-smoothing
  intervention.
- `MeasureResult`: the mapping `probe name -> value` they return.
- `ProbeFeatures`: the single multi-output feature extractor the representation measures share.
"""

from deformstab_tf.measures.consistency import shift_consistency
from deformstab_tf.measures.features import (
    INPUT,
    SELECTIONS,
    ProbeFeatures,
    default_probe_layer_names,
    resolve_probe_layers,
)
from deformstab_tf.measures.relative_stability import relative_stability
from deformstab_tf.measures.results import MeasureResult
from deformstab_tf.measures.sensitivity import normalized_sensitivity
from deformstab_tf.measures.smoothness import kernel_smoothness, smooth_kernels
from deformstab_tf.measures.translation import (
    local_homogeneity,
    similarity_map,
    translation_sensitivity_map,
)

__all__ = [
    "INPUT",
    "MeasureResult",
    "SELECTIONS",
    "ProbeFeatures",
    "default_probe_layer_names",
    "kernel_smoothness",
    "local_homogeneity",
    "normalized_sensitivity",
    "relative_stability",
    "resolve_probe_layers",
    "shift_consistency",
    "similarity_map",
    "smooth_kernels",
    "translation_sensitivity_map",
]
