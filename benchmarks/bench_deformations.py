"""Throughput of the deformation layers, side by side with the alternatives, on each backend.

For each image size (CIFAR-like 256x32x32x3 with a 3x3 TPS grid, ImageNet-like 32x224x224x3 with
5x5) and each mode — on TensorFlow ``tf.function`` (``graph``) and ``tf.function(jit_compile=True)``
(``xla``), on JAX ``jax.jit`` (``jax``), on PyTorch eager under ``torch.no_grad()`` (``torch``) — it
times, alternating the contenders round by round:

- ``resample floor``: `warp` with a precomputed field (what any warp must at least pay);
- ``RandomThinPlateSpline``, ``RandomAffine``, ``RandomDiffeomorphism`` (this package);
- ``per-sample TPS solve``: the (K+3)x(K+3) system solved for every image and evaluated at every
  pixel, then the same resample (what ``tfa.image.sparse_image_warp`` did on every call);
- Keras's ``RandomRotation`` and ``RandomElasticTransform``;
- on PyTorch, when kornia is installed (the ``bench`` extra), kornia's ``RandomThinPlateSpline``,
  ``RandomAffine`` and ``RandomElasticTransform`` (``p=1``, on channels-first images, kornia's
  layout, made once outside the timing; displacement ranges matched to ours in normalised units,
  the elastic one at kornia's defaults). They resample with ``torch.nn.functional.grid_sample``,
  as our resampler does on PyTorch for float images.

With ``--compare`` it also times, in one TensorFlow process and alternating round by round, what
users pick instead at batch 64: our layers in a ``tf.data`` map (``Dataset.from_tensors(batch)
.repeat().map(layer)``, one batch per step), albumentations per image (``ThinPlateSpline``,
``ElasticTransform``, ``Affine``; and the bare ``cv2.warpAffine`` it calls) and, in a process of
its own, kornia batched on PyTorch's CPU (channels first; ``--rounds`` alternates the two
processes), each on float32 and on uint8 images (uint8 in, uint8 out: kornia
takes floats, so its uint8 time includes the conversions). Rows ``mode="compare"`` carry wall
images/s and images per CPU second of this process (steadier on a shared host).

Each backend runs in its own process (``KERAS_BACKEND`` is read once, at import); with
``--rounds N`` the backends' processes alternate N times and the table shows the median over
rounds. Under JAX the layers run through ``layer.stateless_call`` inside ``jax.jit``, so their
seed state is threaded through the compiled function as Keras's JAX trainer does.

Prints a table (median ms per batch and images/s) and writes JSON. Usage::

    python benchmarks/bench_deformations.py [--backends tensorflow,jax,torch] [--repeats 7] \
        [--rounds 1] [--sizes 256x32x32x3,32x224x224x3] [--skip "keras ,per-sample"] \
        [--compare] [--out benchmarks/results/bench_deformations.json]

On PyTorch the torch threads follow ``OMP_NUM_THREADS`` (``OMP_NUM_THREADS=1`` gives steadier
figures on a busy machine); ``targets`` then also hold our layers' speed as a multiple of kornia's
and of the gather resampler's.
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

SETTINGS = {
    "256x32x32x3": dict(shape=(256, 32, 32, 3), grid_size=3, max_displacement=2.0),
    "32x224x224x3": dict(shape=(32, 224, 224, 3), grid_size=5, max_displacement=10.0),
}


def contenders(shape, grid_size, max_displacement):
    """``(field, {name: fn(images, field, uniform)})``; `uniform(shape, low, high)` draws the
    random control displacements of the per-sample solve in the backend's own way."""
    import keras

    from deformstab_tf.deformations import (
        control_grid,
        tps_displacement,
        tps_displacement_from_points,
        warp,
    )
    from deformstab_tf.layers import RandomAffine, RandomDiffeomorphism, RandomThinPlateSpline

    batch, height, width, _ = shape
    k = grid_size * grid_size
    rng = np.random.default_rng(0)
    field = tps_displacement(
        rng.uniform(-max_displacement, max_displacement, (batch, k, 2)).astype("float32"),
        height,
        width,
        grid_size,
    )
    points = control_grid(height, width, grid_size).astype("float32")
    tps = RandomThinPlateSpline(grid_size, max_displacement, seed=0)
    affine = RandomAffine(rotation=10, scale=0.1, shear=0.1, translation=0.1, seed=0)
    diffeo = RandomDiffeomorphism(cutoff=3, displacement=1.0, seed=0)
    rotation = keras.layers.RandomRotation(10 / 360, seed=0)
    elastic = keras.layers.RandomElasticTransform(factor=1.0, scale=0.1, seed=0)

    def per_sample_solve(x, _, uniform):
        d = uniform((batch, k, 2), -max_displacement, max_displacement)
        u = tps_displacement_from_points(points, d, height, width)
        return warp(x, u)

    # Every contender takes (images, field); the field is an input, not a constant, so that XLA
    # cannot fold the floor's index arithmetic away at compile time.
    return field, {
        "resample floor": lambda x, u, _: warp(x, u),
        "RandomThinPlateSpline": tps,
        "per-sample TPS solve": per_sample_solve,
        "RandomAffine": affine,
        "keras RandomRotation": rotation,
        "RandomDiffeomorphism": diffeo,
        "keras RandomElasticTransform": elastic,
        # The field alone, without the resample both share: where the fixed grid saves.
        "field only: fixed-grid TPS": lambda x, _, __: tps.get_random_transformation(x)[
            "displacement"
        ],
        "field only: per-sample solve": lambda x, _, uniform: tps_displacement_from_points(
            points,
            uniform((batch, k, 2), -max_displacement, max_displacement),
            height,
            width,
        ),
    }


def compile_tensorflow(functions, images, field, jit):
    """Each contender as a `tf.function` (XLA with `jit`) of ``(images, field)``."""
    import keras
    import tensorflow as tf

    def uniform(shape, low, high):
        return tf.random.uniform(shape, low, high)

    compiled = {}
    for name, fn in functions.items():
        if isinstance(fn, keras.layers.Layer):
            fn = lambda x, _, __, layer=fn: layer(x, training=True)
        graph = tf.function(lambda x, u, fn=fn: fn(x, u, uniform), jit_compile=jit)
        try:
            graph(images, field).numpy()
            graph(images, field).numpy()
            compiled[name] = lambda x, u, graph=graph: graph(x, u).numpy()
        except Exception as error:  # noqa: BLE001 - a contender that cannot run is reported
            compiled[name] = f"fails: {type(error).__name__}"
    return compiled


def compile_jax(functions, images, field):
    """Each contender under `jax.jit`; layers through `stateless_call`, their seed state
    threaded through (as Keras's JAX trainer runs them), random draws from a threaded key."""
    import jax
    import keras

    compiled = {}
    for name, fn in functions.items():
        if isinstance(fn, keras.layers.Layer):
            layer = fn
            if not layer.built:  # stateless_call needs the seed state to exist
                layer.build(tuple(images.shape))

            @jax.jit
            def step(x, u, state, layer=layer):
                out, state = layer.stateless_call([], state, x, training=True)
                return out, state

            state = [v.value for v in layer.non_trainable_variables]
        else:

            @jax.jit
            def step(x, u, key, fn=fn):
                with keras.StatelessScope():  # a layer's seed state must not leak out of jit
                    key, draw = jax.random.split(key)
                    uniform = lambda shape, low, high: jax.random.uniform(
                        draw, shape, "float32", low, high
                    )
                    return fn(x, u, uniform), key

            state = jax.random.PRNGKey(0)
        holder = {"state": state}

        def run(x, u, step=step, holder=holder):
            out, holder["state"] = step(x, u, holder["state"])
            jax.block_until_ready(out)

        try:
            run(images, field)
            run(images, field)
            compiled[name] = run
        except Exception as error:  # noqa: BLE001 - a contender that cannot run is reported
            compiled[name] = f"fails: {type(error).__name__}"
    return compiled


def kornia_contenders(shape, grid_size, max_displacement):
    """kornia's counterparts, ``{name: fn(images_nchw)}`` (empty without kornia)."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return {}
    _, height, width, _ = shape
    # kornia's TPS moves its 5 control points (corners and centre) by up to `scale` in normalised
    # coordinates ([-1, 1] across the image): our max_displacement in those units.
    scale = 2.0 * max_displacement / min(height, width)
    shear = float(np.degrees(np.arctan(0.1)))  # our shear factor 0.1, in degrees
    return {
        "kornia RandomThinPlateSpline": K.RandomThinPlateSpline(scale=scale, p=1.0),
        "kornia RandomAffine": K.RandomAffine(
            degrees=10,
            translate=(0.1, 0.1),
            scale=(0.9, 1.1),
            shear=(-shear, shear, -shear, shear),
            p=1.0,
        ),
        "kornia RandomElasticTransform": K.RandomElasticTransform(p=1.0),
    }


GATHER_PATH = " [gather resample]"  # the same contender on the ops resampler (PyTorch only)


def compile_torch(functions, images, field, extra):
    """Each contender run eagerly under ``torch.no_grad()`` (augmentation needs no autograd
    graph); `extra` are kornia's, called on a channels-first copy of the images. The resample
    floor and our layers run twice: on the PyTorch resampler (``grid_sample``) and, marked
    ``[gather resample]``, on the resampler written in backend ops that PyTorch used before."""
    import contextlib
    import importlib

    import keras
    import torch

    warp_module = importlib.import_module("deformstab_tf.deformations.warp")

    @contextlib.contextmanager
    def gather_path():
        grid_sample_dtype = warp_module._grid_sample_dtype
        warp_module._grid_sample_dtype = lambda *_: None
        try:
            yield
        finally:
            warp_module._grid_sample_dtype = grid_sample_dtype

    def uniform(shape, low, high):
        return torch.empty(shape, device=images.device).uniform_(low, high)

    channels_first = images.permute(0, 3, 1, 2).contiguous()
    ours = ("resample floor", "RandomThinPlateSpline", "RandomAffine", "RandomDiffeomorphism")
    gathered = {name + GATHER_PATH: functions[name] for name in ours if name in functions}
    contenders = {**functions, **gathered, **extra}
    compiled = {}
    for name, fn in contenders.items():
        if name in extra:
            call = lambda x, u, fn=fn: fn(channels_first)
        elif isinstance(fn, keras.layers.Layer):
            call = lambda x, u, layer=fn: layer(x, training=True)
        else:
            call = lambda x, u, fn=fn: fn(x, u, uniform)

        gather = name.endswith(GATHER_PATH)

        def run(x, u, call=call, gather=gather):
            with torch.no_grad(), gather_path() if gather else contextlib.nullcontext():
                out = call(x, u)
            if out.device.type == "cuda":
                torch.cuda.synchronize()

        try:
            run(images, field)
            run(images, field)
            compiled[name] = run
        except Exception as error:  # noqa: BLE001 - a contender that cannot run is reported
            compiled[name] = f"fails: {type(error).__name__}"
    return compiled


def measure(compiled, images, field, repeats):
    times = {name: [] for name, fn in compiled.items() if callable(fn)}
    for _ in range(repeats):  # alternate so machine noise hits every contender alike
        for name in times:
            start = time.perf_counter()
            compiled[name](images, field)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def _kept(contenders, skip, always=()):
    """`contenders` less those whose name contains one of `skip` (but those in `always`)."""
    return {
        name: fn
        for name, fn in contenders.items()
        if name in always or not any(part in name for part in skip)
    }


def run_backend(repeats, sizes=tuple(SETTINGS), skip=()):
    """This process's backend: rows ``{size, mode, contender, ms_per_batch | error}``; contenders
    whose name contains one of `skip` are left out."""
    import keras

    backend = keras.backend.backend()
    rows = []
    for setting in sizes:
        params = SETTINGS[setting]
        images = keras.ops.convert_to_tensor(
            np.random.default_rng(1).random(params["shape"]).astype("float32")
        )
        field, functions = contenders(**params)
        functions = _kept(functions, skip, always=("resample floor",))
        if backend == "tensorflow":
            modes = [("graph", compile_tensorflow(functions, images, field, jit=False))]
            modes.append(("xla", compile_tensorflow(functions, images, field, jit=True)))
        elif backend == "jax":
            modes = [("jax", compile_jax(functions, images, field))]
        elif backend == "torch":
            field = keras.ops.convert_to_tensor(field)
            extra = kornia_contenders(**params)
            extra = _kept(extra, skip)
            modes = [("torch", compile_torch(functions, images, field, extra))]
        else:
            raise SystemExit(f"error: no benchmark mode for backend {backend!r}")
        for mode, compiled in modes:
            ms = measure(compiled, images, field, repeats)
            for name, fn in compiled.items():
                row = {"size": setting, "mode": mode, "contender": name}
                if name in ms:
                    row["ms_per_batch"] = ms[name]
                else:
                    row["error"] = fn
                rows.append(row)
    return rows


COMPARE_SIZES = {"64x32x32x3": (64, 32, 32, 3), "64x224x224x3": (64, 224, 224, 3)}
COMPARE_KINDS = ("TPS", "elastic", "affine")


def comparison_contenders(shape, dtype, group):
    """``{(kind, who): step}`` for one image batch of `shape` and `dtype`: each step warps one
    batch of 64 (ours: one ``tf.data`` element). `group` ``"tensorflow"``: ours,
    albumentations and OpenCV; ``"torch"``: kornia (PyTorch's and TensorFlow's thread pools
    in one process slow each other down)."""
    if group == "torch":
        return _kornia_steps(shape, dtype)
    import tensorflow as tf

    from deformstab_tf.layers import RandomAffine, RandomDiffeomorphism, RandomThinPlateSpline

    batch, height, width, _ = shape
    setting = SETTINGS["256x32x32x3" if height <= 32 else "32x224x224x3"]
    grid, c = setting["grid_size"], setting["max_displacement"]
    rng = np.random.default_rng(1)
    images = rng.random(shape).astype("float32")
    if dtype == "uint8":
        images = np.round(images * 255).astype("uint8")
    ours = {
        "TPS": RandomThinPlateSpline(grid, c, seed=0),
        "elastic": RandomDiffeomorphism(cutoff=3, displacement=1.0, seed=0),
        "affine": RandomAffine(rotation=10, scale=0.1, shear=0.1, translation=0.1, seed=0),
    }
    steps = {}
    # One batch per step, computed when asked for: no prefetch (tf.data injects one by default,
    # which would compute the next batch while the others are timed), no autotuned parallelism.
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    options.experimental_optimization.map_parallelization = False
    for kind, layer in ours.items():
        data = tf.data.Dataset.from_tensors(images).repeat().map(layer)
        steps[(kind, "ours (tf.data)")] = functools.partial(next, iter(data.with_options(options)))
    try:
        import albumentations as A
        import cv2
    except ImportError:
        A = None
    if A is not None:
        shear = float(np.degrees(np.arctan(0.1)))
        reflect = cv2.BORDER_REFLECT  # d c b a | a b c d: our "reflect"
        # albumentations' TPS scale is the control points' displacement spread as a fraction
        # of the image: our largest control displacement, in those units.
        transforms = {
            "TPS": A.ThinPlateSpline(
                scale_range=(c / height, c / height), num_control_points=grid, p=1.0
            ),
            "elastic": A.ElasticTransform(p=1.0),
            "affine": A.Affine(
                rotate=(-10, 10),
                scale=(0.9, 1.1),
                translate_percent=(-0.1, 0.1),
                shear=(-shear, shear),
                border_mode=reflect,
                p=1.0,
            ),
        }
        for kind, transform in transforms.items():
            steps[(kind, "albumentations")] = lambda t=transform: [
                t(image=image)["image"] for image in images
            ]
        matrix = np.float32([[0.98, -0.17, 10.0], [0.17, 0.98, -5.0]])
        steps[("affine", "cv2.warpAffine")] = lambda: [
            cv2.warpAffine(image, matrix, (width, height), borderMode=reflect) for image in images
        ]
    return steps


def _kornia_steps(shape, dtype):
    steps = {}
    height = shape[1]
    setting = SETTINGS["256x32x32x3" if height <= 32 else "32x224x224x3"]
    grid, c = setting["grid_size"], setting["max_displacement"]
    images = np.random.default_rng(1).random(shape).astype("float32")
    if dtype == "uint8":
        images = np.round(images * 255).astype("uint8")
    try:
        import torch

        kornia = kornia_contenders(shape, grid, c)
    except ImportError:
        kornia = {}
    if kornia:
        channels_first = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        names = {
            "TPS": "kornia RandomThinPlateSpline",
            "elastic": "kornia RandomElasticTransform",
            "affine": "kornia RandomAffine",
        }
        for kind, name in names.items():

            def step(augment=kornia[name]):
                with torch.no_grad():
                    if dtype == "uint8":  # kornia takes floats: uint8 in, uint8 out
                        out = augment(channels_first.float() / 255.0)
                        return (out * 255.0).round_().clamp_(0, 255).to(torch.uint8)
                    return augment(channels_first)

            steps[(kind, "kornia")] = step
    return steps


def run_comparison(repeats, group, sizes=tuple(COMPARE_SIZES)):
    """Rows ``{size, mode="compare", dtype, transform, contender, ms_per_batch,
    cpu_ms_per_batch}`` of `group`'s contenders (see `comparison_contenders`): every one of
    every dtype timed alternately, one batch each, `repeats` times (medians)."""
    steps = {}
    for size in sizes:
        for dtype in ("float32", "uint8"):
            shape = COMPARE_SIZES[size]
            for (kind, who), step in comparison_contenders(shape, dtype, group).items():
                step()  # compile, warm up
                step()
                steps[(size, dtype, kind, who)] = step
    wall = {key: [] for key in steps}
    cpu = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            wall[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    return [
        {
            "size": size,
            "mode": "compare",
            "dtype": dtype,
            "transform": kind,
            "contender": who,
            "ms_per_batch": statistics.median(wall[key]) * 1e3,
            "cpu_ms_per_batch": statistics.median(cpu[key]) * 1e3,
        }
        for key in steps
        for size, dtype, kind, who in [key]
    ]


def comparison_table(rows):
    """The comparison as printed lines: images/s (wall) per transform, dtype and contender, and
    the affine targets (ours / kornia, ours / (cv2.warpAffine / 2))."""
    lines, targets = [], {}
    who_order = ("ours (tf.data)", "albumentations", "kornia", "cv2.warpAffine")
    for size in COMPARE_SIZES:
        for dtype in ("float32", "uint8"):
            found = {
                (r["transform"], r["contender"]): r
                for r in rows
                if r["size"] == size and r["dtype"] == dtype
            }
            if not found:
                continue
            lines.append(f"{size} {dtype}: images/s wall (per CPU second)")
            for kind in COMPARE_KINDS:
                cells = []
                for who in who_order:
                    row = found.get((kind, who))
                    if row:
                        cells.append(f"{who} {row['images_per_s']:,} ({row['images_per_cpu_s']:,})")
                lines.append(f"  {kind:<8} " + " / ".join(cells))
            ours = found.get(("affine", "ours (tf.data)"))
            for other, key, factor in (
                ("kornia", "affine_vs_kornia (target >= 1)", 1.0),
                ("cv2.warpAffine", "affine_vs_half_opencv (target >= 1 at 224 px)", 0.5),
            ):
                theirs = found.get(("affine", other))
                if ours and theirs:
                    targets.setdefault(f"{size}/{dtype}", {})[key] = {
                        measure: round(ours[measure] / (factor * theirs[measure]), 2)
                        for measure in ("images_per_s", "images_per_cpu_s")
                    }
    return lines, targets


def _version(backend):
    import importlib

    return importlib.import_module(backend).__version__


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sizes", default=",".join(SETTINGS), help="of " + ", ".join(SETTINGS))
    parser.add_argument(
        "--skip", default="", help="leave out contenders whose name contains one of these (a,b)"
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also time ours in tf.data against albumentations and kornia (batch 64)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child_compare", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "bench_deformations.json")
    )
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"error: unknown --sizes {unknown}; choose from {list(SETTINGS)}")
    skip = tuple(part.strip() for part in args.skip.split(",") if part.strip())
    if args.child_compare:  # the comparison, on TensorFlow: rows as JSON on the last line
        machine = {**machine_info(), "tensorflow": _version("tensorflow")}
        for package in ("albumentations", "cv2", "kornia", "torch"):
            try:
                machine[package] = _version(package)
            except ImportError:
                pass
        rows = run_comparison(args.repeats, args.child_compare)
        print(json.dumps({"rows": rows, "machine": machine}))
        return
    if args.child:  # one backend, in this process: rows as JSON on the last line of stdout
        import keras

        machine = {**machine_info(), keras.backend.backend(): _version(keras.backend.backend())}
        if keras.backend.backend() == "torch":
            machine["torch_threads"] = __import__("torch").get_num_threads()
            try:
                machine["kornia"] = _version("kornia")
            except ImportError:
                pass
        rows = run_backend(args.repeats, sizes, skip)
        print(json.dumps({"rows": rows, "machine": machine}))
        return

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    measured, machine = {}, {}
    for round_index in range(args.rounds):
        for backend in backends:
            print(f"round {round_index + 1}/{args.rounds}: {backend} ...", flush=True)
            done = subprocess.run(
                [sys.executable, __file__, "--child", "--repeats", str(args.repeats)]
                + ["--sizes", ",".join(sizes), "--skip", ",".join(skip)],
                env={**os.environ, "KERAS_BACKEND": backend},
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SystemExit(f"error: the {backend} run failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            machine.update(result["machine"])
            for row in result["rows"]:
                key = (row["size"], row["mode"], row["contender"])
                measured.setdefault(key, []).append(row.get("ms_per_batch", row.get("error")))

    compared, timings = [], {}
    for round_index in range(args.rounds if args.compare else 0):
        # Ours with albumentations and OpenCV in one process, kornia in another, alternating.
        for group in ("tensorflow", "torch"):
            print(f"comparison round {round_index + 1}/{args.rounds}: {group} ...", flush=True)
            done = subprocess.run(
                [sys.executable, __file__, "--child_compare", group, "--repeats"]
                + [str(args.repeats)],
                env={**os.environ, "KERAS_BACKEND": "tensorflow"},
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SystemExit(f"error: the comparison failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            machine.update(result["machine"])
            for row in result["rows"]:
                key = tuple(row[k] for k in ("size", "mode", "dtype", "transform", "contender"))
                timings.setdefault(key, []).append(row)
    for (size, mode, dtype, kind, who), runs in timings.items():
        images = COMPARE_SIZES[size][0]
        wall = statistics.median(run["ms_per_batch"] for run in runs)
        cpu = statistics.median(run["cpu_ms_per_batch"] for run in runs)
        compared.append(
            {
                "size": size,
                "mode": mode,
                "dtype": dtype,
                "transform": kind,
                "contender": who,
                "ms_per_batch": round(wall, 2),
                "images_per_s": round(images / wall * 1e3),
                "images_per_cpu_s": round(images / cpu * 1e3),
            }
        )

    rows = []
    for (size, mode, name), values in measured.items():
        row = {"size": size, "mode": mode, "contender": name}
        times = [v for v in values if isinstance(v, float)]
        if times:
            ms = statistics.median(times)
            floor = statistics.median(measured[(size, mode, "resample floor")])
            row.update(
                ms_per_batch=round(ms, 2),
                images_per_s=round(SETTINGS[size]["shape"][0] / ms * 1e3),
                vs_floor=round(ms / floor, 2),
            )
        else:
            row["error"] = values[0]
        rows.append(row)
        print(
            f"{size:>13} {mode:>5} {name:<30} "
            + (
                f"{row['ms_per_batch']:9.2f} ms {row['images_per_s']:8d} img/s "
                f"{row['vs_floor']:6.2f}x floor"
                if "ms_per_batch" in row
                else row["error"]
            ),
            flush=True,
        )

    def ratio(size, mode_a, a, mode_b, b):
        found = {(r["mode"], r["contender"]): r for r in rows if r["size"] == size}
        first, second = found.get((mode_a, a), {}), found.get((mode_b, b), {})
        if "ms_per_batch" in first and "ms_per_batch" in second:
            return round(first["ms_per_batch"] / second["ms_per_batch"], 2)
        return None

    targets = {}
    for size in sizes:
        for mode in ("graph", "xla", "jax", "torch"):
            targets[f"{size}/{mode}"] = {
                "tps_vs_floor (target <= 1.3)": ratio(
                    size, mode, "RandomThinPlateSpline", mode, "resample floor"
                ),
                "per_sample_solve_vs_tps (target >= 5 under XLA)": ratio(
                    size, mode, "per-sample TPS solve", mode, "RandomThinPlateSpline"
                ),
                "per_sample_solve_vs_tps_field_only": ratio(
                    size, mode, "field only: per-sample solve", mode, "field only: fixed-grid TPS"
                ),
                "affine_vs_keras_rotation (target <= 1)": ratio(
                    size, mode, "RandomAffine", mode, "keras RandomRotation"
                ),
            }
        speed = lambda a, b, size=size: ratio(size, "torch", b, "torch", a)
        targets[f"{size}/torch speed, x of"] = {
            "kornia: TPS": speed("RandomThinPlateSpline", "kornia RandomThinPlateSpline"),
            "kornia: affine": speed("RandomAffine", "kornia RandomAffine"),
            "kornia: diffeo vs elastic": speed(
                "RandomDiffeomorphism", "kornia RandomElasticTransform"
            ),
            **{
                f"gather resample: {name}": speed(name, name + GATHER_PATH)
                for name in (
                    "resample floor",
                    "RandomThinPlateSpline",
                    "RandomAffine",
                    "RandomDiffeomorphism",
                )
            },
        }
        targets[f"{size}/jax_vs_xla"] = {
            "tps (target <= 1.5)": ratio(
                size, "jax", "RandomThinPlateSpline", "xla", "RandomThinPlateSpline"
            ),
            "resample floor": ratio(size, "jax", "resample floor", "xla", "resample floor"),
            "affine": ratio(size, "jax", "RandomAffine", "xla", "RandomAffine"),
            "diffeo": ratio(size, "jax", "RandomDiffeomorphism", "xla", "RandomDiffeomorphism"),
        }
    if compared:
        lines, compare_targets = comparison_table(compared)
        print("\nComparison (batch 64):")
        print("\n".join(lines))
        targets.update({f"compare {key}": value for key, value in compare_targets.items()})
        rows.extend(compared)
    print("\nTargets:")
    for key, values in targets.items():
        if any(v is not None for v in values.values()):
            print(f"  {key}: {values}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "backends": backends,
                "repeats": args.repeats,
                "rounds": args.rounds,
                "rows": rows,
                "targets": targets,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
