r"""A stability report for any saved Keras model on any data source.

    python -m trainers.measure --model=runs/cifar_vgg_max_s0/model.keras --dataset=synthetic
    python -m trainers.measure --model=my_model.keras --dataset=folder:../shared/data/cifar10 \
        --deformation=diffeo --magnitude=1 --measures=sensitivity,relative_stability \
        --sweep=0.5,1,2,4 --num_images=500 --output_dir=reports/my_model
    python -m trainers.measure --model=mobilenet_v2.keras --dataset=synthetic --image_size=224

Prints the table and writes report.json, report.csv, report.md and PNG figures to --output_dir.
"""

import os

from absl import app, flags

from ._cli import run_main

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
    "Any of sensitivity, relative_stability, shift_consistency, smoothness.",
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
flags.DEFINE_string("output_dir", None, "Where the report goes; default reports/<model name>.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        sweep = [float(m) for m in FLAGS.sweep]
    except ValueError:
        raise app.UsageError(f"--sweep must be numbers; received {FLAGS.sweep}.") from None
    if not FLAGS.measures:
        raise app.UsageError("--measures is empty: name at least one measure.")
    image_size = _image_size(FLAGS.image_size)
    from deformstab_tf.measures.plan import deformation_measures

    sweep_measures = [m for m in FLAGS.measures if m in deformation_measures()]
    if sweep and not sweep_measures:
        raise app.UsageError(
            "--sweep measures sensitivity and relative stability; --measures has neither."
        )
    if not os.path.isfile(FLAGS.model):
        raise ValueError(f"--model={FLAGS.model!r} is not a file (a saved .keras model).")
    import keras

    import deformstab_tf as ds
    from deformstab_tf import data, reports
    from deformstab_tf._validation import check_non_negative, check_output_directory
    from deformstab_tf.measures import SELECTIONS
    from deformstab_tf.training import read_config, run_dataset_arguments

    # Every setting is checked before the slow part and before anything is written: the
    # output directory, the deformation at each magnitude, the measures, the data source, the
    # model and its image size, the number of probe images.
    name = os.path.splitext(os.path.basename(FLAGS.model))[0]
    if name == "model":  # runs/<run>/model.keras: name the report after the run
        name = os.path.basename(os.path.dirname(os.path.abspath(FLAGS.model)))
    output_dir = FLAGS.output_dir or os.path.join("reports", name)
    check_output_directory("--output_dir", output_dir)
    if FLAGS.deformation not in ds.DEFORMATION_LAYERS:
        raise ValueError(
            f"Unknown --deformation={FLAGS.deformation!r}; valid: {sorted(ds.DEFORMATION_LAYERS)}."
        )
    check_non_negative("--magnitude", FLAGS.magnitude)
    for magnitude in sweep:
        check_non_negative("--sweep", magnitude)
    options = {"grid_size": FLAGS.grid_size} if FLAGS.deformation == "tps" else {}
    if FLAGS.deformation == "diffeo":
        options["cutoff"] = FLAGS.cutoff
    deformation = ds.deformation_layer(
        FLAGS.deformation, FLAGS.magnitude, seed=FLAGS.seed, **options
    )
    for measure in FLAGS.measures:
        if measure not in reports.REPORT_MEASURES:
            raise ValueError(
                f"Unknown measure in --measures: {measure!r}; valid: {reports.REPORT_MEASURES}."
            )
    layers = FLAGS.layers or None
    if layers and len(layers) == 1 and layers[0] in SELECTIONS:
        layers = layers[0]  # a named selection, not a layer name
    elif layers and set(layers) & set(SELECTIONS):
        raise app.UsageError(
            f"--layers takes layer names or one named selection alone; received "
            f"{','.join(layers)!r}."
        )
    run_config = None
    if FLAGS.dataset is None:
        run_config = read_config(os.path.dirname(os.path.abspath(FLAGS.model)))
    if run_config is not None:
        # The model's own run: its data, synthetic settings and seed (prototypes, splits).
        source = run_dataset_arguments(run_config)
        if FLAGS.data_dir is not None:
            source["data_dir"] = FLAGS.data_dir
    else:
        source = {"source": FLAGS.dataset or "synthetic", "data_dir": FLAGS.data_dir}
    try:
        train, test, info = data.load_dataset(
            batch_size=max(FLAGS.batch_size, 256), download=FLAGS.download, **source
        )
    except ValueError as error:  # the flag is --dataset, load_dataset's argument `source`
        raise ValueError(str(error).replace("`source`", "--dataset")) from None
    split_size = info.test_size if FLAGS.split == "test" else info.train_size
    if FLAGS.num_images > split_size:
        raise ValueError(
            f"--num_images={FLAGS.num_images} exceeds the {split_size} images of the "
            f"{FLAGS.split} split of {info.name!r}."
        )
    deformation.check_image_size(*(image_size or info.image_shape[:2]))
    model = keras.models.load_model(FLAGS.model)
    shape = tuple(info.image_shape)
    if image_size is not None:
        shape = (*image_size, *shape[2:])
    expected = _expected_image_shape(model)
    if expected is not None and (
        len(expected) != len(shape)
        or any(e is not None and e != r for e, r in zip(expected, shape, strict=True))
    ):
        hint = ""
        if len(expected) == len(shape) and expected[2:] == shape[2:] and None not in expected[:2]:
            hint = (
                f"; pass --image_size={expected[0]}" + (
                    "" if expected[0] == expected[1] else f",{expected[1]}"
                ) + f" to resize them ({FLAGS.resize_method})"
            )  # fmt: skip
        raise ValueError(
            f"The model expects images of shape {expected}; --dataset={source['source']!r} "
            f"gives {shape}{hint}."
        )
    images = data.take_images(test if FLAGS.split == "test" else train, FLAGS.num_images)
    resized = ""
    if image_size is not None and tuple(images.shape[1:3]) != image_size:
        resized = (
            f", resized from {images.shape[1]}x{images.shape[2]} to {image_size[0]}x"
            f"{image_size[1]} ({FLAGS.resize_method}) before deforming"
        )
        images = data.resize_images(images, image_size, FLAGS.resize_method).numpy()
    results = reports.stability_report(
        model, images, deformation, FLAGS.measures, layers, FLAGS.batch_size, FLAGS.seed
    )
    swept = None
    if sweep:
        swept = reports.magnitude_sweep(
            model, images, FLAGS.deformation, sweep, sweep_measures, layers,
            FLAGS.batch_size, FLAGS.seed, **options,
        )  # fmt: skip
    for result in results.values():
        print(result, end="\n\n")
    context = {
        "model": FLAGS.model,
        "data": f"{source['source']} ({FLAGS.split} split, {len(images)} images, "
        f"seed {source.get('seed', 0)}{resized})",
        "deformation": f"{FLAGS.deformation}, magnitude {FLAGS.magnitude:g}, {options}",
        "seed": FLAGS.seed,
    }
    reports.write_report(output_dir, results, swept, title=f"Stability of {name}", context=context)
    print(f"Report: {os.path.join(output_dir, 'report.md')}")


def _image_size(text):
    """`--image_size` as `(height, width)`, or None."""
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
    return size * 2 if len(size) == 1 else size


def _expected_image_shape(model):
    """`(H, W, C)` of the model's image input (the first of rank 4), or None (no graph)."""
    from deformstab_tf.measures.features import image_input_index

    inputs = getattr(model, "inputs", None)
    if not inputs:
        return None
    return tuple(inputs[image_input_index(model)].shape[1:])


def run():
    """Console script `deformstab-measure`."""
    run_main(main)


if __name__ == "__main__":
    run()
