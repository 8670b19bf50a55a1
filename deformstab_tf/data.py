"""Data sources for training and measuring: the synthetic task, TFDS, image folders.

Every source returns `(train, test, info)`: batched, prefetched `tf.data.Dataset`s of
`(images, labels)` — images float32 in `[0, 1]`, channels last `(B, H, W, C)`, labels int32
`(B,)` — and a `DatasetInfo`. The training split is shuffled every epoch (seeded) and augmented per
batch; the test split is never shuffled, augmented or relabelled.

- `synthetic(...)`: SPEC's synthetic task (Ruderman et al. §5): each class is one procedurally
  drawn prototype image, each training sample a fresh random TPS deformation of strength C of its
  prototype, drawn on the fly by `RandomThinPlateSpline`; no download, no file.
- `tfds_dataset(name, data_dir=..., download=True)`: a TensorFlow Datasets dataset, downloaded
  and prepared under `data_dir` when it is not there yet (as `tfds.load` does); offline
  (`download=False`, or no network) it fails in seconds, with instructions.
- `image_folder(path)`: `path/<class>/*.png|jpg` or `path/train/<class>/...` +
  `path/test/<class>/...`, decoded once (in parallel) and cached as arrays.
- `load_dataset(source, ...)` dispatches on `"synthetic"`, `"folder:PATH"` or a TFDS name.
"""

import collections
import dataclasses
import glob
import hashlib
import os
import socket
import threading
import urllib.parse
import urllib.request

import keras
import numpy as np
import tensorflow as tf

from deformstab_tf._validation import (
    check_bool,
    check_choice,
    check_names,
    check_non_negative,
    check_positive_int,
    check_seed,
)
from deformstab_tf.deformations.layers import DEFORMATION_LAYERS, RandomThinPlateSpline

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# Seconds the network check before a TFDS download may take (name lookup + TCP connect).
NETWORK_TIMEOUT = 5.0
AUGMENTATIONS = ("standard", "flip", "translate", "noise", *DEFORMATION_LAYERS)
# Folded into the `noise` augmentation's draw seeds: its draws are independent of the other
# stateless draws from the same seed pair (the synthetic task's pixel noise, `(seed, batch)`).
NOISE_STREAM = 0x6E6F6973  # b"nois"
AUTOTUNE = tf.data.AUTOTUNE
TRANSFORMS = ("noise", "resample")
# Folded into the draw seeds of a `transform`'s noise: a derived data set's noise is its own
# stream, fixed whatever the training seed (the same data set for every seed).
TRANSFORM_STREAM = 0x74726E73  # b"trns"
TRANSFORM_CHUNK = 1024  # images transformed per step of an in-memory split


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainers need to know about a data source.

    Attributes:
        name: `"synthetic"`, a TFDS name or `"folder:/abs/path"`.
        image_shape: `(H, W, C)`, channels last.
        num_classes: number of classes.
        class_names: class names (sorted folder names for image folders).
        train_size: training examples per epoch.
        test_size: test examples.
    """

    name: str
    image_shape: tuple
    num_classes: int
    class_names: tuple
    train_size: int
    test_size: int


def load_dataset(
    source="synthetic",
    *,
    batch_size=128,
    train_size=None,
    random_labels=False,
    augment=(),
    seed=0,
    data_dir=None,
    validation_fraction=0.1,
    synthetic_options=None,
    download=True,
    transform=(),
):
    """`(train, test, info)` from `"synthetic"`, `"folder:PATH"` or a TFDS dataset name.

    Args:
        source: the data source.
        batch_size: examples per batch.
        train_size: train on the first N examples of a seeded shuffle of the training split.
        random_labels: replace training labels by labels drawn uniformly once per example.
        augment: augmentation specs, see `augmentation_layers`.
        seed: seeds the shuffles, subsets, random labels and augmentations.
        data_dir: TFDS data directory.
        validation_fraction: image folders without a `test/` tree: the held-out fraction.
        synthetic_options: keyword arguments of `synthetic` (`num_classes`, ...).
        download: TFDS: download and prepare a dataset missing from `data_dir` (the default,
            as `tfds.load`); `False` for offline use: a missing dataset is then an error.
        transform: specs of a derived data set (see `transform_images`), applied to every
            image of both splits before anything else (`train_size`, augmentation): e.g.
            `["resample:2"]` (smoother: more local homogeneity), `["noise:0.1"]` (less).

    Returns:
        `(train, test, info)`.

    Raises:
        ValueError: naming `source` when it is unknown or cannot be read, or naming the argument
            of any other bad setting (checked before the data is read): a classification task
            needs at least 2 classes, a held-out test split at least 2 images per class.
        TypeError: naming the argument of a value of the wrong type.

    Example:

    >>> train, test, info = load_dataset("synthetic", train_size=256, augment=["flip"])
    >>> info.image_shape, info.num_classes, info.train_size
    ((32, 32, 3), 10, 256)
    >>> images, labels = next(iter(train))
    >>> tuple(images.shape), images.dtype.name, labels.dtype.name
    ((128, 32, 32, 3), 'float32', 'int32')
    >>> # (skipped in the doctest run: it needs CIFAR-10 as an image folder)
    >>> train, test, info = load_dataset("folder:../shared/data/cifar10", train_size=10000,
    ...                                  augment=["standard"])  # doctest: +SKIP
    """
    if not isinstance(source, str) or not source:
        raise ValueError(f"`source` must be a non-empty string; received source={source!r}.")
    check_positive_int("batch_size", batch_size)
    if train_size is not None:
        check_positive_int("train_size", train_size)
    check_bool("random_labels", random_labels)
    check_seed("seed", seed)
    augment = check_names("augment", augment)
    parse_augmentations(augment)  # the specs' syntax, before any data is read
    transform = check_names("transform", transform)
    parse_transforms(transform)
    _check_fraction(validation_fraction)
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(
            "`data_dir` must be a path (str or os.PathLike) or None; received "
            f"data_dir={data_dir!r}."
        )
    if source.startswith("folder:") and not source[len("folder:") :].strip():
        raise ValueError(f"`source`={source!r} names no directory; use 'folder:PATH'.")
    if synthetic_options is not None:
        if not isinstance(synthetic_options, dict):
            raise TypeError(
                "`synthetic_options` must be a dict of `synthetic` arguments; received "
                f"synthetic_options={synthetic_options!r}."
            )
        unknown = sorted(set(synthetic_options) - set(SYNTHETIC_OPTIONS))
        if unknown:
            raise ValueError(
                f"Unknown `synthetic_options` {unknown}; valid: {list(SYNTHETIC_OPTIONS)}."
            )
    common = {
        "batch_size": batch_size,
        "random_labels": random_labels,
        "augment": augment,
        "seed": seed,
        "transform": transform,
    }
    if source == "synthetic":
        options = dict(synthetic_options or {})
        if train_size is not None:
            options["samples_per_epoch"] = train_size
        return synthetic(**options, **common)
    if source.startswith("folder:"):
        return image_folder(
            source[len("folder:") :],
            train_size=train_size,
            validation_fraction=validation_fraction,
            **common,
        )
    return tfds_dataset(
        source, data_dir=data_dir, train_size=train_size, download=download, **common
    )


# -- synthetic task -----------------------------------------------------------------------------


PROTOTYPES = ("strokes", "texture")
# The keyword arguments of `synthetic` that `load_dataset(synthetic_options=...)` passes on.
SYNTHETIC_OPTIONS = (
    "num_classes",
    "max_displacement",
    "grid_size",
    "image_size",
    "channels",
    "samples_per_epoch",
    "test_size",
    "noise",
    "prototypes",
)


def synthetic_prototypes(num_classes=10, image_size=32, channels=3, seed=0, style="strokes"):
    """`num_classes` prototype images `(K, S, S, C)` in `[0, 1]`.

    Args:
        num_classes, image_size, channels: the shape `(K, S, S, C)`.
        seed: seeds the drawing; the same seed gives the same prototypes.
        style: `"strokes"` (default): 3 to 5 random quadratic Bezier strokes of random width and
            colour on a dark background, so classes differ in shape and colour and every image
            is spatially smooth (worth classifying, unlike white noise). `"texture"`: Gaussian
            noise low-passed with a (circular) Gaussian of std 1 px (fine texture, correlation
            length ~1 px), so telling classes apart takes fine detail and a TPS warp of a few
            pixels matters: the setting where the task's C shapes the learned filters (F6).

    Returns:
        A float32 array `(num_classes, image_size, image_size, channels)`.
    """
    check_positive_int("num_classes", num_classes)
    check_positive_int("image_size", image_size)
    check_positive_int("channels", channels)
    check_choice("style", style, PROTOTYPES)
    rng = np.random.default_rng([seed, 7919])
    if style == "texture":
        return _texture(rng, (num_classes, image_size, image_size, channels), sigma=1.0)
    grid = np.stack(np.meshgrid(np.arange(image_size), np.arange(image_size), indexing="ij"), -1)
    pixels = grid.reshape(-1, 1, 2).astype(np.float64)
    t = np.linspace(0.0, 1.0, 64)[:, None]
    prototypes = np.zeros((num_classes, image_size * image_size, channels))
    for k in range(num_classes):
        for _ in range(rng.integers(3, 6)):
            a, b, c = rng.uniform(0.1, 0.9, (3, 2)) * (image_size - 1)
            curve = (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c  # (64, 2)
            distance = np.sqrt(((pixels - curve[None]) ** 2).sum(-1)).min(axis=1)
            width = rng.uniform(0.04, 0.09) * image_size
            stroke = np.exp(-0.5 * (distance / width) ** 2)
            colour = rng.uniform(0.3, 1.0, channels)
            prototypes[k] = np.maximum(prototypes[k], stroke[:, None] * colour)
    return prototypes.reshape(num_classes, image_size, image_size, channels).astype(np.float32)


def _texture(rng, shape, sigma):
    """Gaussian noise convolved (circularly) with a sampled Gaussian of std `sigma` px,
    standardised and mapped to mean 0.5, std 0.2, clipped to `[0, 1]`."""
    noise = rng.standard_normal(shape)

    def kernel_spectrum(size):  # the normalised sampled Gaussian on the circle, in Fourier space
        distance = np.minimum(np.arange(size), size - np.arange(size))
        kernel = np.exp(-0.5 * (distance / sigma) ** 2)
        return np.fft.fft(kernel / kernel.sum())

    transfer = kernel_spectrum(shape[1])[:, None, None] * kernel_spectrum(shape[2])[None, :, None]
    smooth = np.real(np.fft.ifft2(np.fft.fft2(noise, axes=(1, 2)) * transfer, axes=(1, 2)))
    smooth = (smooth - smooth.mean()) / smooth.std()
    return np.clip(0.5 + 0.2 * smooth, 0.0, 1.0).astype(np.float32)


def synthetic(
    num_classes=10,
    max_displacement=2.0,
    grid_size=3,
    image_size=32,
    channels=3,
    samples_per_epoch=6400,
    test_size=1000,
    noise=0.05,
    prototypes="strokes",
    *,
    batch_size=128,
    seed=0,
    augment=(),
    random_labels=False,
    transform=(),
):
    """The synthetic task: each class one prototype, samples its random TPS deformations.

    Training samples are drawn on the fly: class `i % num_classes` for sample `i`, shuffled
    each epoch, each a fresh `RandomThinPlateSpline(grid_size, max_displacement)` warp of its
    prototype (one layer call per batch) plus Gaussian pixel noise of std `noise`. The test split
    is a fixed, seeded set of such samples.

    Args:
        num_classes: K, the number of prototypes / classes.
        max_displacement: C, the TPS strength in pixels (SPEC F6: 1, 2, 3, 4).
        grid_size: TPS control grid size.
        image_size, channels: image shape `(image_size, image_size, channels)`.
        samples_per_epoch, test_size: examples per training epoch and in the test split.
        noise: std of the Gaussian pixel noise added to every sample.
        prototypes: the prototypes' style, `"strokes"` or `"texture"` (see
            `synthetic_prototypes`).
        batch_size, seed, augment, random_labels, transform: see `load_dataset` (a
            transform's noise is drawn afresh with each training sample).

    Returns:
        `(train, test, info)`.

    Raises:
        ValueError: naming the argument of a bad setting: `num_classes < 2` (a classification
            task needs two classes), `grid_size` outside 2..`image_size`, ...

    Example:

    >>> train, test, info = synthetic(num_classes=10, max_displacement=2.0)
    """
    check_positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(
            "`num_classes` must be >= 2 (a classification task needs two classes); received "
            f"num_classes={num_classes}."
        )
    check_positive_int("image_size", image_size)
    check_positive_int("grid_size", grid_size)
    if not 2 <= grid_size <= image_size:
        raise ValueError(
            f"`grid_size` must be in 2..image_size={image_size} (TPS control points per side); "
            f"received grid_size={grid_size}."
        )
    check_positive_int("samples_per_epoch", samples_per_epoch)
    check_positive_int("test_size", test_size)
    check_positive_int("batch_size", batch_size)
    check_choice("prototypes", prototypes, PROTOTYPES)
    check_seed("seed", seed)
    check_bool("random_labels", random_labels)
    check_non_negative("noise", noise)
    images = synthetic_prototypes(num_classes, image_size, channels, seed, style=prototypes)
    constant = tf.constant(images)
    noise = float(noise)

    transform = parse_transforms(check_names("transform", transform))

    def sample(labels, layer, noise_seed):
        images = layer(tf.gather(constant, labels), training=True)
        if noise > 0:
            images += noise * tf.random.stateless_normal(tf.shape(images), noise_seed)
        images = tf.clip_by_value(images, 0.0, 1.0)
        if transform:
            stream = tf.stack([noise_seed[0], noise_seed[1] + TRANSFORM_STREAM])
            images = transform_images(images, transform, stream)
        return images

    # The test split is drawn in a tf.data pipeline too: TensorFlow ops and seed streams on every
    # Keras backend (as Keras's own preprocessing layers in tf.data), so it is the same split.
    test_layer = RandomThinPlateSpline(grid_size, max_displacement, seed=seed + 1, dtype="float32")
    test_labels = np.arange(test_size, dtype=np.int32) % num_classes
    draws = tf.data.Dataset.from_tensor_slices(test_labels).batch(256).enumerate()
    draws = draws.map(
        lambda i, batch: sample(
            batch, test_layer, tf.stack([tf.constant(seed, tf.int64), 10_000 + 256 * i])
        )
    )
    test_images = np.concatenate([batch.numpy() for batch in draws])

    train_layer = RandomThinPlateSpline(grid_size, max_displacement, seed=seed, dtype="float32")
    labels = np.arange(samples_per_epoch, dtype=np.int32) % num_classes
    true_labels = labels
    if random_labels:
        labels = _random_labels(samples_per_epoch, num_classes, seed)
    train = tf.data.Dataset.from_tensor_slices((true_labels, labels))
    train = train.shuffle(samples_per_epoch, seed=seed, reshuffle_each_iteration=True)
    train = train.batch(batch_size).enumerate()
    # The TPS layer's seed generator moves on every call, so every epoch sees new warps.
    train = train.map(
        lambda i, batch: (
            sample(batch[0], train_layer, tf.stack([tf.constant(seed, tf.int64), i])),
            batch[1],
        )
    )
    train = _augment(train, augment, seed, (image_size, image_size)).prefetch(AUTOTUNE)
    test = _test_pipeline(test_images, test_labels, batch_size)
    info = DatasetInfo(
        "synthetic",
        (image_size, image_size, channels),
        num_classes,
        tuple(f"prototype_{k}" for k in range(num_classes)),
        samples_per_epoch,
        test_size,
    )
    return train, test, info


# -- image folders --------------------------------------------------------------------------


def image_folder(
    path,
    *,
    batch_size=128,
    train_size=None,
    random_labels=False,
    augment=(),
    seed=0,
    validation_fraction=0.1,
    transform=(),
):
    """`(train, test, info)` from a folder tree of images, one subfolder per class.

    Layouts: `path/train/<class>/*` and `path/test/<class>/*` (the test tree is the test split),
    or `path/<class>/*` (a seeded `validation_fraction` of each class, at least one image, is
    held out as the test split). Class names are the sorted subfolder names (the same in both
    trees). Images (PNG, JPEG, BMP, GIF; all of one size, never resized) are decoded once, in
    parallel, into uint8 arrays kept in memory and cached on disk under `$DEFORMSTAB_CACHE`
    (default `~/.cache/deformstab_tf`), keyed by the files' paths, sizes and modification
    times, so later runs skip the decoding.

    Channels: every image gets the channel count most training images have (a tie: the first
    image's), and the test split the training split's. As Keras's loaders decode every image
    with one `color_mode` (`keras.utils.image_dataset_from_directory`; TensorFlow's decoders
    convert), a grayscale image among RGB ones is repeated into RGB, an RGBA image's alpha
    channel is dropped (not blended), an RGB image among grayscale ones becomes its luminance
    (`tf.image.rgb_to_grayscale`) and a missing alpha channel is opaque. A folder of grayscale
    images stays grayscale (one channel; Keras's default `color_mode="rgb"` would make three).

    Args:
        path: the tree's root directory.
        validation_fraction: without a `test/` tree, the fraction of each class held out.
        batch_size, train_size, random_labels, augment, seed, transform: see `load_dataset`.

    Returns:
        `(train, test, info)`; `info.name` is `"folder:<absolute path>"`.

    Raises:
        ValueError: naming the path when it is missing, has no class subfolders, no images, or
            images of different sizes or that cannot be decoded.

    Example:

    >>> # (skipped in the doctest run: it needs CIFAR-10 as an image folder)
    >>> train, test, info = image_folder("../shared/data/cifar10")  # doctest: +SKIP
    >>> info.num_classes, info.train_size, info.test_size  # doctest: +SKIP
    (10, 50000, 10000)
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isdir(root):
        raise ValueError(f"`folder:` path {root!r} is not a readable directory.")
    if os.path.isdir(os.path.join(root, "train")):
        train_files, class_names = _class_files(os.path.join(root, "train"))
        if os.path.isdir(os.path.join(root, "test")):
            test_files, _ = _class_files(os.path.join(root, "test"), class_names)
        else:
            train_files, test_files = _hold_out(
                train_files, validation_fraction, seed, class_names, os.path.join(root, "train")
            )
    else:
        files, class_names = _class_files(root)
        train_files, test_files = _hold_out(files, validation_fraction, seed, class_names, root)
    x_train, y_train = _decode_cached(train_files)
    x_test, y_test = _decode_cached(test_files)
    x_test = _convert_channels(x_test, x_train.shape[-1])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"Images under {root!r} differ in size: train {x_train.shape[1:]}, "
            f"test {x_test.shape[1:]}."
        )
    return _from_arrays(
        f"folder:{root}",
        (x_train, y_train),
        (x_test, y_test),
        class_names,
        batch_size=batch_size,
        train_size=train_size,
        random_labels=random_labels,
        augment=augment,
        seed=seed,
        transform=transform,
    )


def _class_files(directory, class_names=None):
    names = sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not names:
        raise ValueError(f"`folder:` path {directory!r} has no class subfolders.")
    if class_names is not None and names != list(class_names):
        raise ValueError(
            f"The class folders of {directory!r} ({names}) differ from the training tree's "
            f"({list(class_names)})."
        )
    files = []
    for label, name in enumerate(names):
        for file in sorted(glob.glob(os.path.join(directory, name, "*"))):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                files.append((file, label))
    if not files:
        raise ValueError(f"`folder:` path {directory!r} holds no images ({IMAGE_EXTENSIONS}).")
    if class_names is None:  # the training tree: every class needs examples
        _check_classes(f"`folder:` path {directory!r}", len(names))
        found = {label for _, label in files}
        empty = [name for label, name in enumerate(names) if label not in found]
        if empty:
            raise ValueError(
                f"`folder:` path {directory!r}: the class folders {empty} hold no images "
                f"({IMAGE_EXTENSIONS})."
            )
    return files, tuple(names)


def _check_fraction(fraction):
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float, np.integer, np.floating))
        or not 0 < fraction < 1
    ):
        raise ValueError(
            f"`validation_fraction` must be in (0, 1); received validation_fraction={fraction!r}."
        )


def _check_classes(what, count):
    """A classification task needs two classes: one class makes every accuracy 1."""
    if count < 2:
        raise ValueError(f"A classification task needs at least 2 classes; {what} has {count}.")


def _hold_out(files, fraction, seed, class_names, directory):
    """Splits `(file, label)` pairs into train and test, holding out `fraction` of each class
    (at least one image; a class needs two images, one for each split)."""
    _check_fraction(fraction)
    rng = np.random.default_rng([seed, 31])
    labels = np.array([label for _, label in files])
    counts = np.bincount(labels, minlength=len(class_names))
    few = [f"{class_names[k]} ({counts[k]})" for k in range(len(class_names)) if counts[k] < 2]
    if few:
        raise ValueError(
            f"`folder:` path {directory!r} has no test/ tree, so a test split is held out of each "
            f"class, which needs at least 2 images per class; too few in: {', '.join(few)}."
        )
    held = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        # At least one test image per class, and one training image when the class has two.
        count = min(max(1, round(fraction * len(members))), max(1, len(members) - 1))
        held.extend(members[:count])
    test = set(held)
    return [f for i, f in enumerate(files) if i not in test], [files[i] for i in sorted(test)]


def _decode_cached(files):
    """Decodes image files into `(uint8 (N, H, W, C), int32 (N,))`, cached on disk."""
    key = hashlib.sha1()
    for file, label in files:
        stat = os.stat(file)
        key.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
    cache_dir = os.environ.get(
        "DEFORMSTAB_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "deformstab_tf")
    )
    cache = os.path.join(cache_dir, f"images_{key.hexdigest()}.npz")
    if os.path.exists(cache):
        with np.load(cache) as stored:
            return stored["images"], stored["labels"]
    paths = tf.constant([file for file, _ in files])
    dataset = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda p: tf.io.decode_image(tf.io.read_file(p), channels=0, expand_animations=False),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    images = []
    try:
        for image in dataset:
            if images and image.shape[:2] != images[0].shape[:2]:
                raise ValueError(
                    f"Images differ in size: {files[0][0]!r} is {tuple(images[0].shape[:2])}, "
                    f"{files[len(images)][0]!r} is {tuple(image.shape[:2])} (height, width); "
                    "resize them first."
                )
            images.append(image.numpy())
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(f"Cannot decode an image of {files[len(images)][0]!r}: {error}") from None
    # One channel count for all, the most common (a tie: the first image's), as `image_folder`
    # says; Counter.most_common orders equal counts by first occurrence.
    channels = collections.Counter(image.shape[-1] for image in images).most_common(1)[0][0]
    images = np.stack([_convert_channels(image, channels) for image in images]).astype(np.uint8)
    labels = np.array([label for _, label in files], dtype=np.int32)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        temporary = cache + f".{os.getpid()}.tmp.npz"
        np.savez(temporary, images=images, labels=labels)
        os.replace(temporary, cache)
    except OSError:
        pass  # a read-only cache directory only costs the decoding next time
    return images, labels


def _convert_channels(images, channels):
    """uint8 `images` (channels last) with `channels` channels, converted as TensorFlow's image
    decoders convert (and so Keras's loaders, which decode with a fixed channel count): an alpha
    channel is dropped (not blended), grayscale is repeated into RGB, RGB becomes its luminance
    (`tf.image.rgb_to_grayscale`, what `tf.io.decode_png(channels=1)` gives) and a missing alpha
    channel is opaque (255). Images that have `channels` already are returned as they are."""
    if images.shape[-1] == channels:
        return images
    colour = images[..., : 3 if images.shape[-1] >= 3 else 1]  # without alpha
    if channels in (1, 2) and colour.shape[-1] == 3:
        colour = tf.image.rgb_to_grayscale(colour).numpy()
    elif channels in (3, 4) and colour.shape[-1] == 1:
        colour = np.repeat(colour, 3, axis=-1)
    if channels in (2, 4):
        opaque = np.full((*colour.shape[:-1], 1), 255, colour.dtype)
        colour = np.concatenate([colour, opaque], axis=-1)
    return colour


# -- TFDS -----------------------------------------------------------------------------------


def tfds_dataset(
    name,
    *,
    data_dir=None,
    batch_size=128,
    train_size=None,
    random_labels=False,
    augment=(),
    seed=0,
    download=True,
    transform=(),
):
    """`(train, test, info)` from a TensorFlow Datasets dataset, downloaded when missing.

    A dataset prepared under `data_dir` is read. A missing one is downloaded and prepared there
    first (as `tfds.load` does), unless `download=False`. Before downloading, the hosts it comes
    from (or the configured HTTPS proxy) are checked with a short timeout (`NETWORK_TIMEOUT`,
    5 s): without network the call fails in seconds, with instructions, rather than after TFDS's
    retries (about 3.5 minutes for CIFAR-10).

    Splits: `train`, and `test` (or `validation` when there is no test split, e.g.
    `imagenet2012`). Both are read into memory as uint8 arrays, so this suits datasets of
    CIFAR/MNIST size; images must share one size (they are never resized).

    Args:
        name: the TFDS name, e.g. `"cifar10"`, `"mnist"`.
        data_dir: the TFDS data directory (TFDS's default, `~/tensorflow_datasets`, if None).
        batch_size, train_size, random_labels, augment, seed, transform: see `load_dataset`.
        download: download and prepare the dataset when it is not in `data_dir` (default);
            `False` for offline use (a missing dataset is an error).

    Returns:
        `(train, test, info)`; `info.class_names` are the TFDS label names.

    Raises:
        ValueError: naming `source` for an unknown name; and, within seconds, when the dataset is
            not prepared in `data_dir` and cannot be downloaded (`download=False`, or no
            network), saying how to provide it.
        TypeError: naming `download` when it is not a bool.

    Example:

    >>> # (skipped in the doctest run: it downloads CIFAR-10, 163 MB)
    >>> train, test, info = tfds_dataset("cifar10", batch_size=256)  # doctest: +SKIP
    >>> info.image_shape, info.num_classes  # doctest: +SKIP
    ((32, 32, 3), 10)
    """
    check_bool("download", download)
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # DatasetNotFoundError and friends: a bad name
        raise ValueError(
            f"Unknown `source`={name!r}: not 'synthetic', not 'folder:PATH' and not a TFDS "
            f"dataset ({type(error).__name__}: {str(error).splitlines()[0]})."
        ) from None

    def not_prepared(reason):
        return ValueError(
            f"TFDS dataset {name!r} is not prepared in data_dir={str(builder.data_dir_root)!r} "
            f"and {reason}. Provide it: run `tfds build {name}` on a machine with internet and "
            "copy its data directory here, then pass --data_dir; or use an image folder with "
            "--dataset=folder:PATH."
        )

    try:
        arrays, test_split = _read_tfds(builder)
    except _NotPrepared as error:
        if not download:
            raise not_prepared(
                "download=False (--nodownload): drop it to download the dataset"
            ) from error.__cause__
        unreachable = _unreachable(_download_hosts(builder))
        if unreachable:
            raise not_prepared(f"cannot be downloaded from this machine ({unreachable})") from None
        builder.download_and_prepare()
        try:
            arrays, test_split = _read_tfds(builder)
        except _NotPrepared as again:
            raise not_prepared("downloading did not prepare it") from again.__cause__
    label_feature = builder.info.features["label"]
    return _from_arrays(
        name,
        arrays["train"],
        arrays[test_split],
        tuple(label_feature.names),
        batch_size=batch_size,
        train_size=train_size,
        random_labels=random_labels,
        augment=augment,
        seed=seed,
        transform=transform,
    )


class _NotPrepared(Exception):
    """The dataset's files are not (all) in the data directory."""


def _read_tfds(builder):
    """`({split: (images, labels)}, test split name)` of a prepared dataset.

    `as_dataset` only reads prepared files (it never downloads): a missing dataset fails at
    once. (`tfds.testing.mock_data` replaces it, so mocked datasets need no files.)
    """
    try:
        splits = builder.info.splits
        test_split = "test" if "test" in splits else "validation"
        arrays = {}
        for split in ("train", test_split):
            dataset = builder.as_dataset(split=split, as_supervised=True).batch(1024)
            images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True)
            arrays[split] = (np.concatenate(images), np.concatenate(labels).astype(np.int32))
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError, ValueError) as error:
        raise _NotPrepared() from error
    return arrays, test_split


def _download_hosts(builder):
    """`(host, port)` pairs a download of `builder`'s dataset connects to first: the configured
    HTTPS proxy, else the hosts of its registered URLs (else Google Cloud Storage)."""
    proxy = urllib.request.getproxies().get("https")
    if proxy:
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return [(parsed.hostname, parsed.port or 80)]
    try:
        urls = list(builder.url_infos or ())
    except Exception:  # builders without registered checksums
        urls = []
    hosts = list(dict.fromkeys(urllib.parse.urlsplit(url).hostname for url in urls))
    hosts = [host for host in hosts if host] or ["storage.googleapis.com"]
    return [(host, 443) for host in hosts[:3]]


def _unreachable(hosts, timeout=None):
    """None when a TCP connection to every `(host, port)` opens within `timeout` seconds
    (`NETWORK_TIMEOUT`), else why not. The name lookup has no timeout of its own, so the checks
    run in a daemon thread that is abandoned when the time is up."""
    timeout = NETWORK_TIMEOUT if timeout is None else timeout
    outcome = {}

    def check():
        for host, port in hosts:
            try:
                socket.create_connection((host, port), timeout=timeout).close()
            except OSError as error:
                outcome["error"] = f"{host}:{port}: {error}"
                return
        outcome["error"] = None

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" not in outcome:
        hosts_text = ", ".join(f"{host}:{port}" for host, port in hosts)
        return f"no connection to {hosts_text} within {timeout:g} s"
    return outcome["error"]


# -- shared pipeline ------------------------------------------------------------------------


def _from_arrays(
    name,
    train,
    test,
    class_names,
    *,
    batch_size,
    train_size,
    random_labels,
    augment,
    seed,
    transform=(),
):
    check_positive_int("batch_size", batch_size)
    _check_classes(repr(name), len(class_names))
    x_train, y_train = train
    x_test, y_test = test
    if x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    transform = parse_transforms(check_names("transform", transform))
    if transform:  # the derived data set, whole (before any subset), the same for every seed
        x_train = _transform_array(x_train, transform, split=0)
        x_test = _transform_array(x_test, transform, split=1)
    if train_size is not None:
        check_positive_int("train_size", train_size)
        if train_size > len(x_train):
            raise ValueError(
                f"`train_size`={train_size} exceeds the {len(x_train)} training examples of "
                f"{name!r}."
            )
        subset = np.random.default_rng([seed, 17]).permutation(len(x_train))[:train_size]
        x_train, y_train = x_train[subset], y_train[subset]
    if random_labels:
        y_train = _random_labels(len(y_train), len(class_names), seed)
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    train = train.shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
    train = train.batch(batch_size).map(_to_float, num_parallel_calls=AUTOTUNE)
    train = _augment(train, augment, seed, x_train.shape[1:3]).prefetch(AUTOTUNE)
    test = (
        tf.data.Dataset.from_tensor_slices((x_test, y_test))
        .batch(batch_size)
        .map(_to_float, num_parallel_calls=AUTOTUNE)
        .prefetch(AUTOTUNE)
    )
    info = DatasetInfo(
        name, tuple(x_train.shape[1:]), len(class_names), class_names, len(x_train), len(x_test)
    )
    return train, test, info


def _to_float(images, labels):
    return tf.cast(images, tf.float32) / 255.0, tf.cast(labels, tf.int32)


def _test_pipeline(images, labels, batch_size):
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size).prefetch(AUTOTUNE)


def _random_labels(count, num_classes, seed):
    """Labels drawn uniformly once per example (fixed across epochs)."""
    return np.random.default_rng([seed, 101]).integers(0, num_classes, count).astype(np.int32)


# -- derived data sets ---------------------------------------------------------------------


def transform_images(images, specs, seed):
    """Images of a derived data set: `images` (float, in `[0, 1]`) transformed by `specs`, in
    order, then clipped to `[0, 1]`.

    Specs: `"resample:F"` shrinks the images by the factor `F >= 1` (area averaging) and
    enlarges them back (bilinear): neighbouring pixels grow more alike, the local homogeneity
    of Mouton et al. (2021) rises; `"noise:SIGMA"` adds i.i.d. Gaussian noise of standard
    deviation `SIGMA` (pixel units) to every pixel and channel: it falls. See
    `measures.local_homogeneity`.

    Args:
        images: `(N, H, W, C)` float images in `[0, 1]`.
        specs: a spec or a list of them (or `parse_transforms` output).
        seed: a stateless seed pair (two integers) of the noise.

    Returns:
        The transformed float32 images, same shape.

    Example:

    >>> images = np.random.default_rng(0).random((2, 8, 8, 1), dtype="float32")
    >>> smooth = transform_images(images, "resample:2", seed=(0, 0))
    >>> bool(np.abs(np.diff(smooth, axis=1)).mean() < np.abs(np.diff(images, axis=1)).mean())
    True
    """
    if not (isinstance(specs, list) and all(isinstance(s, tuple) for s in specs)):
        specs = parse_transforms(specs)
    images = tf.cast(images, tf.float32)
    size = tf.shape(images)[1:3]
    for _, name, value in specs:
        if name == "resample" and value != 1:
            small = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) / value), tf.int32), 1)
            images = tf.image.resize(tf.image.resize(images, small, "area"), size, "bilinear")
        if name == "noise" and value > 0:
            images += value * tf.random.stateless_normal(tf.shape(images), seed)
    return tf.clip_by_value(images, 0.0, 1.0)


def parse_transforms(specs):
    """The syntax of derived-data-set specs (see `transform_images`), checked without reading
    data.

    Returns:
        `[(spec, name, value)]`.

    Raises:
        ValueError: naming `transform` and the spec for an unknown or malformed spec.

    Example:

    >>> parse_transforms(["resample:2", "noise:0.1"])
    [('resample:2', 'resample', 2.0), ('noise:0.1', 'noise', 0.1)]
    """
    parsed = []
    for spec in check_names("transform", specs):
        name, _, argument = spec.partition(":")
        name = name.strip()
        if name not in TRANSFORMS:
            raise ValueError(
                f"Unknown transform in `transform`: {spec!r}. Valid: resample:FACTOR, noise:SIGMA."
            )
        value = _number(spec, argument) if argument.strip() else None
        low = 1 if name == "resample" else 0
        if isinstance(value, (bool, str, type(None))) or not low <= value < np.inf:
            what = "a factor >= 1" if name == "resample" else "a standard deviation >= 0"
            raise ValueError(
                f"Malformed transform in `transform`: {spec!r}; {name!r} takes {what}, e.g. "
                f"'{name}:{2 if name == 'resample' else 0.1}'."
            )
        parsed.append((spec, name, float(value)))
    return parsed


def _transform_array(images, specs, split):
    """An in-memory split transformed in fixed chunks (the noise of chunk `i` of split `s` from
    the seed `(TRANSFORM_STREAM, s, i)`: every image gets the same noise in every run), in its
    own dtype (uint8 rounded, as an image folder written from it would hold)."""
    out = np.empty_like(images)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    for index, start in enumerate(range(0, len(images), TRANSFORM_CHUNK)):
        chunk = images[start : start + TRANSFORM_CHUNK].astype(np.float32) / scale
        seed = tf.constant([TRANSFORM_STREAM, split * 2**20 + index], tf.int64)
        result = transform_images(chunk, specs, seed).numpy() * scale
        out[start : start + TRANSFORM_CHUNK] = np.round(result) if scale != 1 else result
    return out


# -- augmentation ---------------------------------------------------------------------------


def augmentation_layers(specs, seed=0, image_size=None):
    """Layers from augmentation specs (e.g. from a command-line list).

    Specs: `"flip"` (`keras.layers.RandomFlip("horizontal")`), `"translate:4"` (random
    translations of up to 4 pixels, `keras.layers.RandomTranslation`, reflected borders),
    `"standard"` (flip + translate:4, the usual CIFAR recipe), `"noise:0.1"` (i.i.d. Gaussian
    noise of standard deviation 0.1, in pixel units of images in `[0, 1]`, added to every pixel
    and channel, a fresh draw per image and epoch, not clipped: values may leave `[0, 1]`;
    `"noise:0"` changes nothing), and the package's deformation layers by short name with
    keyword arguments: `"tps:grid_size=3,max_displacement=2"`, `"affine:rotation=10,scale=0.1"`,
    `"diffeo:cutoff=3,displacement=1"`.

    Args:
        specs: a list of spec strings, or one spec string.
        seed: the layers' seeds are derived from it (one per layer).
        image_size: optional `(height, width)` of the images: the specs are then also checked
            against it (translations of at most the image size, TPS grids no finer than it).

    Returns:
        A list of Keras layers, applied in order; they compute in float32 whatever the global
        dtype policy (the pipeline feeds float32 images; the model casts them).

    Raises:
        ValueError: naming `augment` and the spec for an unknown or malformed spec, or one whose
            arguments the layer rejects.

    Example:

    >>> layers = augmentation_layers(["standard", "tps:grid_size=3,max_displacement=2"], seed=0)
    >>> len(layers)  # a flip, a translation, a TPS warp
    3
    """
    layers = []
    for spec, name, argument in parse_augmentations(specs):
        layer_seed = seed * 1000 + len(layers)
        if name in ("standard", "flip"):
            layers.append(keras.layers.RandomFlip("horizontal", seed=layer_seed, dtype="float32"))
        if name in ("standard", "translate"):
            pixels = 4 if name == "standard" else argument
            if image_size is not None and pixels > min(image_size):
                raise ValueError(
                    f"Bad augmentation in `augment`: {spec!r} translates by up to {pixels:g} "
                    f"pixels, more than the {image_size[0]}x{image_size[1]} images."
                )
            layers.append(_Translate(pixels, seed=layer_seed + 500))
        if name == "noise":
            layers.append(_GaussianNoise(argument, seed=layer_seed))
        if name in DEFORMATION_LAYERS:
            layer_class, _ = DEFORMATION_LAYERS[name]
            try:
                layer = layer_class(seed=layer_seed, dtype="float32", **argument)
                if image_size is not None:
                    layer.check_image_size(*image_size)
            except (TypeError, ValueError) as error:
                raise ValueError(f"Bad augmentation in `augment`: {spec!r}: {error}") from None
            layers.append(layer)
    return layers


def parse_augmentations(specs):
    """The syntax of augmentation specs (see `augmentation_layers`), checked without building
    a layer (so without starting TensorFlow).

    Args:
        specs: a list of spec strings, or one spec string.

    Returns:
        `[(spec, name, argument)]`: `argument` is the pixels of `"translate"`, the standard
        deviation (a float) of `"noise"`, the keyword arguments of a deformation layer, None
        otherwise.

    Raises:
        ValueError: naming `augment` and the spec for an unknown or malformed spec.
        TypeError: naming `augment` when it is not a string or a list of strings.

    Example:

    >>> parse_augmentations("translate:2")
    [('translate:2', 'translate', 2)]
    >>> parse_augmentations(["standard", "noise:0.1"])
    [('standard', 'standard', None), ('noise:0.1', 'noise', 0.1)]
    """
    specs = check_names("augment", specs)
    parsed = []
    for spec in specs:
        if not spec.strip():
            raise ValueError(
                f"`augment` holds an empty spec (a stray comma?); received augment={list(specs)}."
            )
        name, _, arguments = spec.partition(":")
        name = name.strip()
        if name not in AUGMENTATIONS:
            raise ValueError(
                f"Unknown augmentation in `augment`: {spec!r}. Valid: "
                "standard, flip, translate:PIXELS, noise:SIGMA, "
                + ", ".join(f"{n}:key=value,..." for n in DEFORMATION_LAYERS)
            )
        argument = None
        if name in ("standard", "flip") and arguments.strip():
            raise ValueError(
                f"Malformed augmentation in `augment`: {spec!r}; {name!r} takes no arguments."
            )
        if name == "translate":
            argument = _number(spec, arguments or "4")
            if isinstance(argument, (bool, str)) or not 0 <= argument < np.inf:
                raise ValueError(
                    f"Malformed augmentation in `augment`: {spec!r}; 'translate' takes a number "
                    "of pixels >= 0, e.g. 'translate:4'."
                )
        if name == "noise":
            argument = _number(spec, arguments) if arguments.strip() else None
            if isinstance(argument, (bool, str, type(None))) or not 0 <= argument < np.inf:
                raise ValueError(
                    f"Malformed augmentation in `augment`: {spec!r}; 'noise' takes a standard "
                    "deviation >= 0 (pixel values in [0, 1]), e.g. 'noise:0.1'."
                )
            argument = float(argument)
        if name in DEFORMATION_LAYERS:
            argument = {}
            for item in filter(None, arguments.split(",")):
                key, equals, value = item.partition("=")
                if not equals:
                    raise ValueError(
                        f"Malformed augmentation in `augment`: {spec!r}; use "
                        f"'{name}:key=value,key=value'."
                    )
                argument[key.strip()] = _number(spec, value)
        parsed.append((spec, name, argument))
    return parsed


class _Translate:
    """Random translations of up to `pixels` pixels (Keras's `RandomTranslation`), sized on the
    first batch it sees."""

    def __init__(self, pixels, seed):
        self.pixels, self.seed, self.layer = pixels, seed, None

    def __call__(self, images, training=True):
        if self.layer is None:
            height, width = images.shape[1], images.shape[2]
            self.layer = keras.layers.RandomTranslation(
                self.pixels / height,
                self.pixels / width,
                fill_mode="reflect",
                seed=self.seed,
                dtype="float32",
            )
        return self.layer(images, training=training)


class _GaussianNoise:
    """Adds i.i.d. Gaussian noise of standard deviation `stddev` to every pixel and channel of a
    batch of images: a fresh draw per call (per batch, so per image and epoch), not clipped.

    Call `n` (1, 2, ...) adds `stddev * tf.random.stateless_normal(shape, seed=s)`, with
    `s = tf.random.experimental.stateless_fold_in([seed, n], NOISE_STREAM)`. TensorFlow ops
    whatever the Keras backend (the layers run in `tf.data`; `keras.layers.GaussianNoise` draws
    on the active backend, which fails in `tf.data` on JAX, and rejects `stddev > 1`). The call
    counter is a CPU variable, as `tf.data` runs there.
    """

    def __init__(self, stddev, seed):
        self.stddev, self.seed = float(stddev), int(seed)
        with tf.init_scope(), tf.device("/CPU:0"):
            self.calls = tf.Variable([self.seed, 0], dtype=tf.int64, trainable=False)

    def __call__(self, images, training=True):
        images = tf.cast(images, tf.float32)
        if not training or self.stddev == 0:
            return images
        seed = self.calls.assign_add(tf.constant([0, 1], tf.int64))
        seed = tf.random.experimental.stateless_fold_in(seed, NOISE_STREAM)
        return images + self.stddev * tf.random.stateless_normal(tf.shape(images), seed)


def _number(spec, text):
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    if text:
        return text
    raise ValueError(f"Malformed augmentation in `augment`: {spec!r}.")


def _augment(dataset, specs, seed, image_size=None):
    layers = augmentation_layers(specs, seed, image_size=image_size)
    if not layers:
        return dataset

    def apply(images, labels):
        for layer in layers:
            images = layer(images, training=True)
        return tf.cast(images, tf.float32), labels

    # Sequential map: seeded layers draw from their seed stream in a fixed order.
    return dataset.map(apply)


RESIZE_METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3")


def resize_images(images, size, method="bilinear"):
    """Resizes a batch of images in `[0, 1]` (e.g. CIFAR-10's 32 px to a 224-px model input).

    Args:
        images: `(N, H, W, C)` images.
        size: `(height, width)` of the output.
        method: a `tf.image.resize` method: `"bilinear"` (default), `"nearest"`, `"bicubic"`,
            `"area"` or `"lanczos3"`; the result is clipped to `[0, 1]` (bicubic and Lanczos
            overshoot).

    Returns:
        `(N, height, width, C)` float32 images.

    Example:

    >>> resize_images(np.zeros((2, 32, 32, 3), "float32"), (224, 224)).shape
    TensorShape([2, 224, 224, 3])
    """
    check_choice("method", method, RESIZE_METHODS)
    if len(size) != 2:
        raise ValueError(f"`size` must be (height, width); received size={size!r}.")
    for argument, value in zip(("size[0]", "size[1]"), size, strict=True):
        check_positive_int(argument, value)
    resized = tf.image.resize(tf.cast(images, tf.float32), tuple(size), method=method)
    return tf.clip_by_value(resized, 0.0, 1.0)


def take_images(dataset, count):
    """The first `count` images of a batched `(images, labels)` dataset, as float32 numpy.

    Raises:
        ValueError: naming `count` if the dataset holds fewer images.
    """
    check_positive_int("count", count)
    images, total = [], 0
    for batch, _ in dataset:
        images.append(batch.numpy())
        total += len(images[-1])
        if total >= count:
            break
    if total < count:
        raise ValueError(f"`count`={count} exceeds the {total} images of the dataset.")
    return np.concatenate(images)[:count].astype(np.float32)
