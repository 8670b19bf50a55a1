"""`StabilityCallback`: layer-wise stability measures during `model.fit`."""

import hashlib
import math
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from deformstab_tf import _keras_internals, runrecord
from deformstab_tf._validation import check_choice, check_positive_int
from deformstab_tf.deformations._backend import to_numpy
from deformstab_tf.deformations.warp import FILL_MODES
from deformstab_tf.measures import plan
from deformstab_tf.measures._common import resolve_seed
from deformstab_tf.measures.features import DEFAULT_CACHE, check_distinct_images
from deformstab_tf.summaries import purge_events, write_custom_scalars_layout

MEASURES = plan.NAMES  # every measure the callback takes (the registry's, `measures.plan`)
_PREFIX = "stability"  # of the logs keys
# The identity of a measurement series: a log_dir holding another one is never appended to.
_IDENTITY = ("measures", "num_probe_images", "probe_images_sha1", "seed", "layers")


class StabilityCallback(keras.callbacks.Callback):
    """Measures layer-wise deformation stability before and during training.

    Measures the network at initialisation (`on_train_begin`) and after every `every_n_epochs`-th
    epoch, and:

    - adds scalars to the epoch `logs`, so `History`, `CSVLogger` and `EarlyStopping` see them:
      `stability/sensitivity/<probe>`, `stability/relative_stability/{R,D,G}/<probe>`,
      `stability/smoothness/<layer>`, `stability/translation_map/<probe>` (the mean of each
      probe point's map), each with a `.../mean` over probe points
      (`stability/relative_stability/mean` is the mean of `R`), and
      `stability/shift_consistency`. On epochs without a measurement the same keys hold NaN
      ("not measured"), so every epoch has the same keys (as `CSVLogger` requires) and no stale
      value passes for a measurement. A per-layer measure with no probe point in the model
      (`smoothness` of a model without a kernel larger than 1x1) is left out of `logs`, with a
      warning. Place this callback before `CSVLogger` / `EarlyStopping` in the `callbacks` list.
    - keeps every measurement in `self.history`: a list of `{"epoch": int, "step": int,
      "results": {measure: MeasureResult}}`, where `epoch` counts the training epochs completed
      (0 = at initialisation) and `step` is the TensorBoard step (below).
    - with `log_dir`, writes to `log_dir/stability/`: one TensorBoard run holding each
      measurement once, `measurements.json` with all measurements (rewritten atomically after
      each one) — see "TensorBoard" and "Resuming".

    TensorBoard: scalars are tagged `sensitivity/<probe>`, `relative_stability/R/<probe>`, ...,
    `<measure>/mean`, so TensorBoard groups them by measure; a custom-scalars layout draws one
    chart per measure with a line per probe point; the image `profile` shows the per-layer
    profile of each measure, the initial one beside the current one, and the image
    `translation_map` the maps of each probe point. Steps are Keras's epoch
    indices, the axis of Keras's own `epoch_loss`: the measurement after the epoch Keras numbers
    `e` is at step `e` (beside that epoch's loss and accuracy), and **the initial measurement is
    at step -1**. Only measurements are written: nothing on skipped epochs, and non-finite values
    (a diverged network) stay out of the charts (they are NaN in `logs` and the JSON file). With
    a `log_dir`, a `keras.callbacks.TensorBoard` in the same `fit` is run before this callback
    (this callback moves it there if needed), so it never writes the `stability/...` logs keys a
    second time, or their NaN placeholders.

    Resuming: when `log_dir` already holds `measurements.json` of the same series (same
    measures, probe images, seed and probe points), the callback continues it instead of
    starting over — the initial measurement is not taken again, and measurements (and their
    TensorBoard summaries) after the epoch the fit restarts from are dropped, so a run killed and
    restarted with `keras.callbacks.BackupAndRestore` has each epoch exactly once. A `log_dir`
    holding another series is an error.

    It never perturbs training: the model runs with `training=False` (no BatchNorm update, no
    dropout draw), optimizer and model seed generators are untouched, and the callback's own
    randomness comes from `seed`, never from the global NumPy / TensorFlow / Keras state. The
    probe set is deformed once (at the first measurement) and the same deformed images, noise and
    shifts are reused at every measurement, so changes across epochs reflect the network only.

    Args:
        probe_images: `(N, H, W, C)` finite images, `N >= 2`, matching the model input (the paper
            uses 128; Petrini et al. 500).
        deformation: a callable on a batch of images or a deformation layer (called with
            `training=True`), e.g. `RandomThinPlateSpline(3, 2.0, seed=0)`. Needed for
            `"sensitivity"` and `"relative_stability"`; may be `None` otherwise.
        layers: probe points (names, or a predicate on a layer); `None` for the default probe
            points (see `normalized_sensitivity`).
        measures: any of `measures.plan.MEASURES`: `"sensitivity"`, `"relative_stability"`,
            `"shift_consistency"`, `"translation_map"` (off by default: 81 forward passes per
            probe image with `max_shift=4`), `"smoothness"`.
        every_n_epochs: measure after every n-th epoch (`>= 1`).
        log_dir: directory for TensorBoard summaries and the JSON file (the same directory as
            `keras.callbacks.TensorBoard`'s, which uses `log_dir/train` and `log_dir/validation`);
            `None` writes nothing.
        batch_size: images per forward pass of a measurement.
        seed: seeds the callback's randomness (noise of relative stability, shifts, `seed=` of a
            deformation callable that accepts one). A deformation layer uses its own seed.
        verbose: 1 prints a one-line summary per measurement.
        max_shift: largest shift per axis for `"shift_consistency"` and `"translation_map"`.
        fill_mode: what their shifts bring in at the border: `"wrap"` (circular, the
            default), `"constant"`, `"nearest"` or `"reflect"`.
        reduction: `"median"` or `"mean"`, for `"relative_stability"`.
        feature_cache_bytes: memory for keeping the clean features of the probe set between
            batches (default 1 GiB), so a measurement costs one clean pass per batch; see
            `normalized_sensitivity`.

    Example:

    >>> model = deformstab_tf.build_vgg([(8,), (16,)], input_shape=(16, 16, 3), num_classes=3)
    >>> x_train = np.random.default_rng(0).random((64, 16, 16, 3), dtype="float32")
    >>> y_train = np.arange(64) % 3
    >>> tps = deformstab_tf.RandomThinPlateSpline(grid_size=3, max_displacement=2.0, seed=0)
    >>> stability = StabilityCallback(x_train[:16], tps, log_dir="runs/vgg_max")  # paper: 128
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> history = model.fit(x_train, y_train, epochs=2, verbose=0,
    ...     callbacks=[stability, keras.callbacks.TensorBoard("runs/vgg_max")])
    >>> [record["epoch"] for record in stability.history]   # initialisation, then each epoch
    [0, 1, 2]
    >>> list(stability.history[-1]["results"])
    ['sensitivity', 'smoothness']
    >>> sorted(key for key in history.history if key.endswith("/mean"))
    ['stability/sensitivity/mean', 'stability/smoothness/mean']
    """

    def __init__(
        self,
        probe_images,
        deformation,
        layers=None,
        measures=("sensitivity", "smoothness"),
        every_n_epochs=1,
        log_dir=None,
        batch_size=64,
        seed=None,
        verbose=0,
        max_shift=4,
        reduction="median",
        feature_cache_bytes=DEFAULT_CACHE,
        fill_mode="wrap",
    ):
        super().__init__()
        if isinstance(measures, str):
            measures = (measures,)
        measures = tuple(dict.fromkeys(measures))
        unknown = [m for m in measures if m not in plan.MEASURES]
        if unknown or not measures:
            raise ValueError(
                f"`measures` must be a non-empty selection of {tuple(plan.MEASURES)}. "
                f"Received: measures={measures!r}"
            )
        check_positive_int("every_n_epochs", every_n_epochs)
        check_positive_int("batch_size", batch_size)
        needs_deformation = plan.needs_deformation(measures)
        if deformation is None and needs_deformation:
            raise ValueError(f"`deformation` is required for the measures {needs_deformation}.")
        self.measures = measures
        self.probe_images = None
        if plan.needs_images(measures):
            self.probe_images = to_numpy(probe_images, dtype=np.float32)
            if self.probe_images.ndim < 2 or self.probe_images.shape[0] < 2:
                raise ValueError(
                    "`probe_images` must be a batch of at least 2 images. "
                    f"Received shape {self.probe_images.shape}."
                )
            if not np.isfinite(self.probe_images).all():
                raise ValueError(
                    "`probe_images` must be finite; it holds NaN or inf in "
                    f"{int((~np.isfinite(self.probe_images)).sum())} entries."
                )
            try:
                check_distinct_images(self.probe_images)
            except ValueError as error:
                raise ValueError(str(error).replace("`images`", "`probe_images`")) from None
        self.deformation = deformation
        self.layers = layers
        self.every_n_epochs = every_n_epochs
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        if self.log_dir is not None:
            _check_log_dir(self.log_dir)
        self.batch_size = batch_size
        self.seed = seed
        self.verbose = verbose
        self.max_shift = max_shift
        check_choice("fill_mode", fill_mode, FILL_MODES)
        self.fill_mode = fill_mode
        self.reduction = reduction
        self.feature_cache_bytes = feature_cache_bytes
        self.history = []
        # One seed for all measurements: the same noise and shifts at every epoch.
        self._measurement_seed = resolve_seed(seed)
        self._prepared_for = None
        self._log_keys = None
        self._writer = None
        self._fit_started = False
        self._resumed = False

    # -- Keras hooks ---------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        if self.log_dir is not None:
            _run_tensorboard_callbacks_before(self)
        self._prepare()
        self._resumed = False
        if self.log_dir is not None and not self.history:
            self._resume()
        self._fit_started = False
        if not self.history:  # the network at initialisation
            self._measure(epoch=0)

    def on_epoch_begin(self, epoch, logs=None):
        if not self._fit_started:
            self._fit_started = True
            if self._resumed:
                # A resumed fit that restarts at `epoch` (BackupAndRestore) redoes the epochs
                # from there: the measurements after them are dropped, not duplicated.
                self._drop_after(completed_epochs=epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        if (epoch + 1) % self.every_n_epochs == 0:
            logs.update(self._log_values(self._measure(epoch=epoch + 1)))
        else:
            if self._log_keys is None and self.history:
                self._log_keys = list(self._log_values(self.history[-1]["results"]))
            if self._log_keys:
                logs.update(dict.fromkeys(self._log_keys, math.nan))

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- measuring ------------------------------------------------------------------------------

    def _prepare(self):
        """Once per model: checks the probe images, builds the extractor, deforms the probe set."""
        model = self.model
        if self._prepared_for is model:
            return
        self._probe = plan.prepare(
            model,
            self.measures,
            self.probe_images,
            self.deformation,
            self.layers,
            batch_size=self.batch_size,
            seed=self._measurement_seed,
            deform_once=True,
            reduction=self.reduction,
            max_shift=self.max_shift,
            fill_mode=self.fill_mode,
            feature_cache_bytes=self.feature_cache_bytes,
            images_argument="probe_images",
        )
        self._prepared_for = model

    def _measure(self, epoch):
        results = plan.run(self._probe)
        record = {"epoch": epoch, "step": epoch - 1, "results": results}
        self.history.append(record)
        values = self._log_values(results)
        if self._log_keys is None:
            self._log_keys = list(values)
            for measure, result in results.items():
                if plan.MEASURES[measure].per_layer and not len(result):
                    warnings.warn(
                        f"`measures`: {measure!r} has no probe point in model "
                        f"{self.model.name!r}; it is left out of the logs.",
                        stacklevel=2,
                    )
        if self.log_dir is not None:
            self._write_summaries(record, values)
            self._write_json()  # last: the JSON file is the record of what is complete
        if self.verbose:
            summary = ", ".join(f"{m} {r.mean():.4g}" for m, r in results.items())
            print(f"StabilityCallback epoch {epoch}: mean {summary}")
        return results

    @staticmethod
    def _log_values(results):
        """`{logs key: float}` for one measurement (the keys documented in the class)."""
        values = {}
        for measure, result in results.items():
            key = f"{_PREFIX}/{measure}"
            spec = plan.MEASURES[measure]
            if not spec.per_layer:
                values[key] = plan.scalar(result)
                continue
            parts = [(key, result)]
            if spec.headline is not None:
                parts = [(f"{key}/{spec.headline}", result)]
            parts += [(f"{key}/{c}", result.details[c]) for c in spec.components]
            for prefix, per_probe in parts:
                values.update({f"{prefix}/{name}": v for name, v in per_probe.items()})
            if len(result):  # no probe point in this model (smoothness without kernels): no mean
                values[f"{key}/mean"] = result.mean()
        return values

    # -- resuming -------------------------------------------------------------------------------

    def _identity(self):
        features, images = self._probe.features, self._probe.images
        probe_names = None if features is None else list(features.names)
        digest = None
        if images is not None:
            digest = hashlib.sha1(np.ascontiguousarray(to_numpy(images))).hexdigest()
        return {
            "measures": list(self.measures),
            "num_probe_images": None if images is None else int(images.shape[0]),
            "probe_images_sha1": digest,
            "seed": self.seed,
            "layers": probe_names,
        }

    def _resume(self):
        """Continues the series in `log_dir` (see the class docstring), or starts afresh."""
        document, history = runrecord.read_stability(self.log_dir)
        if document is not None:
            identity = self._identity()
            stored = {key: document.get(key) for key in _IDENTITY}
            if stored != identity:
                differences = {
                    key: (stored[key], identity[key])
                    for key in _IDENTITY
                    if stored[key] != identity[key]
                }
                raise ValueError(
                    f"`log_dir`={self.log_dir!r} holds stability measurements of another "
                    f"series; (stored, this callback): {differences}. Use another log_dir, or "
                    "delete the old one."
                )
            self.history = history
            self._resumed = True
        # Summaries written after the last complete measurement (cut off by a kill) go.
        last_step = self.history[-1]["step"] if self.history else -2
        purge_events(runrecord.stability_directory(self.log_dir), from_step=last_step + 1)

    def _drop_after(self, completed_epochs):
        kept = [record for record in self.history if record["epoch"] <= completed_epochs]
        if len(kept) == len(self.history):
            return
        self.history = kept
        if self.log_dir is not None:
            purge_events(runrecord.stability_directory(self.log_dir), from_step=completed_epochs)
            self._write_json()

    # -- files ----------------------------------------------------------------------------------

    def _write_summaries(self, record, values):
        from deformstab_tf.plots import figure_to_array, profile_image

        if self._writer is None:
            directory = runrecord.stability_directory(self.log_dir)
            self._writer = tf.summary.create_file_writer(directory)
            write_custom_scalars_layout(self._writer, _layout(values))
        results = record["results"]
        profiles = {m: r for m, r in results.items() if plan.per_layer(m) and len(r)}
        initial = {
            m: r
            for m, r in self.history[0]["results"].items()
            if m in profiles and record is not self.history[0]
        }
        with self._writer.as_default(step=record["step"]):
            for key, value in values.items():
                if math.isfinite(value):
                    tf.summary.scalar(key[len(_PREFIX) + 1 :], value)
            if profiles:
                title = "initialisation" if record["epoch"] == 0 else f"epoch {record['epoch']}"
                image = profile_image(profiles, initial=initial or None, title=title)
                tf.summary.image("profile", image[None], max_outputs=1)
            for measure, result in results.items():
                figure = plan.MEASURES[measure].figure
                if figure is not None and len(result):
                    title = "initialisation" if record["epoch"] == 0 else f"epoch {record['epoch']}"
                    image = figure_to_array(figure(result, title))
                    tf.summary.image(measure, image[None], max_outputs=1)
        self._writer.flush()

    def _write_json(self):
        # Atomic: readers never see a half-written file.
        runrecord.write_stability(self.log_dir, self._identity(), self.every_n_epochs, self.history)


def _check_log_dir(log_dir):
    """A usable `log_dir` (missing is fine: it is created), checked before training starts."""
    for path in (log_dir, runrecord.stability_directory(log_dir)):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(
                f"`log_dir` must be a directory; {path!r} is an existing file. "
                f"Received: log_dir={log_dir!r}"
            )
    existing = log_dir
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing and not os.access(existing, os.W_OK):
        raise ValueError(f"`log_dir` is not writable: {existing!r}. Received: log_dir={log_dir!r}")


def _layout(values):
    """Custom-scalars charts: one per measure (and component), a line per probe point."""
    charts = {}
    for key in values:
        parts = key.split("/")[1:]  # drop the "stability" prefix
        if len(parts) == 1:
            charts[parts[0]] = f"^{parts[0]}$"
            continue
        group = "/".join(parts[:-1])
        charts[group] = f"^{group}/[^/]+$"
    return {"stability": charts}


def _run_tensorboard_callbacks_before(callback):
    """Moves Keras `TensorBoard` callbacks of the running `fit` before `callback`.

    Keras gives a callback no handle on its siblings (no public mechanism orders them), so the
    `CallbackList` that calls `on_train_begin` is found on the call stack
    (`_keras_internals.calling_callback_list`). Rebinding its list (not mutating it) is safe while
    it iterates. Anything else calling the hook is left alone.
    """
    caller = _keras_internals.calling_callback_list(callback)
    if caller is None:
        return
    callbacks = list(caller.callbacks)
    late = [
        c
        for c in callbacks[callbacks.index(callback) + 1 :]
        if isinstance(c, keras.callbacks.TensorBoard)
    ]
    if late:
        rest = [c for c in callbacks if all(c is not t for t in late)]
        at = rest.index(callback)
        caller.callbacks = rest[:at] + late + rest[at:]
