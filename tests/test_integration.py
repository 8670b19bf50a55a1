"""The parts together, as a user wires them: pipeline -> layers -> model -> measures -> logs."""

import json

import keras
import numpy as np
import tensorflow as tf

import deformstab_tf as ds


def synthetic_images(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, size, size, 3)).astype("float32")
    return tf.nn.avg_pool2d(images, 3, 1, "SAME").numpy()


def test_fit_with_augmentation_and_stability_callback(tmp_path):
    keras.utils.set_random_seed(0)
    model = ds.build_vgg([(4,), (8,)], downsample="blur", input_shape=(16, 16, 3), num_classes=3)
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True
    )
    images, labels = synthetic_images(32), np.arange(32) % 3
    augment = ds.RandomAffine(rotation=10, translation=0.05, seed=1)
    train = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .batch(8)
        .map(lambda x, y: (augment(x), y))
    )
    callback = ds.StabilityCallback(
        images[:8],
        ds.RandomThinPlateSpline(grid_size=3, max_displacement=2.0, seed=0),
        measures=("sensitivity", "relative_stability", "shift_consistency", "smoothness"),
        log_dir=str(tmp_path),
        batch_size=4,
        seed=0,
    )
    history = model.fit(train, epochs=2, callbacks=[callback], shuffle=False, verbose=0)

    probes = ds.probe_layer_names(model)
    assert probes == ["input", "block1_conv1", "block1_down", "block2_conv1", "block2_down"]
    for probe in probes:
        values = history.history[f"stability/sensitivity/{probe}"]
        assert len(values) == 2 and np.all(np.isfinite(values)) and np.all(np.array(values) > 0)
        assert np.isfinite(history.history[f"stability/relative_stability/R/{probe}"]).all()
    assert 0.0 <= history.history["stability/shift_consistency"][-1] <= 1.0
    # Initialisation + 2 epochs, all in the JSON file.
    assert [m["epoch"] for m in callback.history] == [0, 1, 2]
    saved = json.loads((tmp_path / "stability" / "measurements.json").read_text())
    assert [record["epoch"] for record in saved["history"]] == [0, 1, 2]
    assert set(saved["history"][-1]["results"]["sensitivity"]["values"]) == set(probes)


def test_input_probe_sensitivity_is_the_pixel_cosine_ratio():
    """At the `input` probe point, S is computed on the pixels: check it against numpy, with the
    deformation drawn by an identically seeded layer."""
    model = ds.build_vgg([(4,)], downsample="max", input_shape=(16, 16, 3), num_classes=2)
    images = synthetic_images(6, seed=3)
    result = ds.normalized_sensitivity(
        model,
        images,
        ds.RandomDiffeomorphism(cutoff=3, displacement=1.0, seed=7),
        layers=["input"],
        batch_size=6,
    )
    deformed = ds.RandomDiffeomorphism(cutoff=3, displacement=1.0, seed=7)(images).numpy()

    def d_cos(a, b):
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return 1.0 - a @ b.T

    numerator = np.mean(np.diag(d_cos(images, deformed)))
    pairs = d_cos(images, images)[~np.eye(6, dtype=bool)]
    np.testing.assert_allclose(result["input"], numerator / np.median(pairs), rtol=1e-4)
