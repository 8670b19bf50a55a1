"""Plain numpy reference implementations shared by the tests."""

import numpy as np


def numpy_padded_shift(image, dy, dx, fill_mode):
    """Shift one (H, W, C) image by padding with numpy's own modes and cropping."""
    pad = max(abs(dy), abs(dx), 1) * 3
    mode = {"wrap": "wrap", "constant": "constant", "nearest": "edge", "reflect": "symmetric"}
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode=mode[fill_mode])
    h, w = image.shape[:2]
    return padded[pad - dy : pad - dy + h, pad - dx : pad - dx + w]


# A tiny synthetic training run (16x16 images, 3 classes, a two-block VGG) for trainer tests.
TINY_RUN = {
    "synthetic_classes": 3,
    "synthetic_samples": 96,
    "synthetic_image_size": 16,
    "model": "vgg",
    "blocks": [[4], [8]],
    "epochs": 2,
    "batch_size": 32,
    "probe_size": 8,
    "learning_rate": 0.05,
}


# -- a tiny CNN and the measures, in float64 NumPy ----------------------------------------------
# The same numbers on every backend (tests/test_backends.py): a Keras model with these weights
# must reproduce them.

TINY_CNN_PROBES = ["input", "conv1", "pool1", "conv2"]


def tiny_cnn_weights(seed=0, scale=1.0):
    """`{layer: [kernel, bias]}` of `tiny_cnn`, drawn from `seed` (kernels times `scale`)."""
    rng = np.random.default_rng(seed)
    shapes = {"conv1": ((3, 3, 3, 4), 4), "conv2": ((3, 3, 4, 5), 5), "logits": ((5, 3), 3)}
    return {
        name: [
            (scale * rng.normal(0, 0.5, kernel)).astype("float32"),
            rng.normal(0, 0.1, bias).astype("float32"),
        ]
        for name, (kernel, bias) in shapes.items()
    }


def tiny_cnn(weights, image_shape=(8, 8, 3)):
    """The Keras model `numpy_tiny_cnn` computes: conv 3x3 (same, ReLU) -> 2x2 max pool ->
    conv 3x3 (same, ReLU) -> global average pooling -> dense, with `weights`."""
    import keras

    inputs = keras.Input(image_shape, name="input")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool2")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)
    return model


def _conv_same_relu(x, kernel, bias):
    h, w = kernel.shape[:2]
    padded = np.pad(x, ((0, 0), (h // 2, h // 2), (w // 2, w // 2), (0, 0)))
    out = sum(
        np.einsum("bijc,co->bijo", padded[:, i : i + x.shape[1], j : j + x.shape[2]], kernel[i, j])
        for i in range(h)
        for j in range(w)
    )
    return np.maximum(out + bias, 0.0)


def numpy_tiny_cnn(weights, images):
    """`{probe: (N, features) float64}` at `TINY_CNN_PROBES` and the logits, of `tiny_cnn`."""
    w = {name: [np.asarray(v, np.float64) for v in values] for name, values in weights.items()}
    x = np.asarray(images, np.float64)
    conv1 = _conv_same_relu(x, *w["conv1"])
    b, h, wd, c = conv1.shape
    pool1 = conv1.reshape(b, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))
    conv2 = _conv_same_relu(pool1, *w["conv2"])
    logits = conv2.mean(axis=(1, 2)) @ w["logits"][0] + w["logits"][1]
    features = dict(zip(TINY_CNN_PROBES, (x, conv1, pool1, conv2), strict=True))
    return {k: v.reshape(len(x), -1) for k, v in features.items()}, logits


def numpy_sine_warp(batch):
    """A fixed, smooth bilinear deformation of `(B, H, W, C)` images (edge clamped), in NumPy:
    the same deformed images on every backend."""
    import keras
    import scipy.ndimage

    batch = np.asarray(keras.ops.convert_to_numpy(batch), np.float64)  # any device
    height, width = batch.shape[1:3]
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    source = [
        rows - 0.8 * np.sin(np.pi * cols / (width - 1)),
        cols - 0.6 * np.sin(np.pi * rows / (height - 1)),
    ]
    out = np.empty_like(batch)
    for b in range(len(batch)):
        for c in range(batch.shape[-1]):
            out[b, ..., c] = scipy.ndimage.map_coordinates(
                batch[b, ..., c], source, order=1, mode="nearest"
            )
    return out.astype(np.float32)


def _cosine_distance(a, b):
    return 1.0 - np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def numpy_measures(weights, images, deform, seed, max_shift=2):
    """The measures of `tiny_cnn(weights)` on `images`, in float64 NumPy, as documented:
    sensitivity (`S`, its numerator and denominator), relative stability with the median (`R`,
    `D`, `G`; image `i` draws its noise from `default_rng([seed, i])`), kernel TV / L1 and
    wrap-around shift consistency (offsets from `default_rng(seed)`)."""
    images = np.asarray(images, np.float32)
    deformed = np.asarray(deform(images), np.float32)
    noisy = np.empty_like(images)
    for i in range(len(images)):
        xi = np.random.default_rng([seed, i]).standard_normal(images.shape[1:])
        change = np.linalg.norm((deformed[i] - images[i]).astype(np.float64))
        noisy[i] = images[i] + (xi / np.linalg.norm(xi) * change).astype(np.float32)
    (clean, logits), (moved, _), (noised, _) = (
        numpy_tiny_cnn(weights, x) for x in (images, deformed, noisy)
    )
    pairs = [(i, j) for i in range(len(images)) for j in range(i + 1, len(images))]
    result = {name: {} for name in ("S", "deformation", "pairs", "R", "D", "G", "smoothness")}
    for name in TINY_CNN_PROBES:
        f, fd, fn = clean[name], moved[name], noised[name]
        result["deformation"][name] = np.mean(_cosine_distance(f, fd))
        result["pairs"][name] = np.median([_cosine_distance(f[i], f[j]) for i, j in pairs])
        result["S"][name] = result["deformation"][name] / result["pairs"][name]
        between = np.median([np.sum((f[i] - f[j]) ** 2) for i, j in pairs])
        result["D"][name] = np.median(np.sum((fd - f) ** 2, axis=1)) / between
        result["G"][name] = np.median(np.sum((fn - f) ** 2, axis=1)) / between
        result["R"][name] = result["D"][name] / result["G"][name]
    for name in ("conv1", "conv2"):
        kernel = np.asarray(weights[name][0], np.float64)
        tv = np.abs(np.diff(kernel, axis=0)).sum() + np.abs(np.diff(kernel, axis=1)).sum()
        result["smoothness"][f"{name}"] = tv / np.abs(kernel).sum()
    offsets = np.random.default_rng(seed).integers(
        -max_shift, max_shift, size=(len(images), 2, 2), endpoint=True
    )
    top1 = [
        np.argmax(
            numpy_tiny_cnn(
                weights,
                np.stack(
                    [
                        numpy_padded_shift(images[i], *offsets[i, k], "wrap")
                        for i in range(len(images))
                    ]
                ),
            )[1],
            axis=1,
        )
        for k in (0, 1)
    ]
    result["shift_consistency"] = float(np.mean(top1[0] == top1[1]))
    return result


# -- the resampler, in float64 NumPy -------------------------------------------------------------


def _read_folded(index, size, fill_mode):
    """Integer sample coordinates mapped into ``[0, size)`` per `fill_mode`, and whether each one
    lay inside the image (what ``"constant"`` replaces by the fill value)."""
    inside = (index >= 0) & (index < size)
    if fill_mode == "wrap":
        return np.mod(index, size), inside
    if fill_mode == "reflect":  # d c b a | a b c d | d c b a
        period = np.mod(index, 2 * size)
        return np.where(period >= size, 2 * size - 1 - period, period), inside
    return np.clip(index, 0, size - 1), inside  # "nearest", and "constant" before its mask


def numpy_warp(images, displacement, interpolation="bilinear", fill_mode="nearest", fill_value=0.0):
    """`warp` in float64 NumPy: ``out[b, y, x] = images[b, y - u[..., 0], x - u[..., 1]]``.

    Pixel centres at integer coordinates; bilinear reads the four neighbours, each through
    `fill_mode` on its own (the package folds the continuous coordinate once instead); nearest
    reads ``floor(s + 0.5)`` (halves round up). Any (B, H, W, C) images, a (B or 1, H, W, 2) field.
    """
    images = np.asarray(images, np.float64)
    batch, height, width, _ = images.shape
    u = np.broadcast_to(np.asarray(displacement, np.float64), (batch, height, width, 2))
    source_y = np.arange(height)[None, :, None] - u[..., 0]
    source_x = np.arange(width)[None, None, :] - u[..., 1]
    samples = np.arange(batch)[:, None, None]

    def read(y, x):
        (y, inside_y), (x, inside_x) = (
            _read_folded(y.astype(np.int64), height, fill_mode),
            _read_folded(x.astype(np.int64), width, fill_mode),
        )
        values = images[samples, y, x]
        if fill_mode == "constant":
            values = np.where((inside_y & inside_x)[..., None], values, fill_value)
        return values

    if interpolation == "nearest":
        return read(np.floor(source_y + 0.5), np.floor(source_x + 0.5))
    y0, x0 = np.floor(source_y), np.floor(source_x)
    wy, wx = (source_y - y0)[..., None], (source_x - x0)[..., None]
    top = (1 - wx) * read(y0, x0) + wx * read(y0, x0 + 1)
    bottom = (1 - wx) * read(y0 + 1, x0) + wx * read(y0 + 1, x0 + 1)
    return (1 - wy) * top + wy * bottom
