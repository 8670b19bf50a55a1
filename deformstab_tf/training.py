"""Training runs: one resumable run directory per experiment (what `trainers/train.py` runs).

`train_run(output_dir, **config)` trains a model of `deformstab_tf.models` on a source of
`deformstab_tf.data` with the `StabilityCallback`, and leaves in `output_dir`:

- `config.json`: the configuration (every argument of `train_run`) and the package version;
- TensorBoard runs `train/` and `validation/` (Keras's losses, accuracies, learning rate, a few
  example training images as the model sees them), `stability/` (the measures; see
  `StabilityCallback`) and, at the top, the hyper-parameters for the HParams dashboard with the
  final validation accuracy and mean stability measures as its metrics;
- `metrics.csv`: one row per epoch (`epoch`, losses, accuracies, learning rate, stability scalars);
- `stability/measurements.json`; `epoch_seconds.json` (each finished epoch's wall seconds, kept
  across sessions); `model.keras` and `summary.json` (test accuracy and loss, epochs, wall and
  CPU seconds) once training is complete.

Resuming: rerunning with the same configuration continues from the last completed epoch
(`keras.callbacks.BackupAndRestore` under `output_dir/backup`), also after `kill -9` in the middle
of an epoch: epochs redone are dropped from `metrics.csv`, from the TensorBoard runs and from the
stability records first, so each epoch appears once, and the training data skip the batches of
the epochs done, so the resumed run's numbers are an uninterrupted run's. A finished run is left
as it is. A different configuration against an existing run directory is a `ValueError`, before
anything is written.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

import keras
import tensorflow as tf

from deformstab_tf import _keras_internals, runrecord
from deformstab_tf import data as data_sources
from deformstab_tf._validation import (
    check_bool,
    check_choice,
    check_names,
    check_non_negative,
    check_output_directory,
    check_positive_int,
    check_range,
    check_seed,
)
from deformstab_tf.callbacks import StabilityCallback
from deformstab_tf.deformations.layers import DEFORMATION_LAYERS, deformation_layer
from deformstab_tf.measures import plan
from deformstab_tf.measures.smoothness import smooth_kernels
from deformstab_tf.models import (
    DOWNSAMPLING,
    build_vgg,
    cifar_vgg,
    efficientnet_b0,
    fully_connected,
    imagenet_vgg,
    lenet,
    mobilenet_v2,
    resnet18,
)
from deformstab_tf.runrecord import (  # the run directory's layout, re-exported
    BACKUP_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    read_json,  # noqa: F401
)
from deformstab_tf.summaries import purge_events

# Petrini et al.'s (2021) reference architectures: no downsampling switch, no head choice.
REFERENCE_MODELS = {
    "fully_connected": fully_connected,
    "lenet": lenet,
    "mobilenet_v2": mobilenet_v2,
    "efficientnet_b0": efficientnet_b0,
}
MODELS = ("cifar_vgg", "imagenet_vgg", "resnet18", "vgg", *REFERENCE_MODELS)
# The settings of the switchable builders, which the reference models do not take (those with
# BatchNormalization take `batch_norm_momentum`).
SWITCH_SETTINGS = ("downsample", "head", "pool_size", "strides", "blur_size", "batch_norm_momentum")
REFERENCE_MODELS_WITH_BATCH_NORM = ("mobilenet_v2", "efficientnet_b0")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step")
STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# The Keras dtype policy of each training precision (variables stay float32 in all of them).
_POLICIES = {"float32": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
HEADS = ("gap", "flatten")

# Seconds `train_run` waits for the other workers of a multi-worker cluster to start.
CLUSTER_TIMEOUT = 300

# Every argument of `train_run` and its default: the configuration a run directory records.
# The BatchNormalization momentum of runs recorded before `batch_norm_momentum` existed (Keras's
# default then; the default is now 0.9): they resume and read back as what they trained with.
LEGACY_BATCH_NORM_MOMENTUM = 0.99

DEFAULTS = {
    "dataset": "synthetic",
    "data_dir": None,
    "train_size": None,
    "random_labels": False,
    "augment": (),
    "transform": (),
    "synthetic_classes": 10,
    "synthetic_displacement": 2.0,
    "synthetic_samples": 4096,
    "synthetic_grid_size": 3,
    "synthetic_image_size": 32,
    "synthetic_channels": 3,
    "synthetic_prototypes": "strokes",
    "model": "cifar_vgg",
    "blocks": None,
    "downsample": "max",
    "head": "gap",
    "pool_size": 2,
    "strides": 2,
    "blur_size": 4,
    "batch_norm_momentum": 0.9,
    "epochs": 10,
    "batch_size": 128,
    "optimizer": "sgd",
    "learning_rate": 0.1,
    "momentum": 0.9,
    "schedule": "cosine",
    "weight_decay": 5e-4,
    "seed": 0,
    "probe_size": 128,
    "measures": ("sensitivity", "smoothness"),
    "deformation": "tps",
    "magnitude": 2.0,
    "grid_size": 3,
    "cutoff": 3,
    "measure_every": 1,
    "validate_every": 1,
    "smooth_init_sigma": 0.0,
    "strategy": "default",
    "mixed_precision": "auto",
    "deterministic": True,
    "jit_compile": "auto",
}


def check_config(config):
    """Validates a run configuration; returns it completed with the defaults.

    Every setting is checked here, without reading data or starting TensorFlow (a
    multi-worker strategy must be created first); `train_run` checks the settings that depend
    on the data or on a layer's own rules (`check_config_against_data`: the probe deformation's
    `grid_size`, `cutoff`, the augmentation layers' arguments) before it writes anything.

    Args:
        config: `{setting: value}`, a subset of `DEFAULTS`. `augment` and `measures` take a
            list of names or one name.

    Returns:
        The complete configuration.

    Raises:
        ValueError: naming the first bad setting and the value received, or unknown settings.
        TypeError: naming a setting whose value has the wrong type.

    Example:

    >>> check_config({"downsample": "blur", "measures": "sensitivity"})["measures"]
    ('sensitivity',)
    """
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown training settings {unknown}. Known: {sorted(DEFAULTS)}")
    config = _upgrade({**DEFAULTS, **config})
    config["augment"] = check_names("augment", config["augment"] or ())
    config["transform"] = check_names("transform", config["transform"] or ())
    data_sources.parse_transforms(config["transform"])  # the specs' syntax
    config["measures"] = check_names("measures", config["measures"] or ())
    data_sources.parse_augmentations(config["augment"])  # the specs' syntax
    check_choice("model", config["model"], MODELS)
    check_choice("downsample", config["downsample"], DOWNSAMPLING)
    check_choice("head", config["head"], HEADS)
    check_choice("optimizer", config["optimizer"], OPTIMIZERS)
    check_choice("schedule", config["schedule"], SCHEDULES)
    check_choice("strategy", config["strategy"], STRATEGIES)
    if config["strategy"] != "default" and keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"`strategy`={config['strategy']!r} is a TensorFlow distribution strategy; the Keras "
            f"backend here is {keras.backend.backend()!r} (KERAS_BACKEND), where only "
            "strategy='default' runs. Use KERAS_BACKEND=tensorflow for multi-device training."
        )
    check_choice("deformation", config["deformation"], tuple(DEFORMATION_LAYERS))
    check_choice("jit_compile", config["jit_compile"], ("auto", True, False))
    check_choice("mixed_precision", config["mixed_precision"], PRECISIONS)
    check_bool("deterministic", config["deterministic"])
    check_choice("synthetic_prototypes", config["synthetic_prototypes"], data_sources.PROTOTYPES)
    for name in (
        "epochs",
        "batch_size",
        "measure_every",
        "validate_every",
        "pool_size",
        "strides",
        "blur_size",
    ):
        check_positive_int(name, config[name])
    for name in (
        "synthetic_classes",
        "synthetic_samples",
        "synthetic_grid_size",
        "synthetic_image_size",
        "synthetic_channels",
    ):
        check_positive_int(name, config[name])
    if config["synthetic_classes"] < 2:
        raise ValueError(
            "`synthetic_classes` must be >= 2 (a classification task needs two classes); "
            f"received synthetic_classes={config['synthetic_classes']}."
        )
    if not 2 <= config["synthetic_grid_size"] <= config["synthetic_image_size"]:
        raise ValueError(
            "`synthetic_grid_size` must be in 2..synthetic_image_size="
            f"{config['synthetic_image_size']} (TPS control points per side); received "
            f"synthetic_grid_size={config['synthetic_grid_size']}."
        )
    if config["train_size"] is not None:
        check_positive_int("train_size", config["train_size"])
    for name in (
        "learning_rate",
        "weight_decay",
        "magnitude",
        "smooth_init_sigma",
        "synthetic_displacement",
    ):
        check_non_negative(name, config[name])
    check_range("momentum", config["momentum"], 0, 1)
    check_range("batch_norm_momentum", config["batch_norm_momentum"], 0, 1)
    if config["learning_rate"] == 0:
        raise ValueError("`learning_rate` must be > 0; received learning_rate=0.")
    check_seed("seed", config["seed"])
    check_bool("random_labels", config["random_labels"])
    if not isinstance(config["dataset"], str) or not config["dataset"]:
        raise ValueError(
            f"`dataset` must be a non-empty string; received dataset={config['dataset']!r}."
        )
    if config["data_dir"] is not None and not isinstance(config["data_dir"], str):
        raise TypeError(
            f"`data_dir` must be a path string or None; received data_dir={config['data_dir']!r}."
        )
    unknown_measures = [m for m in config["measures"] if m not in plan.MEASURES]
    if unknown_measures:
        raise ValueError(
            f"`measures` must be a selection of {tuple(plan.MEASURES)}; received "
            f"measures={list(config['measures'])}."
        )
    if config["measures"]:
        check_positive_int("probe_size", config["probe_size"])
        if config["probe_size"] < 2:
            raise ValueError(
                f"`probe_size` must be >= 2 (pairs of probe images); received "
                f"probe_size={config['probe_size']}."
            )
    if (config["model"] == "vgg") != (config["blocks"] is not None):
        raise ValueError(
            "`blocks` goes with model='vgg' (and model='vgg' needs `blocks`); received "
            f"model={config['model']!r}, blocks={config['blocks']!r}."
        )
    if config["blocks"] is not None:
        blocks = config["blocks"]
        if (
            not isinstance(blocks, (list, tuple))
            or not blocks
            or not all(isinstance(block, (list, tuple)) and block for block in blocks)
            or not all(
                isinstance(width, int) and not isinstance(width, bool) and width >= 1
                for block in blocks
                for width in block
            )
        ):
            raise ValueError(
                "`blocks` must be a non-empty list of non-empty lists of positive conv widths, "
                f"e.g. [[32, 32], [64, 64]]; received blocks={blocks!r}."
            )
        config["blocks"] = [list(block) for block in blocks]
    if config["model"] == "resnet18" and config["head"] != "gap":
        raise ValueError(f"resnet18 has a 'gap' head only; received head={config['head']!r}.")
    if config["model"] in REFERENCE_MODELS:
        with_norm = config["model"] in REFERENCE_MODELS_WITH_BATCH_NORM
        taken = ("batch_norm_momentum",) if with_norm else ()
        for name in SWITCH_SETTINGS:
            if name not in taken and config[name] != DEFAULTS[name]:
                raise ValueError(
                    f"{config['model']} has no `{name}` setting (leave it at its default "
                    f"{DEFAULTS[name]!r}); received {name}={config[name]!r}."
                )
    if config["epochs"] % config["validate_every"]:
        raise ValueError(
            f"`validate_every`={config['validate_every']} must divide `epochs`="
            f"{config['epochs']}, so that the last epoch is validated."
        )
    if config["measures"]:
        if config["measure_every"] > config["epochs"]:
            raise ValueError(
                f"`measure_every`={config['measure_every']} exceeds `epochs`={config['epochs']}: "
                "nothing would be measured after initialisation."
            )
    return _drop_unread_settings(config)


def _uses_data_dir(dataset):
    """Whether the `dataset` setting reads `data_dir`: TFDS names do, `"synthetic"` and
    `"folder:PATH"` do not."""
    return isinstance(dataset, str) and dataset != "synthetic" and not dataset.startswith("folder:")


def _drop_unread_settings(config):
    """`config` without a `data_dir` its `dataset` does not read (earlier versions recorded it,
    and then refused to resume without it): None, the default, whatever was given."""
    dataset = config.get("dataset", DEFAULTS["dataset"])
    if config.get("data_dir") is not None and not _uses_data_dir(dataset):
        config = {**config, "data_dir": None}
    return config


def _upgrade(config):
    """Settings as recorded by earlier versions, in today's terms (`mixed_precision` was a bool:
    True picked bfloat16 on CPUs and float16 on GPUs, as `"auto"` does now)."""
    if isinstance(config.get("mixed_precision"), bool):
        config = {**config, "mixed_precision": "auto" if config["mixed_precision"] else "float32"}
    if "batch_norm_momentum" not in config:  # runs before the setting trained with Keras's 0.99
        reference = config.get("model") in REFERENCE_MODELS  # Keras's own then: not a setting
        legacy = DEFAULTS["batch_norm_momentum"] if reference else LEGACY_BATCH_NORM_MOMENTUM
        config = {**config, "batch_norm_momentum": legacy}
    return config


def resolve_precision(setting="auto"):
    """The training precision a `mixed_precision` setting means on this machine.

    `"auto"` asks the active Keras backend where it computes (`accelerator`): bfloat16 compute
    on GPUs of compute capability >= 8.0 and on TPUs, float16 on older GPUs; on the CPU,
    bfloat16 where it has native bfloat16 (AMX or AVX512-BF16) and float32 elsewhere. Variables
    stay float32 in every case, and the measures always compute in float32.

    Args:
        setting: one of `PRECISIONS`.

    Returns:
        `"float32"`, `"bfloat16"` or `"float16"`.

    Example:

    >>> resolve_precision("auto") in ("bfloat16", "float16", "float32")  # depends on the machine
    True
    >>> resolve_precision("float32")
    'float32'
    """
    check_choice("mixed_precision", setting, PRECISIONS)
    if setting != "auto":
        return setting
    device = accelerator()
    if device is None:
        return "bfloat16" if cpu_has_native_bfloat16() else "float32"
    kind, capability = device
    if kind == "gpu":
        return "bfloat16" if capability >= (8, 0) else "float16"
    return "bfloat16" if kind == "tpu" else "float32"


def accelerator():
    """The accelerator the active Keras backend computes on, or None for the CPU.

    Each backend is asked in its own terms (JAX's default devices, `torch.cuda`, TensorFlow's
    physical GPUs), so a JAX or PyTorch user with TensorFlow's CPU build (for `tf.data`) still
    gets their GPU's answer.

    Returns:
        `("gpu", (major, minor))` with the compute capability of the first GPU, `("tpu", None)`,
        `(platform, None)` for another accelerator (e.g. PyTorch's `"mps"`), or None.

    Example:

    >>> accelerator() is None or accelerator()[0] in ("gpu", "tpu", "mps")
    True
    """
    return _ACCELERATOR_QUERIES[keras.backend.backend()]()


def _tensorflow_accelerator():
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    return "gpu", tuple(details.get("compute_capability") or (0, 0))


def _jax_accelerator():
    import jax

    device = jax.devices()[0]  # the default backend's: GPU or TPU when there is one
    if device.platform == "cpu":
        return None
    if device.platform == "gpu":
        capability = getattr(device, "compute_capability", "0.0")  # "9.0" on CUDA
        major, _, minor = str(capability).partition(".")
        return "gpu", (int(major), int(minor or 0))
    return device.platform, None


def _torch_accelerator():
    import torch

    if torch.cuda.is_available():
        return "gpu", tuple(torch.cuda.get_device_capability(0))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps", None  # "auto" keeps float32 there
    return None


_ACCELERATOR_QUERIES = {
    "tensorflow": _tensorflow_accelerator,
    "jax": _jax_accelerator,
    "torch": _torch_accelerator,
    "numpy": lambda: None,
    "openvino": lambda: None,
}


def cpu_has_native_bfloat16():
    """Whether the CPU has bfloat16 arithmetic that oneDNN uses (AMX-BF16 or AVX512-BF16), where
    bfloat16 training runs about 2x as fast as float32 (`benchmarks/bench_pipeline.py`)."""
    return cpu_bfloat16_path() is not None


def cpu_bfloat16_path():
    """The CPU's bfloat16 kernel path in oneDNN: `"amx_bf16"`, `"avx512_bf16"` or None.

    The two paths round differently, so bfloat16 training with op determinism is bit-identical
    across machines of one path only; every run records it (`config.json`, `summary.json`).

    Returns:
        The CPU flag of the path oneDNN takes (AMX first), or None without native bfloat16.

    Example:

    >>> cpu_bfloat16_path() in ("amx_bf16", "avx512_bf16", None)
    True
    """
    try:
        with open("/proc/cpuinfo") as file:
            flags = next((line for line in file if line.startswith("flags")), "").split()
    except OSError:  # not Linux: no such CPUs are known to TensorFlow's bf16 kernels elsewhere
        return None
    return next((flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags), None)


def check_config_against_data(config, info):
    """Checks the settings that depend on the data source: the probe images the test split
    must hold, and the probe deformation (its layer's own checks, and a TPS grid no finer than
    the images).

    Args:
        config: a checked configuration (`check_config`).
        info: the source's `DatasetInfo`.

    Raises:
        ValueError: naming the setting, its value and the data's limit.

    Example:

    >>> _, _, info = deformstab_tf.data.load_dataset("synthetic")  # 1000 test images
    >>> check_config_against_data(check_config({"probe_size": 5000}), info)
    Traceback (most recent call last):
    ValueError: `probe_size`=5000 exceeds the 1000 images of the test split of 'synthetic'.
    """
    if config["measures"] and plan.needs_images(config["measures"]):
        if config["probe_size"] > info.test_size:
            raise ValueError(
                f"`probe_size`={config['probe_size']} exceeds the {info.test_size} images of the "
                f"test split of {info.name!r}."
            )
    if config["measures"]:  # grid_size, cutoff, magnitude: the layer's own checks
        probe_deformation(config).check_image_size(*info.image_shape[:2])


def train_run(output_dir, verbose=1, download=True, cluster_timeout=CLUSTER_TIMEOUT, **config):
    """Trains (or resumes, or leaves alone if finished) the run in `output_dir`.

    Args:
        output_dir: the run directory (created; see the module docstring for its contents).
        verbose: Keras progress bars (1), one line per epoch (2) or silent (0).
        download: a TFDS `dataset` missing from `data_dir` is downloaded (default) or, with
            False, an error (offline use). Not a setting of the run: the data are the same.
        cluster_timeout: `strategy="multi_worker"`: seconds to wait for the other workers of
            `TF_CONFIG` to start (then a `TimeoutError` naming them; see `_multi_worker_strategy`).
            Not a setting of the run.
        **config: settings, see `DEFAULTS`: data (`dataset` = `"synthetic"`, a TFDS name or
            `"folder:PATH"`, `data_dir`, `train_size`, `random_labels`, `augment` specs, the
            `transform` specs of a derived data set (`data.transform_images`), the synthetic
            task's `synthetic_*`), model (`model` in `MODELS`, `blocks` for `"vgg"`,
            `downsample`, `head`, `pool_size`, `strides`, `blur_size`: not for the
            `REFERENCE_MODELS`; `batch_norm_momentum`, default 0.9 (runs recorded without it
            trained with 0.99): also for `REFERENCE_MODELS_WITH_BATCH_NORM`), optimisation
            (`epochs`,
            `batch_size`, `optimizer`, `learning_rate`, `momentum`, `schedule`,
            `weight_decay`, `seed`), measurement (`probe_size` test images, `measures`, the
            probe `deformation` name and `magnitude`, `grid_size` / `cutoff`,
            `measure_every` epochs), `validate_every` (evaluate on the test split after every
            n-th epoch, a divisor of `epochs`), `smooth_init_sigma` (Gaussian smoothing of the
            initial filters, 0 = off), `strategy` (`"default"`, `"mirrored"`, `"multi_worker"` with
            `TF_CONFIG`), `mixed_precision` (`"auto"`, `"float32"`, `"bfloat16"`,
            `"float16"`; see `resolve_precision`: the precision used is recorded in
            `config.json` and a resumed run keeps it), `deterministic` (TensorFlow's op
            determinism, so the same seed gives the same numbers), `jit_compile`.

    Returns:
        The run summary (`summary.json`'s content).

    Raises:
        ValueError: a bad setting (also one the data rules out, e.g. more probe images than the
            test split holds), data that cannot be read, an `output_dir` that cannot be written,
            or a run directory made with another configuration: always before anything is
            written.
        TypeError: a setting of the wrong type.

    Example:

    >>> # The default run (cifar_vgg, 10 epochs): about 2 minutes on 2 CPU cores.
    >>> summary = train_run("runs/vgg_max", downsample="max")  # doctest: +SKIP
    >>> # A tiny one: 3 synthetic classes of 16x16 images, a two-block VGG, one epoch.
    >>> summary = train_run("runs/tiny", verbose=0, model="vgg", blocks=[[4], [8]], epochs=1,
    ...                     synthetic_classes=3, synthetic_image_size=16, synthetic_samples=64,
    ...                     batch_size=32, probe_size=8)
    >>> summary["epochs_completed"], sorted(summary["stability"])
    (1, ['sensitivity', 'smoothness'])
    >>> sorted(name for name in os.listdir("runs/tiny") if "." in name and "events" not in name)
    ['config.json', 'epoch_seconds.json', 'metrics.csv', 'model.keras', 'summary.json']
    """
    started, cpu_started = time.time(), time.process_time()
    check_choice("verbose", verbose, (0, 1, 2))
    check_non_negative("cluster_timeout", cluster_timeout)
    if cluster_timeout == 0:
        raise ValueError("`cluster_timeout` must be > 0 seconds; received cluster_timeout=0.")
    data_dir = config.get("data_dir")
    config = check_config(config)
    if data_dir is not None and config["data_dir"] is None and verbose:
        print(
            f"warning: `data_dir`={data_dir!r} has no effect on dataset={config['dataset']!r} "
            "(only TFDS datasets read it): ignored, and not recorded as a setting of the run.",
            file=sys.stderr,
        )
    output_dir = check_output_directory("output_dir", output_dir)
    state = _check_run_directory(output_dir, config)
    if state == "complete":
        if verbose:
            print(f"{output_dir} is complete; nothing to do.")
        return runrecord.read_summary(output_dir)
    precision = _run_precision(output_dir, config, state, verbose)
    with op_determinism(config["deterministic"]):
        return _train(
            output_dir, config, state, precision, verbose, download, cluster_timeout, started,
            cpu_started,
        )  # fmt: skip


def _train(
    output_dir, config, state, precision, verbose, download, cluster_timeout, started, cpu_started
):
    keras.utils.set_random_seed(config["seed"])
    strategy = _strategy(config["strategy"], cluster_timeout, verbose)
    is_chief = _is_chief(strategy)
    # Only the chief writes the run directory; other workers write a scratch copy.
    run_dir = output_dir if is_chief else tempfile.mkdtemp(prefix="deformstab_worker_")
    source = run_dataset_arguments(config)
    try:
        train, test, info = data_sources.load_dataset(
            source.pop("source"),
            batch_size=config["batch_size"],
            train_size=config["train_size"],
            random_labels=config["random_labels"],
            augment=config["augment"],
            download=download,
            **source,
        )
    except ValueError as error:  # the setting is `dataset`, load_dataset's argument `source`
        raise ValueError(str(error).replace("`source`", "`dataset`")) from None
    check_config_against_data(config, info)
    steps_per_epoch = -(-info.train_size // config["batch_size"])
    policy = _POLICIES[precision]
    with strategy.scope():
        model = build_model(config, info.image_shape, info.num_classes, policy)
        if config["smooth_init_sigma"] > 0:
            smooth_kernels(model, config["smooth_init_sigma"])
        model.compile(
            optimizer=make_optimizer(config, steps_per_epoch),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=config["jit_compile"],
        )

    stability = None
    if config["measures"]:  # built (and its probe images checked) before anything is written
        probe_images = None
        if plan.needs_images(config["measures"]):
            probe_images = data_sources.take_images(test, config["probe_size"])
        stability = StabilityCallback(
            probe_images,
            probe_deformation(config),
            measures=config["measures"],
            every_n_epochs=config["measure_every"],
            log_dir=run_dir,
            seed=config["seed"],
        )

    # Drawn in every session, written in the first: each iterator over `train` moves its seeded
    # shuffle and augmentation streams on, so a resumed session opens as many as a new one did.
    examples, _ = next(iter(train))
    os.makedirs(run_dir, exist_ok=True)
    if state == "new":
        runrecord.write_json(
            os.path.join(run_dir, CONFIG_FILE),
            {
                "config": config,
                "precision": precision,
                "cpu_bfloat16": cpu_bfloat16_path(),
                "version": _version(),
            },
        )
        _write_first_summaries(run_dir, config, precision, examples)

    clock = _EpochClock(run_dir)
    callbacks = [
        _DropRedoneEpochs(run_dir),
        clock,
        keras.callbacks.TensorBoard(run_dir, write_graph=False),
    ]
    if stability is not None:
        callbacks.append(stability)
    callbacks.append(keras.callbacks.CSVLogger(os.path.join(run_dir, METRICS_FILE), append=True))
    if verbose:
        callbacks.append(_CompactProgbar(verbose))
    # Last: an epoch counts as done only once everything of it is written.
    backup = keras.callbacks.BackupAndRestore(
        os.path.join(run_dir, BACKUP_DIR), double_checkpoint=True
    )
    callbacks.append(backup)
    # A resumed run reads the batches an uninterrupted one would: those of the epochs done are
    # skipped (shuffles and augmentations are seeded streams that start over with the iterator).
    # Not across workers: a chief restoring alone would build the optimizer's variables alone.
    done_batches = 0
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        with strategy.scope():
            done_batches = _keras_internals.restore_backup(backup, model) * steps_per_epoch
    workarounds = contextlib.nullcontext()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Keras defects with this strategy, worked around for this run's fit and evaluate only.
        workarounds = _keras_internals.multi_worker_fit(model, strategy, train)
    with workarounds:
        model.fit(
            # One iterator for the whole fit: per epoch, Keras would destroy the prefetching
            # iterator and make a new one, which blocked for 6-10 s on some epochs here.
            train.repeat().skip(done_batches),
            steps_per_epoch=steps_per_epoch,
            epochs=config["epochs"],
            shuffle=False,  # `train` shuffles itself (seeded); Keras warns that it ignores True
            validation_data=test,
            validation_freq=config["validate_every"],
            callbacks=callbacks,
            verbose=verbose,
        )
        test_loss, test_accuracy = model.evaluate(test, verbose=0)
    summary = {
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "epochs_completed": config["epochs"],
        "precision": precision,
        "cpu_bfloat16": cpu_bfloat16_path(),  # the machine that finished the run
        "train_size": info.train_size,
        "test_size": info.test_size,
        "num_classes": info.num_classes,
        "image_shape": list(info.image_shape),
        "wall_seconds_last_session": time.time() - started,
        "cpu_seconds_last_session": time.process_time() - cpu_started,
        "epochs_last_session": config["epochs"] - clock.initial_epoch,
    }
    # All sessions together: this one whole, plus the epochs finished before it (None where a
    # session before it kept no record of its epochs).
    earlier = clock.earlier_seconds()
    last = summary["wall_seconds_last_session"]
    summary["wall_seconds"] = None if earlier is None else last + earlier
    if stability is not None:
        final = stability.history[-1]["results"]
        # A measure with no probe point in this model (smoothness of a fully-connected net) has
        # no mean: left out, as from the callback's logs.
        summary["stability"] = {m: r.mean() for m, r in final.items() if len(r)}
    _save_model(model, os.path.join(run_dir, MODEL_FILE))
    _write_hparams_metrics(run_dir, config, summary)
    runrecord.write_json(os.path.join(run_dir, SUMMARY_FILE), summary)  # last: marks it complete
    shutil.rmtree(os.path.join(run_dir, BACKUP_DIR), ignore_errors=True)
    if not is_chief:
        shutil.rmtree(run_dir, ignore_errors=True)
    return summary


# `data.synthetic` argument <- run setting: the one mapping, for training and for measuring.
SYNTHETIC_SETTINGS = (
    ("num_classes", "synthetic_classes"),
    ("max_displacement", "synthetic_displacement"),
    ("samples_per_epoch", "synthetic_samples"),
    ("grid_size", "synthetic_grid_size"),
    ("image_size", "synthetic_image_size"),
    ("channels", "synthetic_channels"),
    ("prototypes", "synthetic_prototypes"),
)


def run_dataset_arguments(config):
    """`load_dataset` keyword arguments that give a run's own data back (e.g. to measure its
    model on its test split): the source, `data_dir`, the seed (synthetic prototypes and
    splits) and the synthetic task's settings, as `train_run` passes them.

    Args:
        config: a run's settings (`Run.config`, `read_config`).

    Returns:
        `{"source", "data_dir", "seed", "transform", "synthetic_options"}`.
    """
    return {
        "source": config["dataset"],
        "data_dir": config.get("data_dir"),
        "seed": config.get("seed", 0),
        "transform": tuple(config.get("transform", ())),
        "synthetic_options": {
            option: config[key] for option, key in SYNTHETIC_SETTINGS if key in config
        },
    }


def build_model(config, image_shape, num_classes, dtype_policy=None):
    """The model a configuration names (`model`, `blocks`, `downsample`, `head`, ...), built
    under `dtype_policy` (e.g. `"mixed_bfloat16"`; the global policy is restored after)."""
    previous = keras.mixed_precision.global_policy()
    if dtype_policy is not None:
        keras.mixed_precision.set_global_policy(dtype_policy)
    try:
        return _build_model(config, image_shape, num_classes)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _build_model(config, image_shape, num_classes):
    if config["model"] in REFERENCE_MODELS:
        builder = REFERENCE_MODELS[config["model"]]
        options = {}
        if config["model"] in REFERENCE_MODELS_WITH_BATCH_NORM:
            options["batch_norm_momentum"] = config["batch_norm_momentum"]
        return builder(input_shape=tuple(image_shape), num_classes=num_classes, **options)
    options = {
        "input_shape": tuple(image_shape),
        "num_classes": num_classes,
        "head": config["head"],
        "pool_size": config["pool_size"],
        "strides": config["strides"],
        "blur_size": config["blur_size"],
        "batch_norm_momentum": config["batch_norm_momentum"],
    }
    if config["model"] == "cifar_vgg":
        return cifar_vgg(config["downsample"], **options)
    if config["model"] == "imagenet_vgg":
        return imagenet_vgg(config["downsample"], **options)
    if config["model"] == "vgg":
        return build_vgg(config["blocks"], config["downsample"], **options)
    options.pop("head")
    options.pop("pool_size")
    options.pop("strides")
    return resnet18(config["downsample"], **options)


def make_optimizer(config, steps_per_epoch):
    """SGD with momentum or Adam, with a constant, cosine or step learning-rate schedule and
    decoupled weight decay on kernels (not on biases or BatchNorm parameters)."""
    rate = config["learning_rate"]
    total = config["epochs"] * steps_per_epoch
    if config["schedule"] == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=total)
    elif config["schedule"] == "step":  # x0.1 at 50% and 75% of training
        rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            [total // 2, (3 * total) // 4], [rate, rate * 0.1, rate * 0.01]
        )
    weight_decay = config["weight_decay"] or None
    if config["optimizer"] == "sgd":
        optimizer = keras.optimizers.SGD(
            rate, momentum=config["momentum"], nesterov=False, weight_decay=weight_decay
        )
    else:
        optimizer = keras.optimizers.AdamW(rate, weight_decay=config["weight_decay"])
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def probe_deformation(config):
    """The probe deformation a configuration names (`deformation`, `magnitude`, ...)."""
    options = {"grid_size": config["grid_size"]} if config["deformation"] == "tps" else {}
    if config["deformation"] == "diffeo":
        options["cutoff"] = config["cutoff"]
    return deformation_layer(
        config["deformation"], config["magnitude"], seed=config["seed"], **options
    )


def read_config(run_dir):
    """The configuration recorded in a run directory (`config.json`), or None without one.

    Raises:
        ValueError: naming the file when it is not JSON or not a run's configuration (a
            `{"config": {...}}` object).

    Example:

    >>> read_config("runs/cifar_vgg_max_s0")["downsample"]  # doctest: +SKIP
    'max'
    >>> read_config("no_run_here") is None
    True
    """
    document = runrecord.read_config_document(run_dir)
    if document is None:
        return None
    return _drop_unread_settings(_upgrade(document["config"]))


def _run_precision(output_dir, config, state, verbose):
    """The precision of a new run (resolved here), or the one a resumed run recorded."""
    here = resolve_precision(config["mixed_precision"])
    if state == "new":
        return here
    recorded = runrecord.read_config_document(output_dir)
    # Runs recorded before the precision was: a bool setting, bf16 on CPUs if True.
    legacy = "bfloat16" if recorded["config"].get("mixed_precision") is True else "float32"
    precision = recorded.get("precision", legacy)
    if precision != here and verbose:
        print(
            f"Resuming {output_dir} in {precision}, the precision it started in "
            f"(mixed_precision={config['mixed_precision']!r} would pick {here} here)."
        )
    return precision


@contextlib.contextmanager
def op_determinism(enabled=True):
    """TensorFlow's op determinism inside the block (deterministic kernels and reductions, so
    thread timing cannot change a number), restored to what it was on exit.

    Example:

    >>> from tensorflow.python.framework import config
    >>> with op_determinism(True):  # e.g. around model.fit: the same seed, the same weights
    ...     config.is_op_determinism_enabled()
    True
    >>> config.is_op_determinism_enabled()  # restored
    False
    """
    from tensorflow.python.framework import config as tf_config

    before = tf_config.is_op_determinism_enabled()
    if enabled and not before:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not before:
            tf_config.disable_op_determinism()


# -- run directory ---------------------------------------------------------------------------


def _check_run_directory(output_dir, config):
    """`"new"`, `"resume"` or `"complete"`; a ValueError for a directory of another run."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"`output_dir` is an existing file: {output_dir!r}.")
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return "new"
    stored = read_config(output_dir)
    if stored is None:
        raise ValueError(
            f"`output_dir`={output_dir!r} is not empty and holds no {CONFIG_FILE}: it is not a "
            "run directory. Choose a new or empty directory."
        )
    normalised = json.loads(json.dumps(config))
    # A run recorded before a setting existed ran with what is now that setting's default.
    stored = {**json.loads(json.dumps(DEFAULTS)), **stored}
    differences = {
        key: (stored.get(key), normalised.get(key))
        for key in sorted(set(stored) | set(normalised))
        if stored.get(key) != normalised.get(key)
    }
    if differences:
        listed = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differences.items())
        raise ValueError(
            f"`output_dir`={output_dir!r} holds a run with other settings ({listed}). Rerun with "
            "its settings to resume it, or choose another output_dir."
        )
    return "complete" if runrecord.is_complete(output_dir) else "resume"


class _DropRedoneEpochs(keras.callbacks.Callback):
    """On resume, drops the epochs the fit redoes from `metrics.csv` and from Keras's epoch
    scalars in the TensorBoard runs, before they are written again.

    `BackupAndRestore` comes last in the callbacks (an epoch is backed up only after all its
    logs are written), so a kill can leave logs of an epoch that is then redone: they go here.
    """

    def __init__(self, run_dir):
        super().__init__()
        self.run_dir = run_dir

    def on_train_begin(self, logs=None):
        self._done = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._done:
            return
        self._done = True  # the first epoch of this fit: everything from it on is redone
        runrecord.truncate_metrics(self.run_dir, epoch)
        for run in ("train", "validation"):  # Keras's epoch scalars, not the example images
            purge_events(os.path.join(self.run_dir, run), epoch, tag_prefixes=("epoch_",))


class _EpochClock(keras.callbacks.Callback):
    """Each finished epoch's wall seconds in `epoch_seconds.json`, kept across sessions, so that a
    resumed run can tell how long all of its training took.

    On resume the epochs redone are dropped first, as `_DropRedoneEpochs` does for the logs; the
    file is written before `BackupAndRestore` marks the epoch done, so it never lacks a done one.
    """

    def __init__(self, run_dir):
        super().__init__()
        self.path = os.path.join(run_dir, runrecord.EPOCH_SECONDS_FILE)
        self.initial_epoch = 0
        self.seconds = {}

    def on_train_begin(self, logs=None):
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first:  # the first epoch of this session: every record from it on is redone
            self._first = False
            self.initial_epoch = epoch
            record = runrecord.read_json(self.path) if os.path.exists(self.path) else {}
            self.seconds = {int(e): s for e, s in record.items() if int(e) < epoch}
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds[epoch] = time.perf_counter() - self._started
        runrecord.write_json(self.path, {str(e): s for e, s in sorted(self.seconds.items())})

    def earlier_seconds(self):
        """The wall seconds of the epochs finished before this session, or None when a session
        before it kept no record of some of them (a run begun before this clock existed)."""
        if set(self.seconds) >= set(range(self.initial_epoch)):
            return sum(self.seconds[e] for e in range(self.initial_epoch))
        return None


class _CompactProgbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, showing the mean of each stability measure, not every probe."""

    def __init__(self, verbose):
        super().__init__()
        self._verbose = verbose

    def set_params(self, params):
        super().set_params({**params, "verbose": self._verbose})

    @staticmethod
    def _compact(logs):
        return {
            key: value
            for key, value in (logs or {}).items()
            if not key.startswith("stability/") or key.endswith("/mean") or key.count("/") == 1
        }

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, self._compact(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, self._compact(logs))


def _write_first_summaries(run_dir, config, precision, images):
    """Hyper-parameters (HParams dashboard) and example training `images`, once per run."""
    from tensorboard.plugins.hparams import api as hp

    with tf.summary.create_file_writer(run_dir).as_default():
        hp.hparams_config(
            hparams=[hp.HParam(key) for key in _hparam_order([*config, "precision"])],
            metrics=[
                hp.Metric("epoch_accuracy", group="validation", display_name="val accuracy"),
                hp.Metric("epoch_loss", group="validation", display_name="val loss"),
                hp.Metric("test_accuracy", display_name="test accuracy"),
            ]
            + [
                hp.Metric(f"{measure}/mean", group="stability", display_name=f"{measure} mean")
                for measure in config["measures"]
                if plan.per_layer(measure)
            ]
            + [  # one number, logged as it is
                hp.Metric(measure, group="stability")
                for measure in config["measures"]
                if not plan.per_layer(measure)
            ],
        )
        hparams = {**config, "precision": precision}
        hp.hparams({key: _hparam_value(hparams[key]) for key in _hparam_order(hparams)})
    with tf.summary.create_file_writer(os.path.join(run_dir, "train")).as_default(step=0):
        tf.summary.image("training_examples", tf.clip_by_value(images[:8], 0.0, 1.0), max_outputs=8)


# The HParams dashboard's first columns: what tells runs apart. The rest follow by name.
HPARAMS_FIRST = (
    "model", "downsample", "dataset", "seed", "learning_rate", "epochs",
    "precision", "mixed_precision",
)  # fmt: skip


def _hparam_order(config):
    """The settings in dashboard order: `HPARAMS_FIRST` (those present), then by name."""
    first = [key for key in HPARAMS_FIRST if key in config]
    return first + sorted(key for key in config if key not in first)


def _write_hparams_metrics(run_dir, config, summary):
    with tf.summary.create_file_writer(run_dir).as_default(step=config["epochs"] - 1):
        tf.summary.scalar("test_accuracy", summary["test_accuracy"])


def _hparam_value(value):
    if value is None:
        return "none"
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def _save_model(model, path):
    temporary = path[: -len(".keras")] + ".tmp.keras"
    model.save(temporary)
    os.replace(temporary, path)


def _version():
    from deformstab_tf import __version__

    return __version__


# -- distribution ----------------------------------------------------------------------------


def _strategy(name, cluster_timeout=CLUSTER_TIMEOUT, verbose=1):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return _multi_worker_strategy(cluster_timeout, verbose)
    return tf.distribute.get_strategy()


def _multi_worker_strategy(timeout, verbose):
    """`MultiWorkerMirroredStrategy` once every chief and worker task of `TF_CONFIG` is up.

    TensorFlow waits for the other workers inside one call that holds the GIL and catches
    SIGTERM (its preemption notifier): by default forever, silently, and only SIGKILL ends it.
    So the workers first wait for each other here, where Ctrl-C and SIGTERM work: each one
    listens on its own `TF_CONFIG` port (which TensorFlow then takes over) and connects to the
    others' until all of them answer, for at most `timeout` seconds. TensorFlow's own
    registration of the tasks is bounded by the same timeout (a worker that answered, then
    died), and SIGTERM gets back the action it had once the strategy exists.

    Raises:
        ValueError: `TF_CONFIG` is missing or names no cluster.
        TimeoutError: naming the workers that did not start within `timeout` seconds.
        OSError: this worker's own port is taken.
    """
    own, others = _tf_config_tasks()
    if verbose and others:
        print(
            f"Waiting up to {timeout:g} s for the other workers of TF_CONFIG: "
            + ", ".join(f"{name} at {address}" for name, address in others.items())
            + (f" (this is {own[0]} at {own[1]})." if own else "."),
            file=sys.stderr,
            flush=True,
        )
    _wait_for_workers(own[1] if own else None, others, timeout)
    if own is not None:
        _bound_cluster_registration(timeout)
    restore_sigterm = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if restore_sigterm else None
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.DeadlineExceededError as error:
        names = {f"{job} {index}" for job, index in _TASK.findall(error.message)}
        late = {name: others[name] for name in sorted(names) if name in others} or others
        raise TimeoutError(
            f"Not every worker of TF_CONFIG joined TensorFlow's cluster within "
            f"cluster_timeout={timeout:g} s: "
            + ", ".join(f"{name} at {address}" for name, address in late.items())
            + " answered but did not join. Is it running the same command, with this TF_CONFIG?"
        ) from None
    finally:
        if sigterm is not None:  # TensorFlow's preemption notifier took SIGTERM over
            signal.signal(signal.SIGTERM, sigterm)


_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")
_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


def _tf_config_tasks():
    """`((name, address) of this task or None, {name: address} of the other chief and worker
    tasks)` from `TF_CONFIG`, names such as `"worker 1"`."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "strategy='multi_worker' needs the TF_CONFIG environment variable (the cluster and "
            f"this worker's task), e.g. TF_CONFIG='{_TF_CONFIG_EXAMPLE}'; see the README."
        )
    try:
        document = json.loads(text)
        tasks = {}
        for job in ("chief", "worker"):
            addresses = document["cluster"].get(job, [])
            pairs = addresses.items() if isinstance(addresses, dict) else enumerate(addresses)
            for index, address in pairs:
                _host_port(address)
                tasks[f"{job} {int(index)}"] = address
        task = document.get("task")
        name = f"{task['type']} {int(task.get('index', 0))}" if task else None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"`TF_CONFIG` must be JSON such as '{_TF_CONFIG_EXAMPLE}' ({error}); received "
            f"TF_CONFIG={text!r}."
        ) from None
    if not tasks:
        raise ValueError(f"`TF_CONFIG` names no chief or worker task; received TF_CONFIG={text!r}.")
    own = (name, tasks.pop(name)) if name in tasks else None
    return own, tasks


def _host_port(address):
    """`(host, port)` of a `"host:port"` address (`"[::1]:port"` for IPv6)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not a host:port address")
    return host.strip("[]"), int(port)


def _wait_for_workers(own_address, others, timeout):
    """Listens on this worker's port and connects to the `others` until each has answered (its
    own such listener or TensorFlow's server), for at most `timeout` seconds."""
    listener = None
    if own_address is not None and others:
        port = _host_port(own_address)[1]
        try:
            if socket.has_dualstack_ipv6():
                listener = socket.create_server(
                    ("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=64
                )
            else:
                listener = socket.create_server(("", port), backlog=64)
        except OSError as error:
            raise OSError(
                f"This worker's TF_CONFIG address {own_address} cannot be listened on "
                f"({error.strerror}): is another process using port {port}?"
            ) from None
        listener.setblocking(False)
    waiting, reasons = dict(others), {}
    deadline = time.monotonic() + timeout
    try:
        while True:
            for name, address in list(waiting.items()):
                left = deadline - time.monotonic()
                try:
                    with socket.create_connection(_host_port(address), max(0.05, min(1.0, left))):
                        del waiting[name]
                except OSError as error:
                    reasons[name] = error.strerror or str(error) or type(error).__name__
            while listener is not None:  # tidy: the kernel answered them already
                try:
                    listener.accept()[0].close()
                except OSError:
                    break
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"The other workers of TF_CONFIG did not start within "
                    f"cluster_timeout={timeout:g} s: no answer from "
                    + ", ".join(f"{n} at {a} ({reasons[n]})" for n, a in waiting.items())
                    + ". Start the same command there, or raise the timeout."
                )
            time.sleep(0.2)
    finally:
        if listener is not None:
            listener.close()


def _bound_cluster_registration(timeout):
    """Configures TensorFlow's coordination service as `MultiWorkerMirroredStrategy` does, but
    with its task registration a barrier that times out after `timeout` seconds (by default
    the service waits for a task that never registers for as long as it runs)."""
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:  # configured by the caller
        return
    cluster_spec = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster_spec),
        cluster_register_timeout_in_ms=int(timeout * 1000),
    )
    config = context.context().coordination_service
    for job in ("chief", "worker"):
        if job in cluster_spec.jobs:
            config.coordinated_job_list.add(name=job, num_tasks=cluster_spec.num_tasks(job))
    if "cluster_register_with_barrier" in config.DESCRIPTOR.fields_by_name:
        config.cluster_register_with_barrier = True


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def cpu_devices(count):
    """Splits the CPU into `count` logical devices (for `strategy="mirrored"` without GPUs).

    Call before TensorFlow initialises its devices (before any op runs).
    """
    check_positive_int("count", count)
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )
    return [device.name for device in tf.config.list_logical_devices("CPU")]


__all__ = [
    "accelerator",
    "DEFAULTS",
    "MODELS",
    "PRECISIONS",
    "REFERENCE_MODELS",
    "build_model",
    "check_config",
    "check_config_against_data",
    "cpu_devices",
    "make_optimizer",
    "op_determinism",
    "probe_deformation",
    "read_config",
    "resolve_precision",
    "train_run",
]
