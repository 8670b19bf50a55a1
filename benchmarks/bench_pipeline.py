"""Training steps per second of `cifar_vgg` with and without augmentation and the folder reader.

Side by side in one process, alternating configurations: in-memory arrays without augmentation
(the reference), TPS augmentation in the tf.data pipeline, TPS inside the model, the standard
flip + translate recipe in the pipeline, and the `folder:` reader (CIFAR-10 JPEGs, decoded once
and cached) with the standard recipe — the CIFAR-10 training configuration. Also the one-time
decode of the image folder, cold and from the cache.

Training precision (`--precision`): float32 vs bfloat16 (`mixed_bfloat16`) steps per second of
`cifar_vgg` and `resnet18` at batch 128, with the builders' fused BatchNormalization and with
Keras's own (the same networks, cloned), and with TensorFlow's op determinism, side by side in
one process. The main job (`--main_job`): `python -m trainers.train` end to end, as README gives
it, against the same command with `--mixed_precision=float32`, alternating.

    python benchmarks/bench_pipeline.py [--steps 40] [--rounds 3] [--folder ../shared/data/cifar10]
    python benchmarks/bench_pipeline.py --precision
    python benchmarks/bench_pipeline.py --main_job [--rounds 3]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from deformstab_tf import data  # noqa: E402
from deformstab_tf.deformations import RandomThinPlateSpline  # noqa: E402
from deformstab_tf.models import BatchNormalization, cifar_vgg, resnet18  # noqa: E402
from deformstab_tf.training import op_determinism  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
BATCH = 128


def compiled(model):
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def in_memory(x, y, augment=()):
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).repeat()
    dataset = dataset.batch(BATCH).map(
        lambda a, b: (tf.cast(a, tf.float32) / 255.0, b), num_parallel_calls=tf.data.AUTOTUNE
    )
    layers = data.augmentation_layers(augment, seed=0)
    if layers:

        def apply(images, labels):
            for layer in layers:
                images = layer(images, training=True)
            return images, labels

        dataset = dataset.map(apply)
    return dataset.prefetch(tf.data.AUTOTUNE)


def steps_per_second(model, dataset, steps):
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps / (time.perf_counter() - start)


def with_keras_batch_norm(model):
    """The same network with Keras's own `BatchNormalization` (unfused ops) in place of the
    builders' fused one: the alternative the builders' layer is measured against."""

    def clone(layer):
        cls = keras.layers.BatchNormalization if type(layer) is BatchNormalization else type(layer)
        return cls.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=clone)


def precision_table(steps, rounds):
    """Steps/s of cifar_vgg and resnet18 (batch 128, SGD) in float32 and bfloat16, with the
    builders' fused BatchNormalization and with Keras's, and with op determinism on (fused
    only); alternating rounds, medians."""
    x = np.random.default_rng(0).integers(0, 255, (4096, 32, 32, 3), dtype=np.uint8)
    y = np.random.default_rng(1).integers(0, 10, 4096).astype(np.int32)
    dataset = in_memory(x, y)
    configurations = {}
    for name, build in (("cifar_vgg", lambda: cifar_vgg("max")), ("resnet18", resnet18)):
        for precision, policy in (("float32", "float32"), ("bfloat16", "mixed_bfloat16")):
            keras.mixed_precision.set_global_policy(policy)
            fused = compiled(build())
            configurations[(name, precision, "fused", False)] = fused
            configurations[(name, precision, "fused", True)] = fused
            configurations[(name, precision, "keras", False)] = compiled(
                with_keras_batch_norm(fused)
            )
            keras.mixed_precision.set_global_policy("float32")
    for (_, _, _, deterministic), model in configurations.items():  # warm-up
        with op_determinism(deterministic):
            steps_per_second(model, dataset, 3)
    rates = {key: [] for key in configurations}
    for _ in range(rounds):
        for key, model in configurations.items():
            model_steps = steps if key[0] == "cifar_vgg" else max(steps // 8, 3)
            with op_determinism(key[3]):
                rates[key].append(steps_per_second(model, dataset, model_steps))
    rows = []
    for (name, precision, batch_norm, deterministic), values in rates.items():
        rate = float(np.median(values))
        rows.append(
            {
                "model": name,
                "precision": precision,
                "batch_norm": batch_norm,
                "deterministic": deterministic,
                "steps_per_s": rate,
                "speedup_vs_float32": rate
                / float(np.median(rates[(name, "float32", batch_norm, deterministic)])),
                "speedup_vs_keras_batch_norm": rate
                / float(np.median(rates[(name, precision, "keras", False)])),
                "determinism_cost": 1
                - rate / float(np.median(rates[(name, precision, batch_norm, False)])),
            }
        )
    print(f"training steps/s at batch 128 (SGD), median of {rounds} alternating rounds")
    header = (
        "model",
        "precision",
        "BN",
        "determ.",
        "steps/s",
        "vs f32",
        "vs Keras BN",
        "det. cost",
    )
    print("{:<10} {:<9} {:<6} {:<8} {:>8} {:>7} {:>11} {:>9}".format(*header))
    for r in rows:
        print(
            f"{r['model']:<10} {r['precision']:<9} {r['batch_norm']:<6} "
            f"{str(r['deterministic']):<8} {r['steps_per_s']:>8.2f} "
            f"{r['speedup_vs_float32']:>6.2f}x {r['speedup_vs_keras_batch_norm']:>10.2f}x "
            f"{100 * r['determinism_cost']:>8.1f}%"
        )
    return rows


def main_job_times(rounds):
    """Wall seconds of README's main job (`python -m trainers.train`, precision auto) and of the
    same command with `--mixed_precision=float32`, alternating, each in a fresh run directory."""
    times = {"auto": [], "float32": []}
    for _ in range(rounds):
        for precision in times:
            with tempfile.TemporaryDirectory() as directory:
                command = [sys.executable, "-m", "trainers.train", f"--output_dir={directory}/run"]
                if precision == "float32":
                    command.append("--mixed_precision=float32")
                start = time.perf_counter()
                subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
                times[precision].append(time.perf_counter() - start)
    result = {k: float(np.median(v)) for k, v in times.items()}
    result["seconds_per_round"] = times
    result["speedup"] = result["float32"] / result["auto"]
    print(
        f"main job (python -m trainers.train): {result['auto']:.0f} s with the default "
        f"precision (auto), {result['float32']:.0f} s with --mixed_precision=float32: "
        f"{result['speedup']:.2f}x"
    )
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--folder", default=str(DEFAULT_FOLDER))
    parser.add_argument("--precision", action="store_true", help="only the precision table")
    parser.add_argument("--main_job", action="store_true", help="only the main job, end to end")
    parser.add_argument("--out", default=None, help="JSON path (default under results/)")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    results = Path(__file__).parent / "results"
    if args.main_job:
        report = {"machine": machine_info(), "rounds": args.rounds}
        report.update(main_job_times(args.rounds))
        out = Path(args.out or results / "bench_main_job.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        print(f"wrote {out}")
        return
    if args.precision:
        report = {
            "machine": machine_info(),
            "steps": args.steps,
            "rounds": args.rounds,
            "rows": precision_table(args.steps, args.rounds),
        }
        out = Path(args.out or results / "bench_precision.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        print(f"wrote {out}")
        return
    args.out = args.out or str(results / "bench_pipeline.json")

    folder = args.folder
    if not os.path.isdir(folder):  # a generated stand-in tree
        folder = tempfile.mkdtemp(prefix="bench_folder_")
        rng = np.random.default_rng(0)
        for split, count in (("train", 2000), ("test", 200)):
            for label in range(10):
                os.makedirs(os.path.join(folder, split, f"c{label}"))
                for i in range(count // 10):
                    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                    encoded = tf.io.encode_jpeg(image).numpy()
                    Path(folder, split, f"c{label}", f"{i}.jpg").write_bytes(encoded)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DEFORMSTAB_CACHE"] = cache
        start = time.perf_counter()
        data.load_dataset(f"folder:{folder}", batch_size=BATCH)
        decode_cold = time.perf_counter() - start
        start = time.perf_counter()
        data.load_dataset(f"folder:{folder}", batch_size=BATCH)
        decode_cached = time.perf_counter() - start
        folder_train, _, info = data.load_dataset(
            f"folder:{folder}", batch_size=BATCH, train_size=10000, augment=["standard"]
        )
    x = np.random.default_rng(0).integers(0, 255, (10000, 32, 32, 3), dtype=np.uint8)
    y = np.random.default_rng(1).integers(0, 10, 10000).astype(np.int32)

    plain = compiled(cifar_vgg("max"))
    inputs = keras.Input((32, 32, 3))
    tps_model = compiled(
        keras.Model(inputs, cifar_vgg("max")(RandomThinPlateSpline(3, 2.0, seed=0)(inputs)))
    )
    configurations = {
        "in-memory arrays, no augmentation": (plain, in_memory(x, y)),
        "TPS in the pipeline": (plain, in_memory(x, y, ["tps:grid_size=3,max_displacement=2"])),
        "TPS inside the model": (tps_model, in_memory(x, y)),
        "flip + translate:4 in the pipeline": (plain, in_memory(x, y, ["standard"])),
        "folder: reader + flip + translate:4": (plain, folder_train.repeat()),
    }
    for model, dataset in configurations.values():  # warm-up: trace, compile, fill buffers
        steps_per_second(model, dataset, 5)
    rates = {name: [] for name in configurations}
    for _ in range(args.rounds):
        for name, (model, dataset) in configurations.items():
            rates[name].append(steps_per_second(model, dataset, args.steps))
    reference = float(np.median(rates["in-memory arrays, no augmentation"]))
    rows = []
    for name, values in rates.items():
        rate = float(np.median(values))
        rows.append(
            {
                "configuration": name,
                "steps_per_s": rate,
                "ms_per_step": 1000 / rate,
                "overhead_vs_plain": 1 - rate / reference,
            }
        )
    report = {
        "machine": machine_info(),
        "model": "cifar_vgg('max'), SGD, batch 128, 32x32x3",
        "steps": args.steps,
        "rounds": args.rounds,
        "folder": folder,
        "folder_images": info.train_size,
        "folder_decode_s": {"cold": decode_cold, "cached": decode_cached},
        "rows": rows,
    }
    print(f"{report['model']}; median of {args.rounds} alternating rounds of {args.steps} steps")
    print(f"{'configuration':<40} {'steps/s':>8} {'ms/step':>8} {'overhead':>9}")
    for row in rows:
        print(
            f"{row['configuration']:<40} {row['steps_per_s']:>8.2f} {row['ms_per_step']:>8.0f} "
            f"{100 * row['overhead_vs_plain']:>8.1f}%"
        )
    print(
        f"folder decode ({folder}): {decode_cold:.1f} s cold, {decode_cached:.1f} s from the cache"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
