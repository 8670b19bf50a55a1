"""Permuting the input channels of every convolution: Tomasini et al.'s channel-pooling test."""

from __future__ import annotations

import keras
import numpy as np

from deformstab_tf._validation import check_model, check_names, check_seed
from deformstab_tf.deformations._backend import to_numpy

PERMUTABLE_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
"""The layer classes whose kernels `permute_input_channels` permutes (with `groups == 1`)."""


def permute_input_channels(model, seed=None, layers=None):
    """A copy of `model` whose convolutions have their input channels permuted, independently per
    filter.

    Tomasini, Petrini, Cagnetta & Wyart (2022, "How deep convolutional neural networks lose
    spatial information with training") find that trained CNNs become stable to diffeomorphisms
    by spatial pooling in early layers and by *channel pooling* in later ones: a filter sums
    aligned responses of many input channels. Their test destroys channel pooling but keeps the
    spatial structure: in every convolution, each 2-D spatial filter `W[:, :, c, o]` is kept
    intact but connected to another input channel, by a random permutation of the input-channel
    axis drawn independently for each output channel `o`:

        W'[:, :, i, o] = W[:, :, perm_o[i], o]

    Measuring the stability of the permuted copy (e.g. with `relative_stability`) against the
    original's tells how much of it the channel pooling built. Per layer, each filter keeps its
    multiset of spatial slices, so `kernel_smoothness` is unchanged; so are biases,
    BatchNormalization and every other weight. A model whose filters are identical across input
    channels computes the same function after the permutation.

    The permutations are drawn by this recipe (the same `seed` gives the same model):

        rng = numpy.random.default_rng(seed)
        for layer in the selected convolutions, in forward order:
            for o in range(out_channels):
                perm_o = rng.permutation(in_channels)

    "Forward order" is the order of `model.layers` (topological for functional models), where a
    nested model is entered depth-first at its place; a layer shared by several places counts
    once, at its first place. Only the layers actually permuted draw: unselected layers and
    convolutions with one input channel (nothing to permute: they are left alone) consume no
    random numbers.

    Which layers: `Conv1D`, `Conv2D` and `Conv3D` (and their subclasses) with `groups == 1`,
    including the stride-2 convolutions of the `strided` and `strided_relu` downsampling, the
    1x1 shortcut convolutions of the ResNets and the first convolution, whose input is the
    image (Tomasini et al. permute every layer; use `layers` to spare it). The kernel layout is
    `(*spatial, in, out)` whatever the layer's `data_format`. Left alone: depthwise
    convolutions (`DepthwiseConv2D` and the package's `BlurPool2D`: each filters one channel,
    there is no channel pooling to destroy), `SeparableConv2D` (its 1x1 pointwise kernel
    included), grouped convolutions (`groups > 1`), transposed convolutions, dense layers and
    LoRA-enabled convolutions (their kernel is a sum of variables).

    Args:
        model: a built `keras.Model` (functional or Sequential; subclassed models are copied
            through Keras serialization and must build on deserialization). It is not modified.
        seed: int in `[0, 2**32)` for reproducible permutations; None draws fresh entropy.
        layers: None (every permutable convolution, nested models included), or a layer name
            or list of layer names of permutable convolutions with at least two input channels
            (a name shared by several layers of nested models selects all of them).

    Returns:
        A new, uncompiled `keras.Model` of the same architecture, layer names and dtype
        policies (variables keep their dtype, e.g. float32 under `mixed_bfloat16`), with the
        permuted kernels and all other weights copied.

    Raises:
        TypeError: if `model` is not a `keras.Model`, or `layers` not a string or list of
            strings.
        ValueError: if `seed` is not None or an integer in `[0, 2**32)`; if `layers` names a
            layer that is not a permutable convolution with two or more input channels; if the
            model has no such convolution, is not built, or cannot be copied with its weights.

    Example:

    >>> model = deformstab_tf.build_vgg([(4,), (8,)], input_shape=(8, 8, 3))
    >>> permuted = permute_input_channels(model, seed=0)
    >>> [layer.name for layer in permuted.layers] == [layer.name for layer in model.layers]
    True
    >>> w, w_perm = (ops.convert_to_numpy(m.get_layer("block1_conv1_conv").kernel)
    ...              for m in (model, permuted))
    >>> perm_0 = np.random.default_rng(0).permutation(3)   # first draw: layer 1, filter 0
    >>> np.array_equal(w_perm[:, :, :, 0], w[:, :, perm_0, 0])
    True
    """
    check_model("model", model)
    check_seed("seed", seed, allow_none=True)
    selected = None if layers is None else check_names("layers", layers, allow_empty=False)

    originals = list(_unique_layers(model))
    unbuilt = [
        layer.name
        for layer in originals
        if isinstance(layer, PERMUTABLE_CONVOLUTIONS) and not layer.built
    ]
    if unbuilt:
        raise ValueError(
            f"`model` must be built (call it on data or build it with an input shape); its "
            f"convolutions {', '.join(repr(n) for n in unbuilt)} have no kernel yet. Received "
            f"model={model.name!r}."
        )
    permutable = [
        index for index, layer in enumerate(originals) if _why_not_permutable(layer) is None
    ]
    valid_names = list(dict.fromkeys(originals[index].name for index in permutable))
    if not permutable:
        raise ValueError(
            "`model` has no convolution whose input channels can be permuted (Conv1D, Conv2D or "
            "Conv3D with groups=1 and at least two input channels); received "
            f"model={model.name!r}."
        )
    if selected is not None:
        unknown = [name for name in dict.fromkeys(selected) if name not in valid_names]
        if unknown:
            by_name = {}
            for layer in originals:
                by_name.setdefault(layer.name, layer)
            reasons = "; ".join(
                f"{name!r} "
                + (
                    _why_not_permutable(by_name[name])
                    if name in by_name
                    else "is not a layer of the model"
                )
                for name in unknown
            )
            raise ValueError(
                f"Invalid `layers`: received layers={layers!r}. {reasons}. Valid names: "
                f"{', '.join(repr(n) for n in valid_names)}."
            )
        permutable = [index for index in permutable if originals[index].name in selected]

    copy = _copy_with_weights(model)
    copies = list(_unique_layers(copy))
    if [_identity(layer) for layer in copies] != [_identity(layer) for layer in originals]:
        raise ValueError(
            f"`model` could not be copied layer for layer by keras.models.clone_model; received "
            f"model={model.name!r}."
        )
    rng = np.random.default_rng(seed)
    for index in permutable:
        kernel = copies[index].kernel
        weights = to_numpy(kernel)
        in_channels, out_channels = weights.shape[-2:]
        perms = np.stack([rng.permutation(in_channels) for _ in range(out_channels)], axis=1)
        # perms[i, o] = perm_o[i]; broadcast over the spatial axes of the kernel.
        index_array = perms.reshape((1,) * (weights.ndim - 2) + perms.shape)
        kernel.assign(np.take_along_axis(weights, index_array, axis=-2))
    return copy


def _unique_layers(model):
    """The layers of `model` in forward order, nested models entered depth-first, each once."""
    seen = set()

    def walk(parent):
        for layer in getattr(parent, "layers", []):
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            yield layer
            if isinstance(layer, keras.Model):
                yield from walk(layer)

    yield from walk(model)


def _identity(layer):
    """What must match between a layer and its clone (clones rename auto-named inputs)."""
    if isinstance(layer, keras.layers.InputLayer):
        return type(layer)
    return type(layer), layer.name


def _why_not_permutable(layer):
    """None if `permute_input_channels` permutes `layer`, else why not (after its name)."""
    if not isinstance(layer, PERMUTABLE_CONVOLUTIONS):
        kind = type(layer).__name__
        if isinstance(layer, keras.layers.DepthwiseConv2D) or kind == "BlurPool2D":
            return f"is a {kind} (depthwise: no channel pooling to permute)"
        return f"is a {kind}, not a Conv1D/Conv2D/Conv3D"
    if layer.groups != 1:
        return f"is a grouped convolution (groups={layer.groups})"
    if getattr(layer, "lora_enabled", False):
        return "has LoRA enabled (its kernel is a sum of variables)"
    if layer.kernel.shape[-2] < 2:
        return "has one input channel (nothing to permute)"
    return None


def _copy_with_weights(model):
    """`keras.models.clone_model(model)` with the weights of `model`."""
    copy = keras.models.clone_model(model)
    try:
        copy.set_weights(model.get_weights())
    except ValueError as error:
        raise ValueError(
            f"`model` could not be copied with its weights by keras.models.clone_model "
            f"({str(error).splitlines()[0]}); received model={model.name!r}."
        ) from None
    return copy
