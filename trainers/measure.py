r"""A stability report for any saved Keras model on any data source.

    python -m trainers.measure --model=runs/cifar_vgg_max_s0/model.keras --dataset=synthetic
    python -m trainers.measure --model=my_model.keras --dataset=folder:../shared/data/cifar10 \
        --deformation=diffeo --magnitude=1 --measures=sensitivity,relative_stability \
        --sweep=0.5,1,2,4 --num_images=500 --output_dir=reports/my_model
    python -m trainers.measure --model=mobilenet_v2.keras --dataset=synthetic --image_size=224

Prints the table and writes report.json, report.csv, report.md and PNG figures to --output_dir.
A model holding Python code (a `Lambda` layer) loads only with --trust_model (its code runs as
it loads). See `deformstab_tf.reports.measure_model`, the same in Python.
"""

import os

from absl import app, flags

from deformstab_tf.measures.plan import MEASURES
from deformstab_tf.trainers._cli import run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A saved .keras model.", required=True)
flags.DEFINE_string(
    "dataset",
    None,
    "synthetic, a TFDS name or folder:PATH. Default: the data of the model's run (when --model "
    "is <run>/model.keras beside its config.json, with the run's synthetic settings and seed), "
    "else synthetic.",
)
flags.DEFINE_string("data_dir", None, "TFDS data directory (default ~/tensorflow_datasets).")
flags.DEFINE_bool(
    "download", True,
    "TFDS: download and prepare a dataset missing from --data_dir; --nodownload for offline use.",
)  # fmt: skip
flags.DEFINE_enum("split", "test", ["test", "train"], "Split the probe images come from.")
flags.DEFINE_integer("num_images", 128, "Probe images (at least 2).", lower_bound=2)
flags.DEFINE_string("deformation", "tps", "tps, affine or diffeo.")
flags.DEFINE_float("magnitude", 2.0, "TPS max displacement px, rotation deg, or diffeo delta px.")
flags.DEFINE_integer("grid_size", 3, "TPS control grid size.")
flags.DEFINE_integer("cutoff", 3, "Diffeomorphism cut-off c.")
flags.DEFINE_list(
    "measures",
    ["sensitivity", "relative_stability", "smoothness"],
    f"Any of {', '.join(MEASURES)}.",
)
flags.DEFINE_list("sweep", [], "Magnitudes of a sweep (sensitivity, and R if measured).")
flags.DEFINE_list(
    "layers",
    [],
    "Probe points: layer names (paths such as resnet50/conv2_block1_out inside nested models) "
    "or one named selection: units (the default), activations, blocks, all.",
)
flags.DEFINE_string(
    "image_size", None,
    "Resize the probe images to N (N x N) or H,W pixels before deforming them, for a model whose "
    "input size differs from the data (e.g. 224 for Keras Applications on 32x32 images); the "
    "deformation magnitude is then in resized pixels. Default: no resizing.",
)
flags.DEFINE_enum(
    "resize_method", "bilinear", ["bilinear", "nearest", "bicubic", "area", "lanczos3"],
    "tf.image.resize method of --image_size (named in the report).",
)
flags.DEFINE_integer("batch_size", 64, "Images per forward pass.", lower_bound=1)
flags.DEFINE_integer(
    "seed", 0, "Seed of the deformations and noise.", lower_bound=0, upper_bound=2**32 - 1
)
flags.DEFINE_integer(
    "max_shift", 4,
    "Largest shift per axis (px) of shift_consistency and translation_map.", lower_bound=0,
)  # fmt: skip
flags.DEFINE_enum(
    "fill_mode", "wrap", ["wrap", "constant", "nearest", "reflect"],
    "What the shifts bring in at the border (shift_consistency, translation_map).",
)  # fmt: skip
flags.DEFINE_list(
    "transform", None,
    "A derived data set the probe images come from: resample:2, noise:0.1 (see "
    "deformstab_tf.data.transform_images). Default: the run's own with its data, else none.",
)  # fmt: skip
flags.DEFINE_string("output_dir", None, "Where the report goes; default reports/<model name>.")
flags.DEFINE_bool(
    "trust_model", False,
    "Load --model with Keras's safe mode off. A model holding Python code (a Lambda layer) is "
    "refused without it, since its code runs as the model loads: only for files you trust.",
)  # fmt: skip


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        sweep = [float(m) for m in FLAGS.sweep]
    except ValueError:
        raise app.UsageError(f"--sweep must be numbers; received {FLAGS.sweep}.") from None
    image_size = _image_size(FLAGS.image_size)
    from deformstab_tf import reports

    output_dir = FLAGS.output_dir or os.path.join("reports", reports.report_name(FLAGS.model))
    report = reports.measure_model(
        FLAGS.model,
        **{name: FLAGS[name].value for name in _SETTINGS},
        sweep=sweep,
        image_size=image_size,
        output_dir=output_dir,
        argument_prefix="--",  # errors name the flags
    )
    for result in report.results.values():
        print(result, end="\n\n")
    print(f"Report: {os.path.join(output_dir, 'report.md')}")


# The flags passed to `measure_model` as they are (the others are parsed first).
_SETTINGS = (
    "dataset", "data_dir", "download", "split", "num_images", "deformation", "magnitude",
    "grid_size", "cutoff", "measures", "layers", "resize_method", "batch_size", "seed",
    "max_shift", "fill_mode", "transform", "trust_model",
)  # fmt: skip


def _image_size(text):
    """`--image_size` as N or `(height, width)`, or None."""
    if text is None:
        return None
    try:
        size = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or min(size) < 1:
        raise app.UsageError(
            f"--image_size must be N or H,W (positive integers); received {text!r}."
        )
    return size[0] if len(size) == 1 else size


def run():
    """Console script `deformstab-measure`."""
    run_main(main)


if __name__ == "__main__":
    run()
