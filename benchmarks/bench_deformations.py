"""Throughput of the deformation layers, side by side with the alternatives, in one process.

For each image size (CIFAR-like 256x32x32x3 with a 3x3 TPS grid, ImageNet-like 32x224x224x3 with
5x5) and each mode (``tf.function``, ``tf.function(jit_compile=True)``) it times, alternating the
contenders round by round:

- ``resample floor``: `warp` with a precomputed field (what any warp must at least pay);
- ``RandomThinPlateSpline``, ``RandomAffine``, ``RandomDiffeomorphism`` (this package);
- ``per-sample TPS solve``: the (K+3)x(K+3) system solved for every image and evaluated at every
  pixel, then the same resample (what ``tfa.image.sparse_image_warp`` did on every call);
- Keras's ``RandomRotation`` and ``RandomElasticTransform``.

Prints a table (median ms per batch and images/s) and writes JSON. Usage::

    python benchmarks/bench_deformations.py [--repeats 7] [--out benchmarks/results/...json]
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from deformstab_tf.deformations import (  # noqa: E402
    control_grid,
    tps_displacement,
    tps_displacement_from_points,
    warp,
)
from deformstab_tf.layers import (  # noqa: E402
    RandomAffine,
    RandomDiffeomorphism,
    RandomThinPlateSpline,
)

SETTINGS = {
    "256x32x32x3": dict(shape=(256, 32, 32, 3), grid_size=3, max_displacement=2.0),
    "32x224x224x3": dict(shape=(32, 224, 224, 3), grid_size=5, max_displacement=10.0),
}


def contenders(shape, grid_size, max_displacement):
    batch, height, width, _ = shape
    k = grid_size * grid_size
    field = tps_displacement(
        tf.random.uniform((batch, k, 2), -max_displacement, max_displacement),
        height,
        width,
        grid_size,
    )
    points = tf.constant(control_grid(height, width, grid_size), tf.float32)
    tps = RandomThinPlateSpline(grid_size, max_displacement, seed=0)
    affine = RandomAffine(rotation=10, scale=0.1, shear=0.1, translation=0.1, seed=0)
    diffeo = RandomDiffeomorphism(cutoff=3, displacement=1.0, seed=0)
    rotation = keras.layers.RandomRotation(10 / 360, seed=0)
    elastic = keras.layers.RandomElasticTransform(factor=1.0, scale=0.1, seed=0)

    def per_sample_solve(x, _):
        d = tf.random.uniform((batch, k, 2), -max_displacement, max_displacement)
        u = tps_displacement_from_points(points, d, height, width)
        return warp(x, u)

    # Every contender takes (images, field); the field is an input, not a constant, so that XLA
    # cannot fold the floor's index arithmetic away at compile time.
    return field, {
        "resample floor": lambda x, u: warp(x, u),
        "RandomThinPlateSpline": lambda x, _: tps(x, training=True),
        "per-sample TPS solve": per_sample_solve,
        "RandomAffine": lambda x, _: affine(x, training=True),
        "keras RandomRotation": lambda x, _: rotation(x, training=True),
        "RandomDiffeomorphism": lambda x, _: diffeo(x, training=True),
        "keras RandomElasticTransform": lambda x, _: elastic(x, training=True),
        # The field alone, without the resample both share: where the fixed grid saves.
        "field only: fixed-grid TPS": lambda x, _: tps.get_random_transformation(x)[
            "displacement"
        ],
        "field only: per-sample solve": lambda x, _: tps_displacement_from_points(
            points,
            tf.random.uniform((batch, k, 2), -max_displacement, max_displacement),
            height,
            width,
        ),
    }


def compile_all(functions, images, field, jit):
    compiled = {}
    for name, fn in functions.items():
        graph = tf.function(fn, jit_compile=jit)
        try:
            graph(images, field).numpy()
            graph(images, field).numpy()
            compiled[name] = graph
        except Exception as error:  # noqa: BLE001 - a contender that cannot run is reported
            compiled[name] = f"fails: {type(error).__name__}"
    return compiled


def measure(compiled, images, field, repeats):
    times = {name: [] for name, fn in compiled.items() if callable(fn)}
    for _ in range(repeats):  # alternate so machine noise hits every contender alike
        for name in times:
            start = time.perf_counter()
            compiled[name](images, field).numpy()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "bench_deformations.json")
    )
    args = parser.parse_args()

    rows = []
    for setting, params in SETTINGS.items():
        images = tf.random.uniform(params["shape"])
        field, functions = contenders(**params)
        for mode, jit in (("graph", False), ("xla", True)):
            compiled = compile_all(functions, images, field, jit)
            ms = measure(compiled, images, field, args.repeats)
            floor = ms["resample floor"]
            for name, fn in compiled.items():
                row = {"size": setting, "mode": mode, "contender": name}
                if name in ms:
                    row.update(
                        ms_per_batch=round(ms[name], 2),
                        images_per_s=round(params["shape"][0] / ms[name] * 1e3),
                        vs_floor=round(ms[name] / floor, 2),
                    )
                else:
                    row["error"] = fn
                rows.append(row)
                print(
                    f"{setting:>13} {mode:>5} {name:<30} "
                    + (
                        f"{row['ms_per_batch']:9.2f} ms {row['images_per_s']:8d} img/s "
                        f"{row['vs_floor']:6.2f}x floor"
                        if "ms_per_batch" in row
                        else row["error"]
                    ),
                    flush=True,
                )

    def ratio(size, mode, a, b):
        found = {r["contender"]: r for r in rows if r["size"] == size and r["mode"] == mode}
        if "ms_per_batch" in found.get(a, {}) and "ms_per_batch" in found.get(b, {}):
            return round(found[a]["ms_per_batch"] / found[b]["ms_per_batch"], 2)
        return None

    targets = {}
    for size in SETTINGS:
        for mode in ("graph", "xla"):
            targets[f"{size}/{mode}"] = {
                "tps_vs_floor (target <= 1.3)": ratio(
                    size, mode, "RandomThinPlateSpline", "resample floor"
                ),
                "per_sample_solve_vs_tps (target >= 5 under XLA)": ratio(
                    size, mode, "per-sample TPS solve", "RandomThinPlateSpline"
                ),
                "per_sample_solve_vs_tps_field_only": ratio(
                    size, mode, "field only: per-sample solve", "field only: fixed-grid TPS"
                ),
                "affine_vs_keras_rotation (target <= 1)": ratio(
                    size, mode, "RandomAffine", "keras RandomRotation"
                ),
            }
    print("\nTargets:")
    for key, values in targets.items():
        print(f"  {key}: {values}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": machine_info(),
                "repeats": args.repeats,
                "rows": rows,
                "targets": targets,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    tf.random.set_seed(0)
    main()
