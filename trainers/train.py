r"""Trains a CNN with switchable downsampling and watches its deformation stability.

With no flags: `cifar_vgg` (max pooling) on the built-in synthetic task (no download), with the
stability callback, in about 2 minutes on 2 CPU cores. Watch it with `tensorboard --logdir runs`.

    python -m trainers.train                                   # the default run
    python -m trainers.train --dataset=folder:../shared/data/cifar10 --train_size=10000 \
        --augment=standard --epochs=12 --learning_rate=0.1 --output_dir=runs/cifar_max
    python -m trainers.train --flagfile=trainers/presets/cifar10_cpu.cfg

Rerunning the same command resumes an interrupted run (also after `kill -9`); the same output
directory with other flags is an error. See `deformstab_tf.training.train_run`.
"""

import os

from absl import app, flags

from deformstab_tf.measures.plan import MEASURES
from deformstab_tf.trainers._cli import run_main

FLAGS = flags.FLAGS

# Data
flags.DEFINE_string(
    "dataset", "synthetic", "synthetic (built in), a TFDS name (cifar10, mnist, ...) or folder:PATH"
)
flags.DEFINE_string("data_dir", None, "TFDS data directory (default ~/tensorflow_datasets).")
flags.DEFINE_bool(
    "download", True,
    "TFDS: download and prepare a dataset missing from --data_dir; --nodownload for offline use.",
)  # fmt: skip
flags.DEFINE_integer("train_size", None, "Train on the first N examples of a seeded shuffle.")
flags.DEFINE_bool("random_labels", False, "Labels drawn once per example, fixed across epochs.")
flags.DEFINE_list(
    "augment",
    [],
    "Pipeline augmentations: standard (flip + translate:4), flip, translate:4, noise:0.1 "
    "(Gaussian pixel noise of std 0.1, unclipped), "
    "tps:grid_size=3;max_displacement=2, affine:rotation=10, diffeo:cutoff=3;displacement=1 "
    "(comma-separated list; ';' separates a layer's arguments).",
)
flags.DEFINE_list(
    "transform",
    [],
    "A derived data set, both splits: resample:2 (shrunk by 2 and enlarged back: smoother), "
    "noise:0.1 (fixed Gaussian pixel noise per image); see deformstab_tf.data.transform_images.",
)
flags.DEFINE_integer("synthetic_classes", 10, "Synthetic task: number of classes (prototypes).")
flags.DEFINE_float("synthetic_displacement", 2.0, "Synthetic task: TPS strength C of the samples.")
flags.DEFINE_integer("synthetic_samples", 4096, "Synthetic task: training samples per epoch.")
flags.DEFINE_integer("synthetic_grid_size", 3, "Synthetic task: TPS control grid size.")
flags.DEFINE_integer("synthetic_image_size", 32, "Synthetic task: image height and width.")
flags.DEFINE_integer("synthetic_channels", 3, "Synthetic task: image channels.")
flags.DEFINE_enum(
    "synthetic_prototypes", "strokes", ["strokes", "texture"],
    "Synthetic task: prototype style, smooth coloured strokes or fine texture (F6).",
)  # fmt: skip
# Model
flags.DEFINE_enum(
    "model", "cifar_vgg",
    ["cifar_vgg", "imagenet_vgg", "resnet18", "vgg", "fully_connected", "lenet", "mobilenet_v2",
     "efficientnet_b0"],
    "Model: the switchable builders, or Petrini et al.'s reference architectures.",
)  # fmt: skip
flags.DEFINE_string("blocks", None, "For --model=vgg: conv widths per block, e.g. '32,32;64,64'.")
flags.DEFINE_string(
    "downsample", "max", "subsample, max, avg, strided, strided_relu, blur or none."
)
flags.DEFINE_enum("head", "gap", ["gap", "flatten"], "Global average pooling or flatten + dense.")
flags.DEFINE_integer("pool_size", 2, "Pooling window / strided conv kernel size.")
flags.DEFINE_integer("strides", 2, "Downsampling factor of each unit.")
flags.DEFINE_integer("blur_size", 4, "Taps of the binomial filter of --downsample=blur (2..7).")
flags.DEFINE_float(
    "batch_norm_momentum", 0.9, "Momentum of BatchNormalization's moving statistics (VGG, ResNet)."
)
# Optimisation
flags.DEFINE_integer("epochs", 10, "Training epochs.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam"], "SGD with momentum, or Adam(W).")
flags.DEFINE_float("learning_rate", 0.1, "Initial learning rate.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_enum("schedule", "cosine", ["constant", "cosine", "step"], "Learning-rate schedule.")
flags.DEFINE_float("weight_decay", 5e-4, "Decoupled weight decay on kernels (0 = off).")
flags.DEFINE_integer("seed", 0, "Seed of the initialisation, data order and measurements.")
# Measurement
flags.DEFINE_integer("probe_size", 128, "Probe images (from the test split).")
flags.DEFINE_list(
    "measures",
    ["sensitivity", "smoothness"],
    f"Any of {', '.join(MEASURES)}; empty = none.",
)
flags.DEFINE_string("deformation", "tps", "Probe deformation: tps, affine or diffeo.")
flags.DEFINE_float(
    "magnitude", 2.0, "Probe strength: TPS max displacement px, rotation deg, diffeo delta px."
)
flags.DEFINE_integer("grid_size", 3, "TPS control grid size.")
flags.DEFINE_integer("cutoff", 3, "Diffeomorphism cut-off c.")
flags.DEFINE_integer("measure_every", 1, "Measure after every n-th epoch.")
flags.DEFINE_integer(
    "validate_every", 1, "Evaluate on the test split after every n-th epoch (must divide epochs)."
)
flags.DEFINE_float(
    "smooth_init_sigma", 0.0, "Smooth the initial filters with a Gaussian of this std (0 = off)."
)
# Execution
flags.DEFINE_enum(
    "strategy", "default", ["default", "mirrored", "multi_worker"], "tf.distribute strategy."
)
flags.DEFINE_integer(
    "cpu_devices",
    0,
    "Split the CPU into this many logical devices (for --strategy=mirrored only; 0 = no split).",
    lower_bound=0,
)
flags.DEFINE_integer(
    "cluster_timeout",
    300,
    "--strategy=multi_worker: seconds to wait for the other workers of TF_CONFIG to start "
    "(then an error naming them).",
    lower_bound=1,
)
flags.DEFINE_enum(
    "mixed_precision", "auto", ["auto", "float32", "bfloat16", "float16"],
    "Training compute precision; auto = bfloat16 where the CPU/GPU has it natively, float16 on "
    "older GPUs, else float32. Measurements are float32 whatever this is.",
)  # fmt: skip
flags.DEFINE_bool(
    "deterministic", True, "TensorFlow op determinism: the same seed gives the same numbers."
)
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA for the train step.")
flags.DEFINE_string("output_dir", None, "Run directory; default runs/<model>_<downsample>_s<seed>.")
flags.DEFINE_integer(
    "verbose", 1, "1: progress bars, 2: one line per epoch, 0: silent.", lower_bound=0,
    upper_bound=2,
)  # fmt: skip


def config_from_flags():
    """The `train_run` settings the flags give."""
    names = [
        "dataset", "data_dir", "train_size", "random_labels", "augment", "transform",
        "synthetic_classes",
        "synthetic_displacement", "synthetic_samples", "synthetic_grid_size",
        "synthetic_image_size", "synthetic_channels", "synthetic_prototypes", "model",
        "downsample", "head", "pool_size", "strides", "blur_size", "batch_norm_momentum", "epochs",
        "batch_size",
        "optimizer", "learning_rate", "momentum", "schedule", "weight_decay", "seed", "probe_size",
        "measures", "deformation", "magnitude", "grid_size", "cutoff", "measure_every",
        "validate_every", "smooth_init_sigma", "strategy", "mixed_precision", "deterministic",
    ]  # fmt: skip
    config = {name: FLAGS[name].value for name in names}
    config["augment"] = [spec.replace(";", ",") for spec in FLAGS.augment]
    config["jit_compile"] = {"auto": "auto", "true": True, "false": False}[FLAGS.jit_compile]
    if FLAGS.blocks:
        try:
            config["blocks"] = [
                [int(width) for width in block.split(",")] for block in FLAGS.blocks.split(";")
            ]
        except ValueError:
            raise app.UsageError(
                f"--blocks must look like '32,32;64,64'; received {FLAGS.blocks!r}."
            ) from None
    return config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.cpu_devices and FLAGS.strategy != "mirrored":
        raise app.UsageError(
            f"--cpu_devices={FLAGS.cpu_devices} splits the CPU into devices for "
            f"--strategy=mirrored only; with --strategy={FLAGS.strategy} it would change nothing."
        )
    if FLAGS.cpu_devices:
        from deformstab_tf.training import cpu_devices

        cpu_devices(FLAGS.cpu_devices)
    from deformstab_tf.training import train_run

    config = config_from_flags()
    output_dir = FLAGS.output_dir or os.path.join(
        "runs", f"{config['model']}_{config['downsample']}_s{config['seed']}"
    )
    summary = train_run(
        output_dir,
        verbose=FLAGS.verbose,
        download=FLAGS.download,
        cluster_timeout=FLAGS.cluster_timeout,
        **config,
    )
    print(
        f"{output_dir}: test accuracy {summary['test_accuracy']:.3f}"
        + "".join(f", {m} {v:.4g}" for m, v in summary.get("stability", {}).items())
    )
    print(f"Watch it: tensorboard --logdir {os.path.dirname(os.path.abspath(output_dir))}")


def run():
    """Console script `deformstab-train`."""
    run_main(main)


if __name__ == "__main__":
    run()
