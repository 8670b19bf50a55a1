"""`StabilityCallback`: layer-wise stability measures during `model.fit`."""

import json
import math
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from deformstab_tf._validation import check_positive_int
from deformstab_tf.measures._common import (
    call_perturbation,
    derive_seed,
    resolve_seed,
)
from deformstab_tf.measures.consistency import (
    shift_consistency_from_predictor,
    top1_predictor,
)
from deformstab_tf.measures.features import ProbeFeatures, check_probe_images
from deformstab_tf.measures.relative_stability import relative_stability_from_probe
from deformstab_tf.measures.sensitivity import normalized_sensitivity_from_probe
from deformstab_tf.measures.smoothness import kernel_smoothness

MEASURES = ("sensitivity", "relative_stability", "shift_consistency", "smoothness")
_NEEDS_DEFORMATION = ("sensitivity", "relative_stability")
_PREFIX = "stability"


class StabilityCallback(keras.callbacks.Callback):
    """Measures layer-wise deformation stability before and during training.

    Measures the network at initialisation (`on_train_begin`, epoch 0) and after every
    `every_n_epochs`-th epoch (epoch `e + 1` after the epoch Keras numbers `e`), and:

    - adds scalars to the epoch `logs`, so `History`, `CSVLogger`, `EarlyStopping` and the Keras
      `TensorBoard` callback see them: `stability/sensitivity/<probe>`,
      `stability/relative_stability/{R,D,G}/<probe>`, `stability/smoothness/<layer>`, each with a
      `.../mean` over probe points (`stability/relative_stability/mean` is the mean of `R`), and
      `stability/shift_consistency`. On epochs without a measurement the same keys hold NaN
      ("not measured"), so every epoch has the same keys (as `CSVLogger` requires) and no stale
      value passes for a measurement. Place this callback before `CSVLogger` / `EarlyStopping`
      in the `callbacks` list.
    - keeps every measurement in `self.history`: a list of
      `{"epoch": int, "results": {measure: MeasureResult}}`.
    - with `log_dir`, writes to `log_dir/stability/`: TensorBoard scalars grouped per measure
      (tags `sensitivity/<probe>`, `relative_stability/R/<probe>`, ...), an image summary
      `profile` (one line per measure across probe points), and `measurements.json` with all
      measurements (rewritten atomically after each one). It sits beside
      `keras.callbacks.TensorBoard(log_dir)`, which uses `log_dir/train` and
      `log_dir/validation`.

    It never perturbs training: the model runs with `training=False` (no BatchNorm update, no
    dropout draw), optimizer and model seed generators are untouched, and the callback's own
    randomness comes from `seed`, never from the global NumPy / TensorFlow / Keras state. The
    probe set is deformed once (at the first measurement) and the same deformed images, noise and
    shifts are reused at every measurement, so changes across epochs reflect the network only.

    Args:
        probe_images: `(N, H, W, C)` images, `N >= 2`, matching the model input (the paper
            uses 128; Petrini et al. 500).
        deformation: a callable on a batch of images or a deformation layer (called with
            `training=True`), e.g. `RandomThinPlateSpline(3, 2.0, seed=0)`. Needed for
            `"sensitivity"` and `"relative_stability"`; may be `None` otherwise.
        layers: probe points (names, or a predicate on a layer); `None` for the default probe
            points (see `normalized_sensitivity`).
        measures: any of `"sensitivity"`, `"relative_stability"`, `"shift_consistency"`,
            `"smoothness"`.
        every_n_epochs: measure after every n-th epoch (`>= 1`).
        log_dir: directory for TensorBoard summaries and the JSON file; `None` writes nothing.
        batch_size: images per forward pass of a measurement.
        seed: seeds the callback's randomness (noise of relative stability, shifts, `seed=` of a
            deformation callable that accepts one). A deformation layer uses its own seed.
        verbose: 1 prints a one-line summary per measurement.
        max_shift: largest shift per axis for `"shift_consistency"` (wrap-around shifts).
        reduction: `"median"` or `"mean"`, for `"relative_stability"`.

    Example:

    >>> tps = RandomThinPlateSpline(grid_size=3, max_displacement=2.0, seed=0)
    >>> stability = StabilityCallback(x_train[:128], tps, log_dir="runs/vgg_max")
    >>> model.fit(x_train, y_train, epochs=10, callbacks=[stability])
    >>> stability.history[-1]["results"]["sensitivity"]
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
    ):
        super().__init__()
        if isinstance(measures, str):
            measures = (measures,)
        measures = tuple(dict.fromkeys(measures))
        unknown = [m for m in measures if m not in MEASURES]
        if unknown or not measures:
            raise ValueError(
                f"`measures` must be a non-empty selection of {MEASURES}. "
                f"Received: measures={measures!r}"
            )
        check_positive_int("every_n_epochs", every_n_epochs)
        check_positive_int("batch_size", batch_size)
        needs_deformation = [m for m in measures if m in _NEEDS_DEFORMATION]
        if deformation is None and needs_deformation:
            raise ValueError(f"`deformation` is required for the measures {needs_deformation}.")
        self.measures = measures
        self.probe_images = None
        if measures != ("smoothness",):
            self.probe_images = np.asarray(probe_images, dtype=np.float32)
            if self.probe_images.ndim < 2 or self.probe_images.shape[0] < 2:
                raise ValueError(
                    "`probe_images` must be a batch of at least 2 images. "
                    f"Received shape {self.probe_images.shape}."
                )
        self.deformation = deformation
        self.layers = layers
        self.every_n_epochs = every_n_epochs
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.batch_size = batch_size
        self.seed = seed
        self.verbose = verbose
        self.max_shift = max_shift
        self.reduction = reduction
        self.history = []
        # One seed for all measurements: the same noise and shifts at every epoch.
        self._measurement_seed = resolve_seed(seed)
        self._prepared_for = None
        self._log_keys = None
        self._writer = None

    # -- Keras hooks ---------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._prepare()
        if not self.history:  # the network at initialisation
            self._measure(epoch=0)

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        if (epoch + 1) % self.every_n_epochs == 0:
            logs.update(self._log_values(self._measure(epoch=epoch + 1)))
        elif self._log_keys:
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
        self._probe = self._predict_top1 = self._images = self._deformed = None
        if self.probe_images is not None:
            try:
                self._images = check_probe_images(model, self.probe_images)
            except ValueError as error:
                raise ValueError(str(error).replace("`images`", "`probe_images`")) from None
        if any(m in _NEEDS_DEFORMATION for m in self.measures):
            self._probe = ProbeFeatures.for_model(model, self.layers)
            self._deformed = tf.concat(
                [
                    tf.cast(
                        call_perturbation(
                            self.deformation,
                            self._images[start : start + self.batch_size],
                            seed=derive_seed(self._measurement_seed, index),
                        ),
                        self._images.dtype,
                    )
                    for index, start in enumerate(range(0, self._images.shape[0], self.batch_size))
                ],
                axis=0,
            )
            if self._deformed.shape != self._images.shape:
                raise ValueError(
                    f"`deformation` returned shape {tuple(self._deformed.shape)} for probe images "
                    f"of shape {tuple(self._images.shape)}."
                )
        if "shift_consistency" in self.measures:
            self._predict_top1 = top1_predictor(model)
        self._prepared_for = model

    def _measure(self, epoch):
        seed = self._measurement_seed
        results = {}
        for measure in self.measures:
            if measure == "sensitivity":
                results[measure] = normalized_sensitivity_from_probe(
                    self._probe,
                    self._images,
                    None,
                    self.batch_size,
                    seed=seed,
                    deformed=self._deformed,
                )
            elif measure == "relative_stability":
                results[measure] = relative_stability_from_probe(
                    self._probe,
                    self._images,
                    None,
                    self.batch_size,
                    self.reduction,
                    seed=seed,
                    deformed=self._deformed,
                )
            elif measure == "shift_consistency":
                results[measure] = shift_consistency_from_predictor(
                    self._predict_top1, self._images, self.max_shift, self.batch_size, seed=seed
                )
            else:
                results[measure] = kernel_smoothness(self.model)
        self.history.append({"epoch": epoch, "results": results})
        values = self._log_values(results)
        if self._log_keys is None:
            self._log_keys = list(values)
        if self.log_dir is not None:
            self._write_summaries(epoch, values, results)
            self._write_json()
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
            if measure == "shift_consistency":
                values[key] = result["output"]
                continue
            components = ["R", "D", "G"] if measure == "relative_stability" else [None]
            for component in components:
                per_probe = result if component in (None, "R") else result.details[component]
                prefix = key if component is None else f"{key}/{component}"
                values.update({f"{prefix}/{name}": v for name, v in per_probe.items()})
            values[f"{key}/mean"] = result.mean()
        return values

    # -- files ----------------------------------------------------------------------------------

    def _write_summaries(self, epoch, values, results):
        from deformstab_tf.plots import profile_image

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, _PREFIX))
        profiles = [r for m, r in results.items() if m != "shift_consistency" and len(r)]
        with self._writer.as_default(step=epoch):
            for key, value in values.items():
                tf.summary.scalar(key[len(_PREFIX) + 1 :], value)
            if profiles:
                image = profile_image(profiles, title=f"epoch {epoch}")
                tf.summary.image("profile", image[None], max_outputs=1)
        self._writer.flush()

    def _write_json(self):
        directory = os.path.join(self.log_dir, _PREFIX)
        os.makedirs(directory, exist_ok=True)
        document = {
            "measures": list(self.measures),
            "num_probe_images": None if self._images is None else int(self._images.shape[0]),
            "seed": self.seed,
            "history": [
                {
                    "epoch": record["epoch"],
                    "results": {m: r.to_dict() for m, r in record["results"].items()},
                }
                for record in self.history
            ],
        }
        # Atomic: readers never see a half-written file.
        handle, temporary = tempfile.mkstemp(dir=directory, suffix=".json.tmp")
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(document, file, indent=1, allow_nan=True)
            os.replace(temporary, os.path.join(directory, "measurements.json"))
        except BaseException:
            os.unlink(temporary)
            raise
