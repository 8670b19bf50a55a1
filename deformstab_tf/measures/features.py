"""Probe points, the one multi-output feature extractor, and streaming pairwise distances.

Every representation-based measure reads the network through `ProbeFeatures`: a single
`keras.Model(model.input, [outputs of all probe layers])`, run with `training=False`, so one forward
pass per batch yields every probe point. Reductions (norms, normalisation, Gram blocks, distances
between an image and its perturbed copy) happen on the device inside compiled functions written
in `keras.ops` (`tf.function`s on TensorFlow, `jax.jit` on JAX: the measures run on the active
Keras backend); only small per-image and per-pair numbers reach the host.

Pairwise distances between the N probe images come from Gram matrices built block by block
(`ProbeFeatures.distances`), so the memory is O(N^2) numbers per probe point plus the features of
two batches; all N representations are never held at once.

Which models: functional and `Sequential` models are probed anywhere (nested models too). A
model with several inputs is measured at its image input (the first input of rank 4), with the
other inputs given as `extra_inputs` and held fixed. A model without a graph (a subclassed
`keras.Model`) can only be probed at its input and output: that is what is measured, with a
warning.

Tracing: each `ProbeFeatures` traces its functions once (they contain the model; on JAX once
per batch shape); they are distinct functions per model, so measuring a model zoo in one process
retraces nothing.
"""

import collections
import contextlib
import dataclasses
import functools
import hashlib
import math
import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf

from deformstab_tf import _keras_internals as internals
from deformstab_tf._validation import check_model, check_names
from deformstab_tf.deformations._backend import (
    compiled_reading,
    full_float32_precision,
    is_numeric,
    to_numpy,
)

INPUT = "input"  # the probe name of the model's input (the images themselves)
OUTPUT = "output"  # the probe name of a subclassed model's output
DEFAULT_CACHE = 2**30  # bytes of clean features kept for the pairwise distances (1 GiB)
# Probe images whose values exceed this, fed to a model without a rescaling layer, look like
# 0..255 pixels given to a model trained on [0, 1] (standardised images stay below ~5).
FAR_ABOVE_ONE = 10.0
# Representations at least this large (floats per image) are normalised in one compiled pass.
FUSED_WIDTH = 2**16

# ProbeFeatures per model and probe names. Weak keys, and probes hold the model weakly, so an
# entry lives exactly as long as its model.
_PROBES = weakref.WeakKeyDictionary()

# Probe points of models not built by `deformstab_tf.models` (named selections, `layers=`).
SELECTIONS = ("units", "activations", "blocks", "all")

_UNIT_TYPES = (  # a unit starts at one of these ...
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv2DTranspose,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
)
_FOLLOWER_TYPES = (  # ... and ends after the normalisations and activations that follow it
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Softmax,
)
_ACTIVATION_TYPES = _FOLLOWER_TYPES[3:]
_POOLING_TYPES = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)
_MERGE_TYPES = (
    keras.layers.Add,
    keras.layers.Concatenate,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
)

# Per model: its layers (nested models inlined) and the inlined symbolic graph. Weak keys: an
# entry lives as long as its model.
_GRAPHS = weakref.WeakKeyDictionary()


def default_probe_layer_names(model):
    """The default probe points of `model`, in forward order.

    For a model built by `deformstab_tf.models` this is `probe_layer_names(model)` (`input`, every
    conv unit after its ReLU, every downsampling unit). For any other model it is the selection
    `"units"` (see `resolve_probe_layers`): `input` and the output of every unit — the last
    normalisation or activation that follows a convolution or dense layer — and every pooling
    layer, also inside nested models (`"resnet50/conv2_block1_1_relu"`).
    """
    try:
        from deformstab_tf.models import probe_layer_names

        return list(probe_layer_names(model))
    except (ImportError, ValueError):
        pass
    return _select(model, "units")


def resolve_probe_layers(model, layers=None):
    """Validates a `layers` argument and returns probe names in forward order.

    Probe names are layer names; a layer inside a nested model (a functional or `Sequential`
    model used as a layer, e.g. a Keras Applications backbone) is named by its path,
    `"<nested model>/<layer>"`; `"input"` is the model's input.

    Args:
        model: a single-input Keras model (functional or `Sequential`).
        layers: `None` for `default_probe_layer_names(model)`; a list of names; a predicate
            `layer -> bool` evaluated on every layer (nested ones included); or a named
            selection:
            - `"units"` (the default for models not built here): the output of each unit, the
              last normalisation / activation following a convolution or dense layer (the
              layer itself when nothing follows it), and every pooling layer — the
              representations after the non-linearity, as the papers measure them;
            - `"activations"`: every activation layer, and every convolution or dense layer
              with a built-in non-linear `activation`;
            - `"blocks"`: block outputs — every merge layer (`Add`, `Concatenate`, ...: the
              `*_add` of ResNets and MobileNets), or the activation that directly follows it
              (ResNet's `*_out`);
            - `"all"`: every layer.
            Each selection starts with `"input"`. (To probe a layer named like a selection,
            pass it in a list.)

    A model without a graph (a subclassed `keras.Model`) has two probe points, `"input"` and
    `"output"`: `layers` may be `None`, a named selection or a list of those two names.

    Returns:
        A list of probe names.

    Raises:
        ValueError: if a name is unknown (the message lists the available names) or nothing is
            selected.
    """
    if not _has_graph(model):
        return _subclassed_probe_names(model, layers)
    if layers is None:
        return default_probe_layer_names(model)
    entries = _graph(model)["entries"]
    if isinstance(layers, str) and layers in SELECTIONS:
        names = _select(model, layers)
    elif callable(layers):
        names = list(
            dict.fromkeys(
                INPUT if isinstance(layer, keras.layers.InputLayer) else name
                for name, layer in entries
                if layers(layer)
            )
        )
    elif isinstance(layers, (str, list, tuple)):
        names = list(check_names("layers", layers))
    else:
        raise TypeError(
            "`layers` must be None, a named selection, a list of layer names or a predicate on "
            f"layers; received layers={layers!r}."
        )
    if not names:
        raise ValueError(f"`layers` selects no probe point. Received: layers={layers!r}")
    available = [INPUT] + [
        name for name, layer in entries if not isinstance(layer, keras.layers.InputLayer)
    ]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(
            f"`layers` names unknown layers {unknown} of model {model.name!r}. "
            f"Available: {available}"
        )
    return names


def _has_graph(model):
    """Whether `model` has a functional graph to probe (functional, or a built `Sequential`)."""
    return _functional_of(model) is not None


NO_GRAPH_ADVICE = (
    "To probe its inner layers, give it a graph: build it with the functional API, or wrap it "
    "if its `call` is made of Keras layers and ops: `inputs = keras.Input(shape); "
    "functional = keras.Model(inputs, model.call(inputs))` (the same layers and weights)."
)


def _subclassed_probe_names(model, layers):
    """`["input", "output"]` (or the requested subset) of a model without a graph."""
    if layers is None or (isinstance(layers, str) and layers in SELECTIONS):
        return [INPUT, OUTPUT]
    if callable(layers) and not isinstance(layers, str):
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) has no graph of layers to select "
            f"from with a predicate; received layers={layers!r}. Only 'input' and 'output' can "
            f"be probed. {NO_GRAPH_ADVICE}"
        )
    names = [layers] if isinstance(layers, str) else list(layers)
    unknown = [name for name in names if name not in (INPUT, OUTPUT)]
    if unknown or not names:
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) has no graph of layers (a subclassed "
            f"model): only 'input' and 'output' can be probed; received layers={layers!r}. "
            f"{NO_GRAPH_ADVICE}"
        )
    return list(dict.fromkeys(names))


def image_input_index(model):
    """The position in `model.inputs` of the input the probe images feed: the first input of
    rank 4 (`(batch, H, W, C)`), else the first input. 0 for a model without a graph."""
    inputs = _model_inputs(model)
    if not inputs:
        return 0
    ranks = [len(tensor.shape) for tensor in inputs]
    return ranks.index(4) if 4 in ranks else 0


def _model_inputs(model):
    """`model.inputs` (a flat list of symbolic tensors), or None for a model without a graph."""
    if not _has_graph(model):
        return None
    return list(keras.tree.flatten(model.inputs))


def _select(model, selection):
    """The names of a named selection, `"input"` first, in forward order."""
    graph = _graph(model)
    entries, consumers = graph["entries"], graph["consumers"]
    position = {name: i for i, (name, _) in enumerate(entries)}

    def follow(name):
        # Along single consumers of follower type (BN, activations): the end of the unit.
        while len(consumers.get(name, [])) == 1:
            (successor,) = consumers[name]
            if not isinstance(dict(entries)[successor], _FOLLOWER_TYPES):
                break
            name = successor
        return name

    chosen = []
    for name, layer in entries:
        if isinstance(layer, keras.layers.InputLayer) or _functional_of(layer) is not None:
            continue
        fused = _has_nonlinear_activation(layer)
        if selection == "all":
            chosen.append(name)
        elif selection == "units":
            if isinstance(layer, _UNIT_TYPES):
                chosen.append(name if fused else follow(name))
            elif isinstance(layer, _POOLING_TYPES):
                chosen.append(name)
        elif selection == "activations":
            if isinstance(layer, _ACTIVATION_TYPES) or fused:
                chosen.append(name)
        elif isinstance(layer, _MERGE_TYPES):  # blocks
            end = name
            for successor in consumers.get(name, []):
                if len(consumers[name]) == 1 and isinstance(
                    dict(entries)[successor], _ACTIVATION_TYPES
                ):
                    end = successor
            chosen.append(end)
    unique = sorted(set(chosen), key=position.get)
    return [INPUT] + unique


def _has_nonlinear_activation(layer):
    activation = getattr(layer, "activation", None)
    return activation is not None and getattr(activation, "__name__", "") not in ("linear", "")


def _functional_of(layer):
    """The functional graph of a nested model (functional or built `Sequential`), or None."""
    return internals.functional_graph(layer)


def _graph(model):
    """`{"entries": [(name, layer)], "consumers": {name: [names]}}` of `model`, nested models
    inlined (names `outer/inner`), in forward order; cached per model."""
    if model not in _GRAPHS:
        entries, consumers = [], {}

        def walk(graph, prefix):
            members = set(map(id, graph.layers))
            # Only this graph's own calls: inlining (below) calls the layers again.
            nodes = internals.graph_node_ids(graph)
            for layer in graph.layers:
                name = prefix + layer.name
                if isinstance(layer, keras.layers.InputLayer) and prefix:
                    continue  # a nested model's input is its caller's tensor
                entries.append((name, layer))
                consumers[name] = list(
                    dict.fromkeys(
                        prefix + node.operation.name
                        for node in internals.outbound_nodes(layer)
                        if node.operation is not None
                        and id(node.operation) in members
                        and id(node) in nodes
                    )
                )
                inner = _functional_of(layer)
                if inner is not None:
                    walk(inner, name + "/")

        walk(_functional_of(model) or model, "")
        _GRAPHS[model] = {"entries": entries, "consumers": consumers}
    return _GRAPHS[model]


def _probe_outputs(model, names):
    """The input and the symbolic outputs of `names`, for one multi-output extractor.

    Top-level names read the model's own graph. A name inside a nested model needs a tensor
    of the outer graph, so then the model is re-run symbolically on a new input with nested
    models inlined (the layers, and so the weights, are shared); a layer called several times
    is probed at its first call.
    """
    model_inputs = _model_inputs(model)
    image = model_inputs[image_input_index(model)]
    if not any("/" in name for name in names):
        return model_inputs, [
            image if name == INPUT else model.get_layer(name).output for name in names
        ]
    graph = _graph(model)
    if "inlined" not in graph:
        recorded = {}

        def operation_fn(prefix):
            def wrap(operation):
                inner = _functional_of(operation)

                def call(*args, **kwargs):
                    if inner is not None:
                        outputs = internals.run_through_graph(
                            inner,
                            args[0] if len(args) == 1 else args,
                            operation_fn(f"{prefix}{operation.name}/"),
                        )
                    else:
                        outputs = operation(*args, **kwargs)
                    recorded.setdefault(prefix + operation.name, outputs)
                    return outputs

                return call

            return wrap

        new_inputs = [
            keras.Input(
                batch_shape=tensor.shape,
                dtype=tensor.dtype,
                name=f"{model.name}_input" if len(model_inputs) == 1 else f"{model.name}_input{i}",
            )
            for i, tensor in enumerate(model_inputs)
        ]
        root = _functional_of(model) or model
        structure = keras.tree.pack_sequence_as(internals.inputs_struct(root), new_inputs)
        internals.run_through_graph(root, structure, operation_fn(""))
        recorded[INPUT] = new_inputs[image_input_index(model)]
        graph["inlined"] = (new_inputs, recorded)
    new_inputs, recorded = graph["inlined"]
    return new_inputs, [recorded[name] for name in names]


def check_probe_images(model, images, min_images=2):
    """Converts `images` to a float tensor and checks it against the model's (image) input.

    Probe images are compared with each other (the measures normalise by distances between
    distinct probe images), so at least `min_images` of them must differ. Their range should be
    the one the model was trained on; a `UserWarning` says when it does not look like it: integer
    (e.g. uint8) images or values far above 1 (> `FAR_ABOVE_ONE`) for a model without a
    `Rescaling` / `Normalization` layer, or images within `[-1, 1]` for a model whose
    `Rescaling` layer expects 0..255 pixels.

    Args:
        model: a single-input Keras model.
        images: `(N, H, W, C)` numeric probe images.
        min_images: the fewest distinct images accepted.

    Returns:
        The images as a tensor of the model input's float dtype.

    Raises:
        ValueError: naming `images` if its shape does not match the model input, it holds
            non-finite values or fewer than `min_images` distinct images, and for a model
            with several inputs (their other inputs are given to the measures as
            `extra_inputs`).
        TypeError: naming `images` / `model` if they are not numeric images / a Keras model.

    Example:

    >>> model = ds.build_vgg([[4], [8]], input_shape=(16, 16, 3), num_classes=3)
    >>> check_probe_images(model, np.zeros((8, 16, 16, 3)))
    Traceback (most recent call last):
    ValueError: `images` must hold at least 2 distinct probe images ... of which 1 distinct.
    """
    return check_probe_inputs(model, images, None, min_images)[0]


def check_probe_inputs(model, images, extra_inputs=None, min_images=2):
    """`check_probe_images`, and the model's other inputs for a model with several.

    Args:
        model: the measured Keras model.
        images: `(N, H, W, C)` probe images for the model's image input (see
            `image_input_index`).
        extra_inputs: `None` for a single-input model; for a model with several inputs, the
            others, one row per probe image, held fixed while the images are perturbed: a dict
            `{input name: array}`, a list of arrays in the order of `model.inputs` (the image
            input left out), or one array when there is one other input.
        min_images: the fewest distinct probe images accepted.

    Returns:
        `(images, extras)`: the images as a float tensor, and the other inputs as tensors in the
        order of `model.inputs` (an empty list for a single-input model).

    Raises:
        ValueError: naming `images` or `extra_inputs` and what was received.
        TypeError: naming `images` / `model` if they are not numeric images / a Keras model.
    """
    check_model("model", model)
    try:
        raw = to_numpy(images)
        raw_dtype = keras.backend.standardize_dtype(raw.dtype)
    except (TypeError, ValueError):
        raw, raw_dtype = None, None
    if raw is None or not is_numeric(raw_dtype):
        raise TypeError(
            "`images` must be a numeric array of images (float or integer); received "
            f"{type(images).__name__}"
            + (f" of dtype {raw_dtype}." if raw is not None else f": {images!r:.80}.")
        )
    inputs = _model_inputs(model)
    if inputs is None:  # no graph: the model's own call checks the shape
        if extra_inputs is not None:
            raise ValueError(
                f"`extra_inputs` is for functional models with several inputs; model "
                f"{model.name!r} ({type(model).__name__}) has no graph of inputs. Received "
                f"extra_inputs of type {type(extra_inputs).__name__}."
            )
        images = keras.ops.cast(raw, "float32")
        expected = None
    else:
        image_index = image_input_index(model)
        input_spec = inputs[image_index]
        images = keras.ops.cast(raw, _probe_dtype(model))
        expected = tuple(input_spec.shape)
    received = tuple(images.shape)
    if expected is not None and (
        len(received) != len(expected)
        or any(e is not None and e != r for e, r in zip(expected[1:], received[1:], strict=True))
    ):
        raise ValueError(
            f"`images` has shape {received} but model {model.name!r} expects {expected} "
            "(a batch of images)."
        )
    values = to_numpy(images, np.float32)  # as the model sees them
    if not np.isfinite(values).all():
        count = int((~np.isfinite(values)).sum())
        raise ValueError(f"`images` must be finite; they hold NaN or inf in {count} entries.")
    if received[0] < min_images:
        raise ValueError(
            f"`images` must hold at least {min_images} probe images; received {received[0]} "
            f"(shape {received})."
        )
    check_distinct_images(values, min_images)
    _check_range(model, raw_dtype, values)
    if inputs is None:
        return images, []
    others = [tensor for i, tensor in enumerate(inputs) if i != image_index]
    return images, _check_extra_inputs(model, others, extra_inputs, received[0])


def input_name(tensor):
    """The name of a model input: its `InputLayer`'s (`keras.Input(..., name=...)`)."""
    history = internals.keras_history(tensor)
    return history.operation.name if history is not None else tensor.name


def _check_extra_inputs(model, others, extra_inputs, num_images):
    """The other inputs of `model` (symbolic `others`) as tensors, from `extra_inputs`."""
    names = [input_name(tensor) for tensor in others]
    if not others:
        if extra_inputs is not None:
            raise ValueError(
                f"Model {model.name!r} has a single input; `extra_inputs` is for models with "
                f"several. Received extra_inputs of type {type(extra_inputs).__name__}."
            )
        return []
    if extra_inputs is None:
        raise ValueError(
            f"Model {model.name!r} has {len(others) + 1} inputs; the probe images feed "
            f"{input_name(_model_inputs(model)[image_input_index(model)])!r} (the first input of "
            "rank 4). Pass "
            f"the others, {names}, one row per probe image, as `extra_inputs` (a dict by input "
            "name or a list in input order) to normalized_sensitivity, relative_stability or "
            "shift_consistency; they are held fixed while the images are perturbed. "
            "(StabilityCallback measures single-input models.)"
        )
    if isinstance(extra_inputs, dict):
        if sorted(extra_inputs) != sorted(names):
            raise ValueError(
                f"`extra_inputs` must name the model's other inputs, {names}; received the "
                f"keys {sorted(extra_inputs)}."
            )
        values = [extra_inputs[name] for name in names]
    elif isinstance(extra_inputs, (list, tuple)):
        values = list(extra_inputs)
    else:
        values = [extra_inputs]
    if len(values) != len(others):
        raise ValueError(
            f"`extra_inputs` must hold {len(others)} arrays, for the inputs {names}; received "
            f"{len(values)}."
        )
    checked = []
    for name, tensor, value in zip(names, others, values, strict=True):
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        value = keras.ops.convert_to_tensor(value, dtype=dtype)
        expected = tuple(tensor.shape)
        shape = tuple(value.shape)
        if (
            len(shape) != len(expected)
            or shape[0] != num_images
            or any(e is not None and e != r for e, r in zip(expected[1:], shape[1:], strict=True))
        ):
            raise ValueError(
                f"`extra_inputs` for input {name!r} must have shape {(num_images, *expected[1:])} "
                f"(one row per probe image); received shape {shape}."
            )
        checked.append(value)
    return checked


@contextlib.contextmanager
def float32_compute(model):
    """Inside the block, every layer of `model` (nested ones too) computes in float32.

    Measurements trace their forward passes inside it, so a model trained under a
    `mixed_bfloat16` or `mixed_float16` policy is measured in float32 with its own float32
    variables: a number then means the same whatever precision trained the model (a bf16
    forward pass moves sensitivities by up to ~5e-4). Only layers whose variables are float32
    and whose compute dtype is a 16-bit float change; the policies are restored on exit.

    Example:

    >>> keras.mixed_precision.set_global_policy("mixed_bfloat16")
    >>> model = ds.build_vgg([[4], [8]], input_shape=(16, 16, 3), num_classes=3)
    >>> keras.mixed_precision.set_global_policy("float32")
    >>> with float32_compute(model):
    ...     features = model.get_layer("block1_conv1_conv")(np.ones((1, 16, 16, 3)))
    >>> features.dtype, model.get_layer("block1_conv1_conv").compute_dtype
    (tf.float32, 'bfloat16')
    """
    changed = []
    for layer in internals.all_layers(model):
        policy = layer.dtype_policy
        if (
            policy.quantization_mode is None
            and policy.compute_dtype in ("float16", "bfloat16")
            and policy.variable_dtype == "float32"
        ):
            changed.append((layer, policy))
            layer.dtype_policy = "float32"
    try:
        yield model
    finally:
        for layer, policy in changed:
            layer.dtype_policy = policy


def check_distinct_images(images, min_images=2):
    """Raises a ValueError naming `images` unless at least `min_images` of them differ; warns
    when identical pairs are so many that the median distance between probe images is 0."""
    flat = to_numpy(images).reshape(images.shape[0], -1)
    counts = collections.Counter(
        hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat
    )
    if len(counts) < min_images:
        raise ValueError(
            f"`images` must hold at least {min_images} distinct probe images (the measures "
            f"normalise by the distances between them); received {len(flat)} images of which "
            f"{len(counts)} distinct."
        )
    identical = sum(c * (c - 1) // 2 for c in counts.values())
    pairs = len(flat) * (len(flat) - 1) // 2
    if 2 * identical >= pairs:
        warnings.warn(
            f"{identical} of the {pairs} pairs of probe images are identical: the median "
            "distance between probe images is 0, so the median-normalised measures are inf. "
            "Use distinct probe images.",
            UserWarning,
            stacklevel=4,
        )


def _check_range(model, raw_dtype, images):
    """Warns when the images' dtype (`raw_dtype`, as given) or range (`images`, as the model sees
    them, a numpy array) does not look like what the model takes."""
    high = float(np.abs(images).max())
    rescalings = [
        layer
        for layer in _all_layers(model)
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))
    ]
    pixel_scales = [
        layer
        for layer in rescalings
        if isinstance(layer, keras.layers.Rescaling)
        and np.ndim(layer.scale) == 0
        and 0 < float(layer.scale) <= 1 / 64
    ]
    message = None
    if pixel_scales and high <= 1.0:
        layer = pixel_scales[0]
        message = (
            f"model {model.name!r} rescales its input by {float(layer.scale):.4g} (layer "
            f"{layer.name!r}), so it expects 0..255 pixels, but `images` lie within [-1, 1]"
        )
    elif not rescalings and (high > FAR_ABOVE_ONE or ("int" in raw_dtype and high > 1)):
        message = (
            f"`images` look like 0..255 pixels ({raw_dtype}, values up to {high:g}) but "
            f"model {model.name!r} has no Rescaling or Normalization layer: models trained on "
            "[0, 1] images (as by this package's trainers) give meaningless numbers on them. "
            "Divide by 255, unless the model was trained on such values"
        )
    if message:
        warnings.warn(
            message + "; the measures see the images as the model does.",
            UserWarning,
            stacklevel=4,
        )


def _all_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)


def _probe_dtype(model):
    """Probe images are fed in the image input's float dtype (float32 for non-float inputs)."""
    inputs = _model_inputs(model)
    if inputs is None:
        return "float32"
    dtype = keras.backend.standardize_dtype(inputs[image_input_index(model)].dtype)
    return dtype if keras.backend.is_float_dtype(dtype) else "float32"


@dataclasses.dataclass
class ProbeDistances:
    """Distances at one probe point, as returned by `ProbeFeatures.distances`.

    Attributes:
        pairwise: `(N, N)` float64 distances between the clean probe images (diagonal 0).
        paired: `(P, N)` float64 distance between each clean image and its `p`-th perturbed copy.
        finite: False for a diverged network: when a representation at this probe point or at
            a probe point it is computed from (clean or perturbed) held NaN or inf, or a weight
            of a layer it is computed from is not finite; the measures then report NaN.
    """

    pairwise: np.ndarray
    paired: np.ndarray
    finite: bool = True

    def distinct_pairs(self):
        """The `N (N - 1) / 2` distances between distinct probe images (upper triangle)."""
        return self.pairwise[np.triu_indices(self.pairwise.shape[0], k=1)]


class ProbeFeatures:
    """The representations of a model at its probe points, from one multi-output extractor.

    Get one with `ProbeFeatures.for_model(model, layers)`: it is built once per model and set of
    probe points and reused, so its compiled functions trace once (repeated measurements, e.g. by
    `StabilityCallback` across epochs, pay no retracing). Its functions are its own, so many
    models measured in one process (a sweep, a model zoo) trace each once and retrace nothing.

    Args:
        model: a Keras model: functional or `Sequential` (probed anywhere; with several inputs,
            at its image input, see `check_probe_inputs`), or subclassed (probed at `"input"`
            and `"output"` only, with a warning).
        layers: probe points; see `resolve_probe_layers`.

    Example:

    >>> model = deformstab_tf.cifar_vgg("max")
    >>> probe = ProbeFeatures.for_model(model, ["input", "block1_conv1"])
    >>> features = probe.extractor(np.zeros((2, 32, 32, 3), "float32"))  # one per probe point
    >>> [tuple(f.shape) for f in features]
    [(2, 32, 32, 3), (2, 32, 32, 32)]
    """

    @classmethod
    def for_model(cls, model, layers=None):
        """The cached `ProbeFeatures` of `model` for these probe points (built on first use)."""
        names = resolve_probe_layers(model, layers)
        probes = _PROBES.setdefault(model, {})
        if tuple(names) not in probes:
            probes[tuple(names)] = cls(model, names)
        return probes[tuple(names)]

    def __init__(self, model, layers=None):
        self._model = weakref.ref(model)
        self.names = resolve_probe_layers(model, layers)
        vectors_spec = [tf.TensorSpec([None, None], tf.float32)] * len(self.names)
        centers_spec = [tf.TensorSpec([None], tf.float32)] * len(self.names)
        flag_spec = tf.TensorSpec([], tf.bool)
        model_inputs = _model_inputs(model)
        if model_inputs is not None:
            extractor_inputs, outputs = _probe_outputs(model, self.names)
            if len(extractor_inputs) == 1:
                extractor_inputs = extractor_inputs[0]
            self.extractor = keras.Model(extractor_inputs, outputs, name=f"{model.name}_probe")
            self._image_index = image_input_index(model)
            # A probe point is reported as diverged when anything it is computed from is:
            # TensorFlow turns NaN into finite numbers in places (a conv with a fused ReLU gives
            # 0 for a NaN kernel, max pooling drops NaN), so its own finite output proves nothing.
            self._upstream_probes, upstream_weights = _upstream(outputs)
            # Fixed signatures: each function traces once whatever the batch size.
            images_spec = tf.TensorSpec(
                [None, *model_inputs[self._image_index].shape[1:]], _probe_dtype(model)
            )
            extras_spec = [
                tf.TensorSpec([None, *tensor.shape[1:]], tensor.dtype)
                for i, tensor in enumerate(model_inputs)
                if i != self._image_index
            ]
            signature = {"input_signature": [images_spec, extras_spec, centers_spec, flag_spec]}
            perturbed_signature = {
                "input_signature": [images_spec, extras_spec, vectors_spec, centers_spec]
            }
        else:
            if not model.built:
                raise ValueError(
                    f"Model {model.name!r} ({type(model).__name__}) is a subclassed model that "
                    "has not been built: it has no weights to measure yet. Call it once on a "
                    "batch of images (`model(images[:1])`) or train it, then measure it."
                )
            warnings.warn(
                f"Model {model.name!r} ({type(model).__name__}) has no graph of layers (a "
                "subclassed model): its inner layers cannot be probed, so only 'input' and "
                f"'output' are measured. {NO_GRAPH_ADVICE}",
                UserWarning,
                stacklevel=4,
            )
            self.extractor = _OutputProbe(model, self.names)
            self._image_index = 0
            # The output is computed from the input and every weight of the model.
            upstream_weights = [
                [] if name == INPUT else _float_weights(model.weights) for name in self.names
            ]
            self._upstream_probes = [
                {self.names.index(INPUT)} if name == OUTPUT and INPUT in self.names else set()
                for name in self.names
            ]
            # The image shape is the model's business: traced per shape, generalised after two.
            signature = perturbed_signature = {"reduce_retracing": True}
        self._weights_finite = _weights_finite_function(upstream_weights)
        self._widths = {}  # image shape -> flattened size of each probe point's representation
        # Every function wraps a callable of its own (a partial, a closure): TensorFlow counts
        # traces per underlying code object, and the traces of different models are no
        # retracing of one function. On JAX each is jitted with the model's variables passed in
        # (`compiled_reading`), so training between measurements is seen.
        variables = model.variables
        self._vectors = {
            normalize: compiled_reading(
                functools.partial(self._vectors_impl, normalize=normalize), variables, **signature
            )
            for normalize in (False, True)
        }
        # A perturbed batch goes straight from its representations to its distances from the
        # clean ones: its normalised vectors are never stored (ResNet50 at 224 px: 1.4 GB per
        # batch of 32 neither written nor read back).
        self._perturbed = {
            normalize: compiled_reading(
                functools.partial(self._perturbed_impl, normalize=normalize),
                variables,
                **perturbed_signature,
            )
            for normalize in (False, True)
        }
        # Per probe point, inside those: the elementwise steps on a large representation in
        # one fused pass (XLA on TensorFlow, whose graph ops make a temporary per step: 1.5x
        # slower on ResNet50's at 224 px); small ones inline, where compiling costs more.
        self._center, self._difference = {}, {}
        for normalize in (False, True):
            inline = functools.partial(_normalize_and_center, normalize=normalize)
            self._center[normalize, False] = inline
            self._center[normalize, True] = compiled_reading(
                inline,
                (),
                input_signature=[vectors_spec[0], centers_spec[0], centers_spec[0], flag_spec],
                jit_compile=True,
            )
            inline = functools.partial(_difference_from_clean, normalize=normalize)
            self._difference[normalize, False] = inline
            self._difference[normalize, True] = compiled_reading(
                inline,
                (),
                input_signature=[
                    vectors_spec[0],
                    vectors_spec[0],
                    centers_spec[0],
                    centers_spec[0],
                ],
                jit_compile=True,
            )
        # The Gram blocks read large operands once: TensorFlow's own kernels run them faster
        # than XLA does on CPU (ResNet50 at 224 px: 1.4x).
        self._gram = compiled_reading(
            functools.partial(self._gram_impl), (), input_signature=[vectors_spec, vectors_spec]
        )

    @property
    def model(self):
        """The probed model (held weakly)."""
        return self._model()

    def check_images(self, images, min_images=2):
        """`check_probe_images` for this probe's model."""
        return check_probe_images(self.model, images, min_images=min_images)

    def check_inputs(self, images, extra_inputs=None, min_images=2):
        """`check_probe_inputs` for this probe's model: `(images, extras)`."""
        return check_probe_inputs(self.model, images, extra_inputs, min_images=min_images)

    @full_float32_precision()  # no TensorFloat-32 on GPUs: the same numbers on every device
    def distances(
        self,
        images,
        perturb,
        batch_size,
        metric,
        feature_cache_bytes=DEFAULT_CACHE,
        extra_inputs=(),
    ):
        """Streams the probe images in batches and returns the distances the measures reduce.

        For each probe point: the distances between all pairs of clean probe images, and between
        each image and each of its perturbed copies.

        Cost: with `n = ceil(N / batch_size)` batches, one forward pass per clean batch when the
        clean features of all probe points (`N x sum of layer sizes` float32) fit in
        `feature_cache_bytes`: they are kept in memory once computed. Beyond that budget, earlier
        batches are recomputed for the Gram blocks: `n (n - 1) / 2 + 1` clean passes. Plus one
        pass per perturbed batch. (All or nothing: the extractor computes every probe point in
        one pass, so keeping only some of them would save no pass.)
        Memory: the cached features (at most `feature_cache_bytes`), or the features of about
        three batches; plus `N^2` float64 per probe point on the host.

        Args:
            images: `(N, H, W, C)` probe images (a checked tensor).
            perturb: `perturb(batch, batch_index, start) -> list` of P perturbed copies of a batch
                (`start` is the index of the batch's first image in `images`), or any sequence
                with a length whose copies are made as they are read (one at a time in memory).
            batch_size: images per forward pass.
            metric: `"cosine"` (`1 - cos`, with the zero-vector rule below) or `"sqeuclidean"`.
            feature_cache_bytes: memory budget for keeping clean features (default 1 GiB);
                0 always recomputes. The results are the same either way.
            extra_inputs: the model's other inputs as checked tensors (`check_inputs`), one
                row per probe image; each batch and its perturbed copies get the same rows.

        Returns:
            A list of `ProbeDistances`, one per probe point, and the number of forward passes.

        Cosine distance of zero vectors (dead units): `d_cos(0, 0) = 0` (identical
        representations) and `d_cos(0, r) = 1` for `r != 0` (a zero vector is treated as
        orthogonal to everything), so dead probe points never produce NaN.

        Diverged network: `ProbeDistances.finite` is False at a probe point whose
        representations, or the representations or layer weights it is computed from, are not
        finite (flags reduced on the device; only booleans reach the host).
        """
        if metric not in ("cosine", "sqeuclidean"):
            raise ValueError(f"Unknown metric {metric!r}.")
        vectors = self._vectors[metric == "cosine"]
        perturbed_distances = self._perturbed[metric == "cosine"]
        num_images = int(images.shape[0])
        starts = list(range(0, num_images, batch_size))
        blocks = [slice(s, min(s + batch_size, num_images)) for s in starts]
        num_layers = len(self.names)
        gram = [np.zeros((num_images, num_images)) for _ in range(num_layers)]
        is_zero = [np.zeros(num_images, bool) for _ in range(num_layers)]
        paired, paired_zero = None, None
        forward_passes = 0

        # Distances come from Gram matrices of vectors centred on the mean of the first batch:
        # squared distances are shift-invariant, and centring keeps |a|^2 + |b|^2 - 2 a.b free of
        # cancellation when the representations share a large common component.
        extras = list(extra_inputs)
        zeros = [keras.ops.zeros((width,)) for width in self._feature_widths(images, extras)]
        first = vectors(
            images[blocks[0]],
            [e[blocks[0]] for e in extras],
            zeros,
            keras.ops.convert_to_tensor(True),
        )
        forward_passes += 1
        row = [(u, z) for u, z, _, _ in first]
        finite = [bool(f) for _, _, _, f in first]
        centers = [c for _, _, c, _ in first]
        later = keras.ops.convert_to_tensor(False)
        feature_bytes = 4 * num_images * sum(int(u.shape[1]) for u, _ in row)
        cached = {} if feature_bytes <= feature_cache_bytes else None

        def clean(j):
            """The clean vectors of block j: from the cache, or a forward pass."""
            nonlocal forward_passes
            if cached is not None and j in cached:
                return cached[j]
            outputs = vectors(images[blocks[j]], [e[blocks[j]] for e in extras], centers, later)
            forward_passes += 1
            for layer, (_, _, _, f) in enumerate(outputs):
                finite[layer] = finite[layer] and bool(f)
            column = [(u, z) for u, z, _, _ in outputs]
            if cached is not None:
                cached[j] = column
            return column

        for i, rows in enumerate(blocks):
            batch = images[rows]
            for layer, (_, z) in enumerate(row):
                is_zero[layer][rows] = to_numpy(z)
            row_vectors = [u for u, _ in row]
            self._store_gram(self._gram(row_vectors, row_vectors), rows, rows, gram)

            perturbed = perturb(batch, i, rows.start)  # read one copy at a time
            if paired is None:
                paired = [np.zeros((len(perturbed), num_images)) for _ in range(num_layers)]
                paired_zero = [
                    np.zeros((len(perturbed), num_images), bool) for _ in range(num_layers)
                ]
            for p, perturbed_batch in enumerate(perturbed):
                perturbed_batch = keras.ops.cast(
                    keras.ops.convert_to_tensor(perturbed_batch), batch.dtype
                )
                if tuple(perturbed_batch.shape) != tuple(batch.shape):
                    raise ValueError(
                        f"The perturbation returned shape {tuple(perturbed_batch.shape)} for a "
                        f"batch of shape {tuple(batch.shape)}; it must keep the shape."
                    )
                outputs = perturbed_distances(
                    perturbed_batch, [e[rows] for e in extras], row_vectors, centers
                )
                forward_passes += 1
                for layer, (d, z, f) in enumerate(outputs):
                    finite[layer] = finite[layer] and bool(f)
                    paired[layer][p, rows] = to_numpy(d)
                    paired_zero[layer][p, rows] = to_numpy(z)

            # Later blocks in reverse order, so block i + 1 comes last and becomes the next row.
            next_row = None
            for j in reversed(range(i + 1, len(blocks))):
                column = clean(j)
                block = self._gram(row_vectors, [u for u, _ in column])
                self._store_gram(block, rows, blocks[j], gram)
                next_row = column
            row = next_row

        weights_finite = [bool(f) for f in self._weights_finite()]
        finite = [
            weights_finite[layer] and all(finite[k] for k in self._upstream_probes[layer] | {layer})
            for layer in range(num_layers)
        ]
        results = []
        for layer in range(num_layers):
            # Squared distances from the (centred) Gram matrix, in float64.
            sqnorm = np.diag(gram[layer])
            d2 = sqnorm[:, None] + sqnorm[None, :] - 2.0 * gram[layer]
            d2 = np.maximum(d2, 0.0)
            np.fill_diagonal(d2, 0.0)
            pair_d2 = paired[layer]
            if metric == "cosine":
                # |a/|a| - b/|b||^2 = 2 (1 - cos); then the zero-vector rule.
                d2 = _cosine_with_zero_rule(d2 / 2.0, is_zero[layer][:, None], is_zero[layer])
                pair_d2 = _cosine_with_zero_rule(
                    pair_d2 / 2.0, is_zero[layer][None, :], paired_zero[layer]
                )
            results.append(ProbeDistances(pairwise=d2, paired=pair_d2, finite=finite[layer]))
        return results, forward_passes

    # -- internals ---------------------------------------------------------------------------
    # Written in Keras ops: they run on the active backend, compiled by `compiled_reading`.

    def _vectors_impl(self, images, extras, centers, first, normalize):
        """Per probe point: the flattened (optionally unit-normalised) features minus a centre,
        whether each representation is exactly zero, the centre (with `first`, the mean of this
        batch's vectors; else `centers[l]`) and whether all representations are finite."""
        vectors = []
        for (v, norms, finite, fuse), center in zip(
            self._representations(images, extras), centers, strict=True
        ):
            v, center = self._center[normalize, fuse](v, norms, center, first)
            vectors.append((v, keras.ops.equal(norms, 0.0), center, finite))
        return vectors

    def _perturbed_impl(self, images, extras, clean, centers, normalize):
        """Per probe point, for perturbed copies of the images whose vectors are `clean` (from
        `_vectors_impl` with these `centers`): the squared distance of each copy's vector from
        its image's, whether each representation is exactly zero and whether all are finite."""
        distances = []
        for (v, norms, finite, fuse), u, center in zip(
            self._representations(images, extras), clean, centers, strict=True
        ):
            difference = self._difference[normalize, fuse](u, v, norms, center)
            distances.append(
                (keras.ops.square(_row_norms(difference)), keras.ops.equal(norms, 0.0), finite)
            )
        return distances

    def _representations(self, images, extras):
        """Per probe point: the flattened float32 representations (non-finite entries zeroed),
        their row norms, whether all were finite, and whether the elementwise steps on them
        run fused (large ones)."""
        ops = keras.ops
        if extras:
            inputs = list(extras)
            inputs.insert(self._image_index, images)
        else:
            inputs = images
        with float32_compute(self.model):  # traced once: the graph stays float32
            outputs = self.extractor(inputs, training=False)
        if len(self.names) == 1:
            outputs = [outputs]
        representations = []
        for output in outputs:
            v = ops.cast(ops.reshape(output, (ops.shape(output)[0], -1)), "float32")
            norms = _row_norms(v)
            # NaN or inf anywhere in a row makes its norm NaN or inf: only then is `v` cleaned.
            v, norms, finite = ops.cond(
                ops.all(ops.isfinite(norms)),
                lambda v=v, norms=norms: (v, norms, ops.convert_to_tensor(True)),
                lambda v=v: _finite_part(v),
            )
            width = output.shape[1:]
            fuse = None in width or math.prod(width) >= FUSED_WIDTH
            representations.append((v, norms, finite, fuse))
        return representations

    def _feature_widths(self, images, extras):
        """The flattened size of each probe point's representation of images of this shape."""
        key = (tuple(images.shape[1:]), *(tuple(e.shape[1:]) for e in extras))
        if key not in self._widths:
            specs = [
                keras.KerasTensor((1, *x.shape[1:]), keras.backend.standardize_dtype(x.dtype))
                for x in extras
            ]
            specs.insert(self._image_index, keras.KerasTensor((1, *images.shape[1:]), "float32"))
            outputs = self.extractor.compute_output_spec(specs if extras else specs[0])
            outputs = keras.tree.flatten(outputs)
            self._widths[key] = [math.prod(output.shape[1:]) for output in outputs]
        return self._widths[key]

    @staticmethod
    def _gram_impl(rows, columns):
        return [
            keras.ops.matmul(a, keras.ops.transpose(b)) for a, b in zip(rows, columns, strict=True)
        ]

    @staticmethod
    def _store_gram(block, rows, columns, gram):
        for layer, g in enumerate(block):
            g = to_numpy(g, dtype=np.float64)
            gram[layer][rows, columns] = g
            gram[layer][columns, rows] = g.T


class _OutputProbe:
    """The extractor of a model without a graph: `[images, model(images)]` (its probe points)."""

    def __init__(self, model, names):
        self._model = weakref.ref(model)
        self._names = names

    def __call__(self, images, training=False):
        outputs = {INPUT: images}
        if OUTPUT in self._names:
            outputs[OUTPUT] = self._model()(images, training=training)
        outputs = [outputs[name] for name in self._names]
        return outputs[0] if len(outputs) == 1 else outputs  # as a Keras model's outputs

    def compute_output_spec(self, images):
        outputs = {INPUT: images}
        if OUTPUT in self._names:
            outputs[OUTPUT] = self._model().compute_output_spec(images)
        outputs = [outputs[name] for name in self._names]
        return outputs[0] if len(outputs) == 1 else outputs


def _row_norms(x):
    """The Euclidean norm of each row of a 2-D float tensor, on the active backend.

    On TensorFlow its fused kernel reads `x` once (`keras.ops.norm` squares into a temporary
    first there, 2x slower on large representations); elsewhere `keras.ops.norm`.
    """
    if keras.backend.backend() == "tensorflow":
        return tf.math.reduce_euclidean_norm(x, axis=1)
    return keras.ops.norm(x, axis=1)


def _finite_part(v):
    """`v` with its non-finite entries set to 0 (keeps the Gram blocks finite), its row norms,
    and whether it was finite."""
    is_finite = keras.ops.isfinite(v)
    v = keras.ops.where(is_finite, v, 0.0)
    return v, _row_norms(v), keras.ops.all(is_finite)


def _normalize_and_center(v, norms, center, first, normalize):
    """`v` (rows divided by `norms` if `normalize`; a zero row stays zero) minus the centre, and
    the centre: the mean of those rows when `first` is true, else `center`."""
    if normalize:
        v = v * keras.ops.divide_no_nan(1.0, norms)[:, None]
    center = keras.ops.cond(first, lambda: keras.ops.mean(v, axis=0), lambda: center)
    return v - center, center


def _difference_from_clean(clean, v, norms, center, normalize):
    """`clean` minus what `_normalize_and_center` makes of `v`: its rows' differences from
    their images' vectors."""
    if normalize:
        v = v * keras.ops.divide_no_nan(1.0, norms)[:, None]
    return clean - (v - center)


def _float_weights(variables):
    return [v for v in variables if keras.backend.is_float_dtype(v.dtype)]


def _upstream(outputs):
    """Per symbolic output: the indices of the other outputs it is computed from, and the
    floating-point weights of every layer on the way from the input (its own layer included)."""
    index = {id(tensor): i for i, tensor in enumerate(outputs)}
    variables = {}  # id -> variable, shared by the probe points
    probes, weights = [], []
    for output in outputs:
        found, seen, stack, own = set(), {id(output)}, [output], set()
        while stack:
            history = internals.keras_history(stack.pop())
            if history is None:
                continue
            operation = history.operation
            for variable in getattr(operation, "weights", []):
                if keras.backend.is_float_dtype(variable.dtype):
                    variables.setdefault(id(variable), variable)
                    own.add(id(variable))
            for parent in internals.input_tensors(history):
                if id(parent) not in seen:
                    seen.add(id(parent))
                    if id(parent) in index:
                        found.add(index[id(parent)])
                    stack.append(parent)
        probes.append(found)
        weights.append([variables[v] for v in sorted(own)])
    return probes, weights


def _weights_finite_function(upstream_weights):
    """A compiled function returning, per probe point, whether every weight it is computed from
    is finite (the variables are read, not passed: one trace, reduced on the device)."""
    unique = list({id(v): v for variables in upstream_weights for v in variables}.values())
    position = {id(v): i for i, v in enumerate(unique)}
    indices = [[position[id(v)] for v in variables] for variables in upstream_weights]
    # A partial: a function of its own per probe (see `ProbeFeatures.__init__`).
    return compiled_reading(
        functools.partial(_all_finite, unique, indices), unique, autograph=False
    )


def _all_finite(variables, indices):
    ops = keras.ops
    flags = [ops.all(ops.isfinite(v.value)) for v in variables] + [ops.convert_to_tensor(True)]
    return [ops.all(ops.stack([flags[i] for i in idx] + [flags[-1]])) for idx in indices]


def _cosine_with_zero_rule(d_cos, zero_a, zero_b):
    both = zero_a & zero_b
    one = zero_a ^ zero_b
    return np.where(both, 0.0, np.where(one, 1.0, d_cos))
