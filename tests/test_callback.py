"""StabilityCallback: logs, TensorBoard files, JSON, no perturbation of training, errors."""

import csv
import glob
import json
import math
import os
import random
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deformstab_tf.callbacks import StabilityCallback
from deformstab_tf.measures import MeasureResult, kernel_smoothness, normalized_sensitivity
from deformstab_tf.plots import plot_profile, profile_image

SHAPE = (8, 8, 3)
ALL_MEASURES = ("sensitivity", "relative_stability", "shift_consistency", "smoothness")


def roll(batch):
    return tf.roll(batch, 1, axis=2)


class NoiseDeformation(keras.layers.Layer):
    """A random 'deformation' layer with its own seed generator, like the package's layers."""

    def __init__(self, seed, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        if not training:
            return images
        return images + 0.1 * keras.random.normal(keras.ops.shape(images), seed=self.seed_generator)


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE, name="input")
    x = keras.layers.Conv2D(4, 3, padding="same", name="block1_conv1")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(name="block1_down")(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(48, *SHAPE)).astype("float32"), rng.integers(0, 3, 48)


def test_logs_history_csv_json_and_tensorboard(tmp_path, data):
    x, y = data
    log_dir = str(tmp_path / "logs")
    model = small_model()
    stability = StabilityCallback(
        x[:6],
        roll,
        measures=ALL_MEASURES,
        every_n_epochs=2,
        log_dir=log_dir,
        batch_size=4,
        seed=0,
        max_shift=2,
    )
    csv_path = str(tmp_path / "log.csv")
    early_stopping = keras.callbacks.EarlyStopping(
        "stability/sensitivity/mean", mode="min", patience=9
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x,
            y,
            epochs=4,
            batch_size=16,
            verbose=0,
            callbacks=[
                stability,
                keras.callbacks.CSVLogger(csv_path),
                keras.callbacks.TensorBoard(log_dir),
                early_stopping,
            ],
        )
    assert not [w for w in caught if "Early stopping conditioned" in str(w.message)]
    probes = ["input", "block1_conv1", "block1_down"]
    expected_keys = (
        [f"stability/sensitivity/{p}" for p in probes]
        + [f"stability/relative_stability/{c}/{p}" for c in "RDG" for p in probes]
        + ["stability/shift_consistency", "stability/smoothness/block1_conv1"]
        + [f"stability/{m}/mean" for m in ("sensitivity", "relative_stability", "smoothness")]
    )
    for key in expected_keys:
        values = history.history[key]
        assert len(values) == 4
        assert [math.isnan(v) for v in values] == [True, False, True, False], key  # measured 2, 4

    # Measurements on the callback: init (0) and after epochs 2 and 4.
    assert [record["epoch"] for record in stability.history] == [0, 2, 4]
    last = stability.history[-1]["results"]
    assert (
        history.history["stability/relative_stability/D/block1_down"][-1]
        == (last["relative_stability"].details["D"]["block1_down"])
    )

    with open(csv_path) as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 4
    assert float(rows[3]["stability/sensitivity/mean"]) == pytest.approx(last["sensitivity"].mean())
    assert rows[0]["stability/sensitivity/mean"] == "nan"

    with open(os.path.join(log_dir, "stability", "measurements.json")) as file:
        document = json.load(file)
    assert [record["epoch"] for record in document["history"]] == [0, 2, 4]
    assert document["history"][1]["results"]["smoothness"]["values"] == dict(
        stability.history[1]["results"]["smoothness"]
    )
    assert not glob.glob(os.path.join(log_dir, "stability", "*.tmp"))

    events = EventAccumulator(os.path.join(log_dir, "stability"), size_guidance={"tensors": 0})
    events.Reload()
    tags = events.Tags()["tensors"]
    for tag in [
        "sensitivity/block1_down",
        "relative_stability/R/input",
        "shift_consistency",
        "smoothness/block1_conv1",
        "sensitivity/mean",
        "profile",
    ]:
        assert tag in tags, tag
    # Keras's epoch axis: the measurements after epochs 2 and 4 sit beside their epoch_loss
    # (steps 1 and 3); the initial one at step -1.
    assert [record["step"] for record in document["history"]] == [-1, 1, 3]
    steps = [event.step for event in events.Tensors("sensitivity/block1_down")]
    assert steps == [-1, 1, 3]
    logged = tf.make_ndarray(events.Tensors("sensitivity/block1_down")[-1].tensor_proto)
    assert float(logged) == pytest.approx(last["sensitivity"]["block1_down"], rel=1e-6)
    image = events.Tensors("profile")[0].tensor_proto
    assert len(tf.make_ndarray(image)) == 3  # width, height, PNG bytes
    # The Keras TensorBoard callback (listed after it) was run before it, so it wrote its own
    # scalars on the same axis and none of the stability keys (no duplicates, no NaN points).
    train = EventAccumulator(os.path.join(log_dir, "train"), size_guidance={"tensors": 0})
    train.Reload()
    assert [event.step for event in train.Tensors("epoch_loss")] == [0, 1, 2, 3]
    assert not [tag for tag in train.Tags()["tensors"] if "stability" in tag]


def test_initial_measurement_equals_the_measure_function(data):
    x, y = data
    model = small_model()
    expected_sensitivity = normalized_sensitivity(model, x[:6], roll, batch_size=4)
    expected_smoothness = kernel_smoothness(model)
    stability = StabilityCallback(x[:6], roll, batch_size=4)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[stability])
    initial = stability.history[0]["results"]
    np.testing.assert_allclose(
        list(initial["sensitivity"].values()), list(expected_sensitivity.values()), rtol=1e-6
    )
    assert initial["smoothness"] == expected_smoothness


@pytest.mark.backends  # also with KERAS_BACKEND=jax
def test_callback_does_not_perturb_training(data):
    x, y = data

    def train(with_callback):
        model = small_model(seed=1)
        callbacks = []
        if with_callback:
            callbacks = [
                StabilityCallback(
                    x[:5], NoiseDeformation(seed=3), measures=ALL_MEASURES, batch_size=2, seed=9
                )
            ]
        history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=callbacks)
        return model, history.history["loss"]

    plain, plain_loss = train(False)
    measured, measured_loss = train(True)
    assert plain_loss == measured_loss
    for a, b in zip(plain.weights, measured.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    for a, b in zip(plain.optimizer.variables, measured.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("seed", [None, 4])
def test_callback_leaves_global_random_state_alone(data, seed):
    x, _ = data
    model = small_model()

    def draws():
        return (
            np.random.random(),  # noqa: NPY002 (the legacy global state is the point)
            random.random(),
            float(tf.random.uniform([])),
            float(keras.random.uniform([])),
        )

    keras.utils.set_random_seed(5)
    expected = draws()
    keras.utils.set_random_seed(5)
    stability = StabilityCallback(x[:4], roll, measures=ALL_MEASURES, seed=seed)
    stability.set_model(model)
    stability.on_train_begin()
    assert draws() == expected


def test_mirrored_strategy(tmp_path, data):
    x, y = data
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = small_model()
    stability = StabilityCallback(
        x[:4], roll, measures=ALL_MEASURES, log_dir=str(tmp_path), batch_size=4, seed=0
    )
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[stability])
    assert np.isfinite(history.history["stability/relative_stability/mean"][0])
    assert os.path.exists(os.path.join(tmp_path, "stability", "measurements.json"))


def test_profile_plots(data):
    results = [
        normalized_sensitivity(small_model(), data[0][:3], roll),
        kernel_smoothness(small_model()),
    ]
    ax = plot_profile(results, details=True)
    labels = [tick.get_text() for tick in ax.get_xticklabels()]
    assert labels == ["input", "block1_conv1", "block1_down"]
    assert len(ax.get_lines()) == 4  # sensitivity, its two components, smoothness
    image = profile_image(results)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 4
    # A layer inside a probe unit (the conv of unit block1_conv1) is drawn at the unit.
    ax = plot_profile(
        {
            "sensitivity": {"input": 0.5, "block1_conv1": 0.7},
            "smoothness": {"block1_conv1_conv": 1.8},
        }
    )
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["input", "block1_conv1"]


def _records(log_dir):
    with open(os.path.join(log_dir, "stability", "measurements.json")) as file:
        return [(r["epoch"], r["step"]) for r in json.load(file)["history"]]


def _scalar_steps(log_dir, tag):
    events = EventAccumulator(os.path.join(log_dir, "stability"), size_guidance={"tensors": 0})
    events.Reload()
    return [event.step for event in events.Tensors(tag)]


def test_resumes_its_series_without_lost_or_repeated_epochs(tmp_path, data):
    x, y = data
    log_dir = str(tmp_path / "run")

    def fit(initial_epoch, epochs):
        # A new process: a new model and callback, the run directory as it was left.
        model = small_model()
        stability = StabilityCallback(x[:6], roll, log_dir=log_dir, batch_size=4, seed=0)
        model.fit(
            x, y, epochs=epochs, initial_epoch=initial_epoch, verbose=0, callbacks=[stability]
        )
        return stability

    fit(0, 3)
    assert _records(log_dir) == [(0, -1), (1, 0), (2, 1), (3, 2)]
    # Killed after epoch 3 was measured but before its backup: the rerun restarts at epoch
    # index 2 and neither measures initialisation again nor keeps the measurement it redoes.
    first_initial = json.load(open(os.path.join(log_dir, "stability", "measurements.json")))
    resumed = fit(2, 4)
    assert [record["epoch"] for record in resumed.history] == [0, 1, 2, 3, 4]
    assert _records(log_dir) == [(0, -1), (1, 0), (2, 1), (3, 2), (4, 3)]
    assert _scalar_steps(log_dir, "sensitivity/mean") == [-1, 0, 1, 2, 3]
    assert _scalar_steps(log_dir, "profile") == [-1, 0, 1, 2, 3]
    assert resumed.history[0]["results"]["sensitivity"] == MeasureResult.from_dict(
        first_initial["history"][0]["results"]["sensitivity"]
    )


def test_summaries_cut_off_by_a_kill_are_purged(tmp_path, data):
    x, y = data
    log_dir = str(tmp_path / "run")
    stability = StabilityCallback(x[:6], roll, log_dir=log_dir, batch_size=4, seed=0)
    small_model().fit(x, y, epochs=1, verbose=0, callbacks=[stability])
    # A kill between the summaries and the JSON file of a measurement at step 1.
    with tf.summary.create_file_writer(os.path.join(log_dir, "stability")).as_default(step=1):
        tf.summary.scalar("sensitivity/mean", 123.0)
    resumed = StabilityCallback(x[:6], roll, log_dir=log_dir, batch_size=4, seed=0)
    small_model().fit(x, y, epochs=2, initial_epoch=1, verbose=0, callbacks=[resumed])
    assert _scalar_steps(log_dir, "sensitivity/mean") == [-1, 0, 1]
    events = EventAccumulator(os.path.join(log_dir, "stability"), size_guidance={"tensors": 0})
    events.Reload()
    last = tf.make_ndarray(events.Tensors("sensitivity/mean")[-1].tensor_proto)
    assert float(last) == pytest.approx(resumed.history[-1]["results"]["sensitivity"].mean())


def test_a_log_dir_of_another_series_is_an_error(tmp_path, data):
    x, y = data
    log_dir = str(tmp_path / "run")
    small_model().fit(
        x, y, epochs=1, verbose=0, callbacks=[StabilityCallback(x[:6], roll, log_dir=log_dir)]
    )
    other = StabilityCallback(x[6:12], roll, log_dir=log_dir)
    with pytest.raises(ValueError, match=r"`log_dir`=.*another series.*probe_images_sha1"):
        small_model().fit(x, y, epochs=1, verbose=0, callbacks=[other])
    assert _records(log_dir) == [(0, -1), (1, 0)]


# -- errors -------------------------------------------------------------------------------------


def test_log_dir_that_is_a_file_and_non_finite_probe_images(tmp_path, data):
    x, _ = data
    existing = tmp_path / "file.txt"
    existing.write_text("not a directory")
    with pytest.raises(ValueError, match=r"`log_dir` must be a directory.*file.txt"):
        StabilityCallback(x[:4], roll, log_dir=str(existing))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "stability").write_text("")
    with pytest.raises(ValueError, match=r"`log_dir` must be a directory"):
        StabilityCallback(x[:4], roll, log_dir=str(tmp_path / "run"))
    bad = x[:4].copy()
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"`probe_images` must be finite.* 1 entries"):
        StabilityCallback(bad, roll)


def test_unknown_measure_and_bad_schedule(data):
    x, _ = data
    with pytest.raises(ValueError, match=r"`measures`.*'curvature'"):
        StabilityCallback(x[:4], roll, measures=("sensitivity", "curvature"))
    with pytest.raises(ValueError, match="every_n_epochs=0"):
        StabilityCallback(x[:4], roll, every_n_epochs=0)
    with pytest.raises(ValueError, match=r"`probe_images`.*at least 2.*\(1, 8, 8, 3\)"):
        StabilityCallback(x[:1], roll)
    with pytest.raises(ValueError, match="`deformation` is required"):
        StabilityCallback(x[:4], None)


def test_errors_at_fit_time_name_the_argument(data):
    x, y = data
    model = small_model()
    with pytest.raises(ValueError, match=r"`probe_images`.*\(4, 6, 6, 3\).*\(None, 8, 8, 3\)"):
        model.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[StabilityCallback(np.random.default_rng(0).random((4, 6, 6, 3)), roll)],
        )
    with pytest.raises(ValueError, match=r"`layers`.*'block9_conv1'.*Available"):
        model.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[StabilityCallback(x[:4], roll, layers=["input", "block9_conv1"])],
        )


def test_smoothness_alone_needs_no_probe_images(data):
    x, y = data
    stability = StabilityCallback(None, None, measures="smoothness")
    history = small_model().fit(x, y, epochs=1, verbose=0, callbacks=[stability])
    assert list(stability.history[0]["results"]) == ["smoothness"]
    assert "stability/smoothness/block1_conv1" in history.history


def test_smoothness_of_a_model_without_spatial_kernels_is_left_out_not_nan(data):
    x, y = data
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE)
    hidden = keras.layers.Conv2D(4, 1, name="pointwise")(inputs)  # 1x1: no spatial neighbours
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(hidden))
    model = keras.Model(inputs, outputs, name="no_spatial_kernels")
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    stability = StabilityCallback(
        x[:4], NoiseDeformation(0), measures=("sensitivity", "smoothness")
    )
    with pytest.warns(UserWarning, match="'smoothness' has no probe point in model"):
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[stability])
    assert not any(key.startswith("stability/smoothness") for key in history.history)
    assert all(math.isfinite(v) for v in history.history["stability/sensitivity/mean"])
    assert len(stability.history[-1]["results"]["smoothness"]) == 0
