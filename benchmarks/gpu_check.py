"""What the package does on this machine's accelerator, in one table: run it where users train.

On whatever Keras backend (``KERAS_BACKEND``) and device it finds (`training.accelerator`), it
measures, side by side in one process:

- **layers**: images/s of `RandomThinPlateSpline`, `RandomAffine` and `RandomDiffeomorphism`
  called on a batch on the device, beside kornia's `RandomThinPlateSpline`, `RandomAffine` and
  `RandomElasticTransform` on the same batch (PyTorch backend, when kornia is installed);
- **fit**: steps/s of `cifar_vgg` (batch 128, the precision `"auto"` picks there) without and
  with `StabilityCallback` (sensitivity, relative stability, shift consistency, smoothness);
- **measurement**: `normalized_sensitivity` and `relative_stability` of the same weights and
  images on the accelerator and on the CPU (``keras.device("cpu:0")``), their largest relative
  difference (the measures turn TensorFloat-32 off: ~1e-6 is expected);
- **main job**: the wall time of ``python -m deformstab_tf.trainers.train`` (the README's main
  job) in a fresh process on the same backend.

Prints the table and writes JSON (``--out``). Usage::

    KERAS_BACKEND=jax python benchmarks/gpu_check.py [--out docs/gpu_check/jax.json]
    KERAS_BACKEND=torch python benchmarks/gpu_check.py --batch 256 --image_size 224

Without an accelerator it runs on the CPU with smaller defaults (a check that the script works).
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
from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from deformstab_tf import training  # noqa: E402
from deformstab_tf.callbacks import StabilityCallback  # noqa: E402
from deformstab_tf.deformations import deformation_layer  # noqa: E402
from deformstab_tf.layers import (  # noqa: E402
    RandomAffine,
    RandomDiffeomorphism,
    RandomThinPlateSpline,
)
from deformstab_tf.measures import normalized_sensitivity, relative_stability  # noqa: E402
from deformstab_tf.measures.plan import NAMES as MEASURES  # noqa: E402  (every measure)
from deformstab_tf.models import cifar_vgg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def synchronize(x):
    """Waits for `x` to be computed (a scalar reduction read on the host, on every backend)."""
    return float(keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.cast(x, "float32"))))


def per_second(function, count, repeats):
    """`count` / the median wall time of `function()`, after one untimed warm-up call."""
    synchronize(function())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        synchronize(function())
        times.append(time.perf_counter() - start)
    return count / float(np.median(times))


def bench_layers(batch, size, repeats):
    """Images/s of our three layers and, on PyTorch with kornia installed, kornia's three."""
    images = keras.ops.convert_to_tensor(
        np.random.default_rng(0).random((batch, size, size, 3), dtype=np.float32)
    )
    grid, displacement = (5, 10.0) if size >= 128 else (3, 2.0)
    ours = {
        "TPS": RandomThinPlateSpline(grid, displacement, seed=0),
        "affine": RandomAffine(rotation=10, scale=0.1, shear=0.1, translation=0.1, seed=0),
        "elastic": RandomDiffeomorphism(cutoff=3, displacement=1.0, seed=0),
    }
    rows = {name: {"ours": per_second(lambda layer=layer: layer(images, training=True), batch,
                                      repeats)}
            for name, layer in ours.items()}  # fmt: skip
    if keras.backend.backend() == "torch":
        try:
            import kornia.augmentation as K
        except ImportError:
            return rows
        nchw = images.permute(0, 3, 1, 2).contiguous()
        theirs = {
            "TPS": K.RandomThinPlateSpline(scale=0.2, p=1.0),
            "affine": K.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1),
                                     shear=10, p=1.0),
            "elastic": K.RandomElasticTransform(p=1.0),
        }  # fmt: skip
        for name, transform in theirs.items():
            transform = transform.to(nchw.device)
            rows[name]["kornia"] = per_second(lambda t=transform: t(nchw), batch, repeats)
    return rows


def bench_fit(steps, repeats):
    """Steps/s of `cifar_vgg` (batch 128, `"auto"` precision) without and with the callback."""
    precision = training.resolve_precision("auto")
    rng = np.random.default_rng(1)
    x = rng.random((128 * steps, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, len(x))
    probe = x[:128]
    result = {"precision": precision}
    for label, callbacks in (("without", []), ("with", None)):
        keras.mixed_precision.set_global_policy(
            "float32" if precision == "float32" else f"mixed_{precision}"
        )
        try:
            model = cifar_vgg("max")
        finally:
            keras.mixed_precision.set_global_policy("float32")
        model.compile(
            keras.optimizers.SGD(0.05, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        if callbacks is None:
            callbacks = [StabilityCallback(probe, deformation_layer("tps", 2.0, seed=0),
                                           measures=MEASURES, seed=0)]  # fmt: skip
        model.fit(x[:128], y[:128], epochs=1, batch_size=128, verbose=0)  # compile
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.fit(x, y, epochs=1, batch_size=128, verbose=0, callbacks=callbacks)
            rates.append(steps / (time.perf_counter() - start))
        result[label] = float(np.median(rates))
    return result


def bench_measurement():
    """The same weights and images measured on the default device and on the CPU."""
    images = np.random.default_rng(2).random((64, 32, 32, 3), dtype=np.float32)
    keras.utils.set_random_seed(0)
    weights = cifar_vgg("max").get_weights()
    values = {}
    for device in ("default", "cpu"):
        scope = keras.device("cpu:0") if device == "cpu" else _null()
        with scope:
            model = cifar_vgg("max")
            model.set_weights(weights)
            s = normalized_sensitivity(model, images, deformation_layer("tps", 2.0, seed=0),
                                       batch_size=32)  # fmt: skip
            r = relative_stability(model, images, deformation_layer("tps", 2.0, seed=0),
                                   batch_size=32, seed=0)  # fmt: skip
        values[device] = np.array([*s.values(), *r.details["D"].values(),
                                   *r.details["G"].values()])  # fmt: skip
    difference = np.abs(values["default"] - values["cpu"]) / np.abs(values["cpu"])
    return {"values": int(difference.size), "max_relative_difference": float(difference.max())}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def bench_main_job():
    """Wall time of the README's main job in a fresh process on this backend."""
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, "-m", "deformstab_tf.trainers.train", f"--output_dir={directory}"],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        summary = Path(directory, "summary.json")
        accuracy = json.loads(summary.read_text())["test_accuracy"] if summary.exists() else None
    if completed.returncode:
        return {"seconds": seconds, "error": completed.stderr.strip().splitlines()[-1]}
    return {"seconds": seconds, "test_accuracy": accuracy}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=None, help="layers: images per batch")
    parser.add_argument("--image_size", type=int, default=None, help="layers: image side")
    parser.add_argument("--steps", type=int, default=None, help="fit: steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: "
                        "layers,fit,measurement,main_job")  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    args = parser.parse_args()
    device = training.accelerator()
    on_accelerator = device is not None
    batch = args.batch or (256 if on_accelerator else 32)
    size = args.image_size or (224 if on_accelerator else 64)
    steps = args.steps or (50 if on_accelerator else 4)
    skip = {part for part in args.skip.split(",") if part}
    result = {
        "backend": keras.backend.backend(),
        "accelerator": None if device is None else [device[0], device[1]],
        "machine": machine_info(),
        "layers_shape": [batch, size, size, 3],
    }
    if "layers" not in skip:
        result["layers_img_per_s"] = bench_layers(batch, size, args.repeats)
    if "fit" not in skip:
        result["fit_steps_per_s"] = bench_fit(steps, max(1, args.repeats // 2))
    if "measurement" not in skip:
        result["measurement_vs_cpu"] = bench_measurement()
    if "main_job" not in skip:
        result["main_job"] = bench_main_job()
    print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def print_table(result):
    where = result["accelerator"] or "CPU"
    print(f"\nbackend {result['backend']}, device {where}, layers on {result['layers_shape']}")
    for name, row in result.get("layers_img_per_s", {}).items():
        kornia = f"{row['kornia']:>12,.0f}" if "kornia" in row else f"{'-':>12}"
        print(f"  {name:<8} ours {row['ours']:>12,.0f} img/s   kornia {kornia} img/s")
    if "fit_steps_per_s" in result:
        fit = result["fit_steps_per_s"]
        print(f"  cifar_vgg fit ({fit['precision']}): {fit['without']:.1f} steps/s without, "
              f"{fit['with']:.1f} with StabilityCallback")  # fmt: skip
    if "measurement_vs_cpu" in result:
        m = result["measurement_vs_cpu"]
        print(f"  measurement vs CPU: max relative difference {m['max_relative_difference']:.1e} "
              f"over {m['values']} values")  # fmt: skip
    if "main_job" in result:
        job = result["main_job"]
        print(f"  main job: {job['seconds']:.0f} s, "
              + (f"test accuracy {job['test_accuracy']}" if "error" not in job
                 else f"failed: {job['error']}"))  # fmt: skip


if __name__ == "__main__":
    main()
