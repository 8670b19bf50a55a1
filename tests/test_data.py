"""deformstab_tf.data: the synthetic task, image folders, TFDS, subsets, random labels,
augmentation."""

import os
import socket
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from deformstab_tf import data as data_module
from deformstab_tf.data import (
    augmentation_layers,
    load_dataset,
    synthetic,
    synthetic_prototypes,
    take_images,
)
from deformstab_tf.deformations.layers import RandomThinPlateSpline


def _all(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True)
    return np.concatenate(images), np.concatenate(labels)


SMALL = {"num_classes": 4, "image_size": 16, "samples_per_epoch": 64, "test_size": 32}


def test_synthetic_prototypes_are_distinct_smooth_images():
    prototypes = synthetic_prototypes(6, 24, 3, seed=0)
    assert prototypes.shape == (6, 24, 24, 3) and prototypes.dtype == np.float32
    assert prototypes.min() >= 0 and prototypes.max() <= 1
    np.testing.assert_array_equal(prototypes, synthetic_prototypes(6, 24, 3, seed=0))
    assert not np.allclose(prototypes, synthetic_prototypes(6, 24, 3, seed=1))
    flat = prototypes.reshape(6, -1)
    distances = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
    assert distances[~np.eye(6, dtype=bool)].min() > 1.0  # every pair of classes differs
    # Structure, not noise: neighbouring pixels are strongly correlated.
    a, b = prototypes[:, :, :-1].ravel(), prototypes[:, :, 1:].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.8


def test_texture_prototypes_are_periodic_gaussian_smoothed_noise():
    from scipy import ndimage

    textures = synthetic_prototypes(10, 32, 3, seed=4, style="texture")
    assert textures.shape == (10, 32, 32, 3) and textures.dtype == np.float32
    again = synthetic_prototypes(10, 32, 3, seed=4, style="texture")
    np.testing.assert_array_equal(textures, again)
    # Against scipy: the same noise through ndimage's Gaussian (wrap mode), standardised and
    # mapped as documented (mean 0.5, std 0.2, clipped to [0, 1]).
    noise = np.random.default_rng([4, 7919]).standard_normal((10, 32, 32, 3))
    smooth = ndimage.gaussian_filter(noise, (0, 1.0, 1.0, 0), mode="wrap", truncate=8.0)
    expected = np.clip(0.5 + 0.2 * (smooth - smooth.mean()) / smooth.std(), 0, 1)
    np.testing.assert_allclose(textures, expected, atol=1e-5)
    # Closed form: Gaussian-smoothed white noise of std 1 px has neighbour correlation
    # exp(-1 / (4 sigma^2)) = 0.78 (fine texture, not strokes: the strokes exceed 0.8 above).
    a, b = textures[:, :, :-1].ravel(), textures[:, :, 1:].ravel()
    assert abs(np.corrcoef(a, b)[0, 1] - np.exp(-0.25)) < 0.03
    train, _, _ = synthetic(**SMALL, prototypes="texture", max_displacement=0.0, noise=0.0)
    images, labels = _all(train)
    np.testing.assert_allclose(
        images, synthetic_prototypes(4, 16, 3, seed=0, style="texture")[labels], atol=1e-6
    )
    with pytest.raises(ValueError, match="prototypes='noise'"):
        synthetic(**SMALL, prototypes="noise")


def test_synthetic_samples_are_tps_warps_of_their_prototype():
    train, test, info = synthetic(**SMALL, max_displacement=0.0, noise=0.0, batch_size=16)
    assert info.image_shape == (16, 16, 3) and info.num_classes == 4
    assert (info.train_size, info.test_size) == (64, 32)
    prototypes = synthetic_prototypes(4, 16, 3, seed=0)
    images, labels = _all(train)
    assert images.dtype == np.float32 and labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(labels), [16] * 4)
    np.testing.assert_allclose(images, prototypes[labels], atol=1e-6)  # zero magnitude: identity
    # With C > 0 every sample is the TPS warp drawn by a layer with the task's seed.
    train, test, _ = synthetic(**SMALL, max_displacement=2.0, noise=0.0, batch_size=64, seed=3)
    images, labels = _all(train)
    expected = RandomThinPlateSpline(3, 2.0, seed=3)(
        synthetic_prototypes(4, 16, 3, seed=3)[labels], training=True
    )
    np.testing.assert_allclose(images, np.clip(expected, 0, 1), atol=1e-5)
    assert np.abs(images - synthetic_prototypes(4, 16, 3, seed=3)[labels]).max() > 0.1


def test_synthetic_is_deterministic_new_warps_each_epoch_and_fixed_test_split():
    first = synthetic(**SMALL, seed=5)
    second = synthetic(**SMALL, seed=5)
    epoch1, epoch2 = _all(first[0]), _all(first[0])
    np.testing.assert_array_equal(epoch1[0], _all(second[0])[0])  # same seed, same numbers
    assert not np.allclose(epoch1[0], epoch2[0])  # fresh deformations every epoch
    np.testing.assert_array_equal(_all(first[1])[0], _all(first[1])[0])
    np.testing.assert_array_equal(_all(first[1])[0], _all(second[1])[0])


def test_synthetic_task_is_learnable():
    keras.utils.set_random_seed(0)
    train, test, info = synthetic(
        num_classes=4, image_size=16, samples_per_epoch=512, test_size=128, batch_size=32
    )
    model = keras.Sequential(
        [
            keras.Input(info.image_shape),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4),
        ]
    )
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train, epochs=4, verbose=0)
    _, accuracy = model.evaluate(test, verbose=0)
    assert accuracy > 0.6  # chance is 0.25


def _write_tree(root, layout, classes=("cat", "ant", "bee"), per_class=6, size=(8, 10)):
    rng = np.random.default_rng(0)
    splits = {"flat": [""], "split": ["train", "test"]}[layout]
    for split in splits:
        for label, name in enumerate(classes):
            directory = os.path.join(root, split, name)
            os.makedirs(directory, exist_ok=True)
            for i in range(per_class):
                image = np.full((*size, 3), 40 * label, np.uint8) + rng.integers(0, 30, (*size, 3))
                encoded = tf.io.encode_png(image.astype(np.uint8)).numpy()
                with open(os.path.join(directory, f"{i}.png"), "wb") as file:
                    file.write(encoded)


def test_image_folder_both_layouts_sorted_classes_and_validation_split(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFORMSTAB_CACHE", str(tmp_path / "cache"))
    _write_tree(tmp_path / "split", "split")
    train, test, info = load_dataset(f"folder:{tmp_path / 'split'}", batch_size=4)
    assert info.class_names == ("ant", "bee", "cat")
    assert info.image_shape == (8, 10, 3) and (info.train_size, info.test_size) == (18, 18)
    images, labels = _all(test)
    # "ant" (label 0) was written with value 40 * 1: pixels in [40, 70).
    assert images.min() >= 0 and images.max() <= 1
    assert np.all((images[labels == 0] * 255).round() >= 40)
    assert np.all((images[labels == 1] * 255).round() >= 80)
    # Decoded once: the second load reads the cache.
    assert len(os.listdir(tmp_path / "cache")) == 2

    _write_tree(tmp_path / "flat", "flat")
    kwargs = {"batch_size": 4, "validation_fraction": 0.3, "seed": 1}
    train, test, info = load_dataset(f"folder:{tmp_path / 'flat'}", **kwargs)
    assert (info.train_size, info.test_size) == (12, 6)  # round(0.3 * 6) held out per class
    x_train, _ = _all(train)
    x_test, y_test = _all(test)
    np.testing.assert_array_equal(y_test, [0, 0, 1, 1, 2, 2])  # stratified, in order
    train_rows = {row.tobytes() for row in x_train}
    assert not train_rows & {row.tobytes() for row in x_test}  # disjoint
    again = load_dataset(f"folder:{tmp_path / 'flat'}", **kwargs)
    np.testing.assert_array_equal(_all(again[1])[0], x_test)  # seeded


def _write_png(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(tf.io.encode_png(np.asarray(image, np.uint8)).numpy())


def test_image_folder_gives_every_image_one_channel_count_as_keras_loaders_do(
    tmp_path, monkeypatch
):
    """One grayscale and one RGBA image among RGB ones: decoded as RGB (issue 26: the error
    said "Images differ in size" for images of one size)."""
    monkeypatch.setenv("DEFORMSTAB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "mixed"
    for label, name in enumerate(("ant", "bee")):
        for i in range(3):
            _write_png(root / "train" / name / f"{i}.png", np.full((8, 10, 3), 10 * i + label))
            # The test tree is all grayscale: converted to the training split's RGB.
            _write_png(root / "test" / name / f"{i}.png", np.full((8, 10, 1), 50 + label))
    _write_png(root / "train" / "ant" / "0.png", np.full((8, 10, 1), 7))  # grayscale
    rgba = np.concatenate([np.full((8, 10, 3), [100, 150, 200]), np.zeros((8, 10, 1))], -1)
    _write_png(root / "train" / "bee" / "1.png", rgba)  # RGBA, fully transparent
    train, test, info = load_dataset(f"folder:{root}", batch_size=64)
    assert info.image_shape == (8, 10, 3)
    x_train, y_train = _all(train)
    corners = np.round(x_train[:, 0, 0] * 255).astype(int)
    colours = {(int(y), *c) for c, y in zip(corners, y_train, strict=True)}
    # Grayscale repeated into RGB; the alpha channel dropped, not blended (colours kept).
    assert colours == {(0, 7, 7, 7), (0, 10, 10, 10), (0, 20, 20, 20),
                       (1, 1, 1, 1), (1, 100, 150, 200), (1, 21, 21, 21)}  # fmt: skip
    x_test, y_test = _all(test)
    expected = np.broadcast_to(50 + y_test[:, None, None, None], x_test.shape)
    np.testing.assert_array_equal(np.round(x_test * 255), expected)

    # Mostly grayscale: one channel, an RGB image as its luminance (as decode_png(channels=1)).
    gray = tmp_path / "gray"
    for label, name in enumerate(("ant", "bee")):
        for split in ("train", "test"):
            for i in range(2):
                _write_png(gray / split / name / f"{i}.png", np.full((8, 10, 1), 30 + label))
    red = np.full((8, 10, 3), [255, 0, 0])
    _write_png(gray / "train" / "bee" / "0.png", red)
    train, _, info = load_dataset(f"folder:{gray}", batch_size=64)
    assert info.image_shape == (8, 10, 1)
    luminance = tf.io.decode_png(tf.io.encode_png(red.astype(np.uint8)), channels=1)[0, 0, 0]
    values = {int(v) for v in np.round(_all(train)[0][:, 0, 0, 0] * 255)}
    assert values == {30, 31, int(luminance)} and int(luminance) == 76

    # Images of different sizes are still an error, naming (height, width).
    _write_png(root / "train" / "ant" / "1.png", np.full((9, 10, 3), 0))
    with pytest.raises(ValueError, match=r"differ in size: .* is \(8, 10\), .* is \(9, 10\)"):
        load_dataset(f"folder:{root}")


def test_subsets_and_random_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFORMSTAB_CACHE", str(tmp_path / "cache"))
    _write_tree(tmp_path / "tree", "split", per_class=10)
    source = f"folder:{tmp_path / 'tree'}"
    full = _all(load_dataset(source, batch_size=64)[0])
    subset, _, info = load_dataset(source, batch_size=64, train_size=7, seed=2)
    assert info.train_size == 7
    x, y = _all(subset)
    full_rows = {row.tobytes(): label for row, label in zip(*full, strict=True)}
    assert all(full_rows[row.tobytes()] == label for row, label in zip(x, y, strict=True))
    again = _all(load_dataset(source, batch_size=64, train_size=7, seed=2)[0])
    assert {r.tobytes() for r in again[0]} == {r.tobytes() for r in x}

    train, test, _ = load_dataset(source, batch_size=64, random_labels=True, seed=2)
    x1, y1 = _all(train)
    epoch1 = dict(zip([r.tobytes() for r in x1], y1, strict=True))
    x2, y2 = _all(train)
    assert all(epoch1[r.tobytes()] == label for r, label in zip(x2, y2, strict=True))  # fixed
    true = np.array([full_rows[r.tobytes()] for r in x2])
    assert np.mean(true != y2) > 0.4  # mostly not the true labels
    np.testing.assert_array_equal(_all(test)[1], np.repeat([0, 1, 2], 10))  # test untouched


def test_augmentation_specs():
    layers = augmentation_layers(
        ["standard", "tps:grid_size=3,max_displacement=1.5", "diffeo:cutoff=4,displacement=1"]
    )
    assert [type(layer).__name__ for layer in layers] == [
        "RandomFlip",
        "_Translate",
        "RandomThinPlateSpline",
        "RandomDiffeomorphism",
    ]
    assert layers[2].max_displacement == 1.5 and layers[3].cutoff == 4
    with pytest.raises(ValueError, match=r"`augment`: 'rotate:10'"):
        augmentation_layers(["rotate:10"])
    with pytest.raises(ValueError, match="Malformed augmentation"):
        augmentation_layers(["tps:3"])
    with pytest.raises(ValueError, match="max_displacement"):
        augmentation_layers(["tps:max_displacement=-1"])
    # In a pipeline: flips and translations change images, labels pass through.
    train, _, _ = synthetic(**SMALL, augment=["standard"], noise=0.0, max_displacement=0.0)
    plain, _, _ = synthetic(**SMALL, noise=0.0, max_displacement=0.0)
    (xa, ya), (xp, yp) = _all(train), _all(plain)
    np.testing.assert_array_equal(ya, yp)
    assert not np.allclose(xa, xp)


def _noise_draw(shape, layer_seed, call):
    """The documented recipe of the `noise` augmentation's `call`-th draw (1, 2, ...)."""
    seed = tf.random.experimental.stateless_fold_in(
        tf.constant([layer_seed, call], tf.int64), data_module.NOISE_STREAM
    )
    return tf.random.stateless_normal(shape, seed).numpy()


def test_noise_augmentation_has_the_closed_form_statistics():
    sigma, shape = 0.1, (64, 16, 16, 3)
    (layer,) = augmentation_layers(["noise:0.1"], seed=2)
    assert type(layer).__name__ == "_GaussianNoise" and layer.stddev == sigma
    batches = tf.data.Dataset.from_tensors(tf.fill(shape, 0.5)).repeat(2)
    batches = [x.numpy() for x in batches.map(lambda x: layer(x, training=True))]  # TF graph
    noise = batches[0] - 0.5
    assert noise.dtype == np.float32
    # Exactly the documented draws: seeds (2 * 1000 + 0, call) with NOISE_STREAM folded in.
    np.testing.assert_allclose(noise, sigma * _noise_draw(shape, 2000, 1), atol=1e-6)
    np.testing.assert_allclose(batches[1] - 0.5, sigma * _noise_draw(shape, 2000, 2), atol=1e-6)
    # N(0, sigma^2) per pixel value, within 5 standard errors of the sample size.
    n = noise.size
    assert abs(noise.mean()) < 5 * sigma / np.sqrt(n)
    assert abs(noise.std() / sigma - 1) < 5 / np.sqrt(2 * n)
    within = np.mean(np.abs(noise) < sigma)  # P(|Z| < 1) = erf(1 / sqrt 2) = 0.6827
    assert abs(within - 0.682689) < 5 * np.sqrt(0.682689 * 0.317311 / n)
    # Gaussian tails, not truncated: P(Z < -3) = P(Z > 3) = 0.00135, ~66 values each.
    assert noise.min() < -3 * sigma and noise.max() > 3 * sigma

    def correlation(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1], 5 / np.sqrt(a.size)

    pairs = [
        (noise[:, :, :-1], noise[:, :, 1:]),  # horizontal neighbours
        (noise[:, :-1], noise[:, 1:]),  # vertical neighbours
        (noise[..., 0], noise[..., 1]),  # channels of a pixel
        (noise[0::2], noise[1::2]),  # images of a batch
        (noise, batches[1] - 0.5),  # epochs (successive calls)
    ]
    for a, b in pairs:
        r, tolerance = correlation(a, b)
        assert abs(r) < tolerance


def test_noise_augmentation_is_seeded_fresh_each_epoch_and_spares_the_test_split(
    tmp_path, monkeypatch
):
    options = {**SMALL, "max_displacement": 0.0, "noise": 0.0}  # training images = prototypes
    prototypes = synthetic_prototypes(4, 16, 3, seed=3)

    def noises(augment, seed=3, epochs=2):
        train, test, _ = load_dataset(
            "synthetic", batch_size=16, augment=augment, seed=seed, synthetic_options=options
        )
        draws = []
        for _ in range(epochs):
            images, labels = _all(train)
            draws.append(images - prototypes[labels])
        return draws, _all(test)

    (first, second), test = noises(["noise:0.1"])
    again, test_again = noises(["noise:0.1"])
    np.testing.assert_array_equal(first, again[0])  # the same seed, the same noise
    np.testing.assert_array_equal(second, again[1])
    for draw in (first, second):
        assert abs(draw.std() / 0.1 - 1) < 5 / np.sqrt(2 * draw.size)
    assert abs(np.corrcoef(first.ravel(), second.ravel())[0, 1]) < 5 / np.sqrt(first.size)
    other, _ = noises(["noise:0.1"], seed=4, epochs=1)  # prototypes differ, noise is noise
    assert abs(np.corrcoef(first.ravel(), other[0].ravel())[0, 1]) < 5 / np.sqrt(first.size)
    # noise:0 changes nothing; no spec changes the test split.
    (zero, _), test_zero = noises(["noise:0"])
    (plain, _), test_plain = noises([])
    np.testing.assert_array_equal(zero, 0.0)
    np.testing.assert_array_equal(plain, 0.0)
    for split in (test, test_zero):
        np.testing.assert_array_equal(split[0], test_plain[0])
        np.testing.assert_array_equal(split[1], test_plain[1])
    # Image folders: the training split is noisy, the test split is not.
    monkeypatch.setenv("DEFORMSTAB_CACHE", str(tmp_path / "cache"))
    _write_tree(tmp_path / "tree", "split")
    source = f"folder:{tmp_path / 'tree'}"
    noisy_train, noisy_test, _ = load_dataset(source, batch_size=64, augment=["noise:0.2"])
    clean_train, clean_test, _ = load_dataset(source, batch_size=64)
    (xn, yn), (xc, yc) = _all(noisy_train), _all(clean_train)
    np.testing.assert_array_equal(yn, yc)  # the same shuffle
    assert abs((xn - xc).std() / 0.2 - 1) < 5 / np.sqrt(2 * xn.size)
    assert xn.min() < 0  # not clipped
    np.testing.assert_array_equal(_all(noisy_test)[0], _all(clean_test)[0])


def test_noise_augmentation_specs_and_order():
    parse = data_module.parse_augmentations
    assert parse("noise:0.1") == [("noise:0.1", "noise", 0.1)]
    assert parse(["noise:0", "noise: 2"]) == [("noise:0", "noise", 0.0), ("noise: 2", "noise", 2.0)]
    assert isinstance(parse("noise:1")[0][2], float)
    for spec in ["noise", "noise:", "noise:abc", "noise:-1", "noise:inf", "noise:nan",
                 "noise:True", "noise:sigma=0.1"]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"`augment`: '{spec}'; 'noise' takes a standard"):
            parse(spec)
        with pytest.raises(ValueError, match=rf"`augment`: '{spec}'"):
            load_dataset("synthetic", augment=[spec], synthetic_options=SMALL)
    with pytest.raises(ValueError, match=r"Valid: standard, flip, translate:PIXELS, noise:SIGMA"):
        parse("gaussian:0.1")
    # In order, after "standard": flips and translations of the clean images, then noise.
    layers = augmentation_layers(["standard", "noise:0.1"], seed=1)
    names = ["RandomFlip", "_Translate", "_GaussianNoise"]
    assert [type(layer).__name__ for layer in layers] == names
    assert layers[2].seed == 1 * 1000 + 2
    reverse = augmentation_layers(["noise:0.1", "standard"], seed=1)
    assert [type(layer).__name__ for layer in reverse] == names[2:] + names[:2]
    options = {**SMALL, "max_displacement": 0.0, "noise": 0.0}
    kwargs = {"batch_size": 64, "seed": 1, "synthetic_options": options}
    both, _ = _all(load_dataset("synthetic", augment=["standard", "noise:0.1"], **kwargs)[0])
    standard, _ = _all(load_dataset("synthetic", augment=["standard"], **kwargs)[0])
    np.testing.assert_allclose(both - standard, 0.1 * _noise_draw(both.shape, 1002, 1), atol=1e-6)


def test_take_images_and_errors(tmp_path):
    _, test, _ = synthetic(**SMALL, batch_size=10)
    images = take_images(test, 25)
    assert images.shape == (25, 16, 16, 3)
    np.testing.assert_array_equal(images, _all(test)[0][:25])
    with pytest.raises(ValueError, match="`count`=40"):
        take_images(test, 40)
    with pytest.raises(ValueError, match="missing"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(ValueError, match="`source`='imagenet_typo'"):
        load_dataset("imagenet_typo")


def test_tfds_mock_data_and_fast_failure_when_not_prepared(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        train, test, info = load_dataset("mnist", batch_size=8, train_size=12)
    assert info.image_shape == (28, 28, 1) and info.num_classes == 10
    assert info.train_size == 12
    images, labels = _all(train)
    assert images.shape == (12, 28, 28, 1) and images.max() <= 1.0

    downloads, lookups = [], []
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", lambda self, **_: downloads.append(1)
    )
    real_lookup = socket.getaddrinfo

    def no_network(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    # Offline by request: no network check, no download, today's instructions.
    started = time.time()
    with pytest.raises(ValueError, match=r"'cifar10' is not prepared.*download=False.*tfds build"):
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    assert lookups == [] and downloads == []
    # Downloads by default; without network it fails at the check, in seconds, naming the
    # host CIFAR-10 comes from (TFDS itself retries for about 3.5 minutes here).
    with pytest.raises(
        ValueError,
        match=r"'cifar10' is not prepared.*cannot be downloaded from this machine "
        r"\(www\.cs\.toronto\.edu:443.*tfds build cifar10.*folder:PATH",
    ):
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert lookups == ["www.cs.toronto.edu"] and downloads == []

    # A name lookup that hangs: the check gives up after its timeout.
    def hanging_lookup(*args, **kwargs):
        time.sleep(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    monkeypatch.setattr(data_module, "NETWORK_TIMEOUT", 0.5)
    with pytest.raises(ValueError, match=r"no connection to www\.cs\.toronto\.edu:443 within 0\.5"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert time.time() - started < 10
    with pytest.raises(TypeError, match="`download` must be True or False; received download='no'"):
        load_dataset("cifar10", data_dir=str(tmp_path), download="no")

    # With network (connections succeed), a missing dataset is downloaded and then read.
    monkeypatch.setattr(socket, "getaddrinfo", real_lookup)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: _Closable())
    with tfds.testing.mock_data(num_examples=10):
        reads = []
        read = data_module._read_tfds

        def first_read_fails(builder):
            reads.append(builder.name)
            if len(reads) == 1:
                raise data_module._NotPrepared() from FileNotFoundError("no files")
            return read(builder)

        monkeypatch.setattr(data_module, "_read_tfds", first_read_fails)
        monkeypatch.setattr(
            tfds.core.DatasetBuilder,
            "download_and_prepare",
            lambda self, **_: downloads.append(self.name),
        )
        train, test, info = load_dataset("mnist", batch_size=5)
    assert downloads == ["mnist"] and reads == ["mnist", "mnist"]
    assert info.train_size == 10


class _Closable:
    def close(self):
        pass


def test_bad_arguments_name_the_argument_before_any_data_is_read(tmp_path):
    tiny = {"synthetic_options": {**SMALL, "num_classes": 2}}
    cases = [
        ({"seed": -1}, ValueError, r"`seed` must be an integer.*seed=-1"),
        ({"seed": 1.5}, ValueError, r"seed=1\.5"),
        ({"batch_size": 0}, ValueError, r"batch_size=0"),
        ({"train_size": 0}, ValueError, r"train_size=0"),
        ({"random_labels": "no"}, TypeError, r"`random_labels`.*'no'"),  # "no" is truthy
        ({"augment": 42}, TypeError, r"`augment`.*augment=42"),
        ({"augment": ["translate:abc"]}, ValueError, r"`augment`: 'translate:abc'.*pixels"),
        ({"augment": ["translate:-2"]}, ValueError, r"`augment`: 'translate:-2'"),
        ({"augment": ["translate:100"]}, ValueError, r"'translate:100'.*100 pixels.*16x16"),
        ({"augment": ["tps:grid_size=40"]}, ValueError, r"'tps:grid_size=40'.*grid_size"),
        ({"augment": ["tps:foo=1"]}, ValueError, r"`augment`: 'tps:foo=1'.*foo"),
        ({"augment": ["flip:vertical"]}, ValueError, r"'flip' takes no arguments"),
        ({"augment": ["flip", ""]}, ValueError, r"empty spec"),
        ({"validation_fraction": "0.1"}, ValueError, r"validation_fraction='0.1'"),
        ({"data_dir": 5}, TypeError, r"`data_dir`.*data_dir=5"),
        ({"synthetic_options": {"foo": 1}}, ValueError, r"`synthetic_options` \['foo'\]"),
        ({"synthetic_options": {"num_classes": 1}}, ValueError, r"`num_classes` must be >= 2"),
        ({"synthetic_options": {"image_size": 2}}, ValueError, r"`grid_size`.*image_size=2"),
        ({"synthetic_options": {"noise": -1}}, ValueError, r"noise=-1"),
        ({"source": "folder:"}, ValueError, r"`source`='folder:' names no directory"),
    ]
    for settings, error, message in cases:
        with pytest.raises(error, match=message):
            load_dataset(**{"source": "synthetic", **tiny, **settings})
    # One spec as a string is one spec, not a list of characters: the same augmented batches.
    as_string = load_dataset("synthetic", augment="flip", seed=3, **tiny)[0]
    as_list = load_dataset("synthetic", augment=["flip"], seed=3, **tiny)[0]
    np.testing.assert_array_equal(_all(as_string.take(1))[0], _all(as_list.take(1))[0])


def test_folders_that_cannot_make_a_classification_task(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFORMSTAB_CACHE", str(tmp_path / "cache"))
    # One image per class and no test/ tree: nothing would be left to train on.
    _write_tree(tmp_path / "single", "flat", per_class=1)
    with pytest.raises(ValueError, match=r"at least 2 images per class.*ant \(1\), bee \(1\)"):
        load_dataset(f"folder:{tmp_path / 'single'}")
    _write_tree(tmp_path / "one_class", "split", classes=("cat",))
    with pytest.raises(ValueError, match=r"needs at least 2 classes.*one_class.*has 1"):
        load_dataset(f"folder:{tmp_path / 'one_class'}")
    _write_tree(tmp_path / "hollow", "flat")
    (tmp_path / "hollow" / "dog").mkdir()
    with pytest.raises(ValueError, match=r"class folders \['dog'\] hold no images"):
        load_dataset(f"folder:{tmp_path / 'hollow'}")
    assert not os.path.exists(tmp_path / "cache")  # rejected before any image was decoded


def test_derived_data_sets_are_fixed_per_image_and_shift_local_homogeneity(tmp_path, monkeypatch):
    from deformstab_tf.measures import local_homogeneity

    monkeypatch.setenv("DEFORMSTAB_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            for i in range(40):  # mid-grey textures: noise of 0.1 is rarely clipped
                image = 90 + rng.integers(0, 80, (12, 12, 3))
                _write_png(str(tmp_path / "tree" / split / label / f"{i}.png"), image)
    source = f"folder:{tmp_path / 'tree'}"
    plain = _all(load_dataset(source, batch_size=128)[1])[0]
    noisy = _all(load_dataset(source, batch_size=128, transform="noise:0.1")[1])[0]
    smooth = _all(load_dataset(source, batch_size=128, transform=["resample:2"])[1])[0]
    # the noise is the same image by image whatever the training seed, and in both splits
    again = _all(load_dataset(source, batch_size=128, transform="noise:0.1", seed=5)[1])[0]
    np.testing.assert_array_equal(noisy, again)
    train_plain = _all(load_dataset(source, batch_size=128, train_size=8, seed=3)[0])
    train_noisy = _all(
        load_dataset(source, batch_size=128, train_size=8, seed=3, transform="noise:0.1")[0]
    )
    np.testing.assert_array_equal(train_plain[1], train_noisy[1])  # the same images, subset
    assert np.abs(train_plain[0] - train_noisy[0]).mean() > 0.05
    # closed forms: noise of std 0.1 (rounded to uint8), resampling keeps the mean brightness
    difference = noisy - plain
    assert abs(difference.mean()) < 0.005 and difference.std() == pytest.approx(0.1, rel=0.03)
    assert smooth.mean() == pytest.approx(plain.mean(), abs=0.003)
    # local homogeneity orders them; identity specs change nothing
    h = {name: local_homogeneity(x)["input"] for name, x in
         [("noisy", noisy), ("plain", plain), ("smooth", smooth)]}  # fmt: skip
    assert h["noisy"] < h["plain"] < h["smooth"]
    unchanged = _all(load_dataset(source, batch_size=128, transform=["resample:1", "noise:0"])[1])
    np.testing.assert_array_equal(unchanged[0], plain)
    # the synthetic task takes them too (a fresh draw per training sample)
    base = _all(synthetic(**SMALL)[1])[0]
    resampled = _all(synthetic(**SMALL, transform="resample:4")[1])[0]
    assert local_homogeneity(resampled)["input"] > local_homogeneity(base)["input"]


def test_transform_specs_are_checked_before_any_data_is_read(tmp_path):
    from deformstab_tf.training import check_config, run_dataset_arguments

    for spec in ["blur:2", "resample:0.5", "noise:-1", "noise", "resample:x"]:
        with pytest.raises(ValueError, match="transform") as error:
            load_dataset(f"folder:{tmp_path / 'missing'}", transform=spec)
        assert "\n" not in str(error.value)
    with pytest.raises(TypeError, match="transform"):
        load_dataset("synthetic", transform=3)
    config = check_config({"transform": "resample:2"})
    assert config["transform"] == ("resample:2",)
    assert run_dataset_arguments(config)["transform"] == ("resample:2",)
    assert run_dataset_arguments({"dataset": "synthetic"})["transform"] == ()  # older runs
    with pytest.raises(ValueError, match="transform"):
        check_config({"transform": ["noise:0.1", "sharpen:1"]})
