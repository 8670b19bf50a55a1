"""Cost of the stability measures and of `StabilityCallback`, relative to plain forward passes.

For `cifar_vgg` with 128 probe images (CIFAR-10 test images if `../shared/data/cifar10` exists,
else random ones) and all 13 probe points, it times, alternating round by round:

- ``forward``: `model(x, training=False)` in a `tf.function` over the clean and the deformed probe
  images (2 x 128 images, in batches of `batch_size`): the least any sensitivity measure pays;
- ``sensitivity``: one full `normalized_sensitivity` (deformation included; the feature
  extractor is cached per model, so this is what every measurement after the first costs);
- ``relative_stability``: one full `relative_stability` (it needs 3 x 128 images: clean, deformed,
  noisy).

It reports medians and the median of the per-round ratios to ``forward`` (target <= 3), the first
(cold, tracing) call, the peak resident-memory increase of a measurement over a process that has
run the plain forward pass (peak RSS reset through /proc/self/clear_refs, one fresh process per
stage), the time spent in the callback per epoch, and the per-epoch
overhead of the callback on a short fit (2 epochs of 1024 random images, with and without the
callback, alternated). Usage::

    python benchmarks/bench_callback.py [--repeats 5] [--out benchmarks/results/bench_callback.json]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from deformstab_tf.callbacks import StabilityCallback  # noqa: E402
from deformstab_tf.measures import normalized_sensitivity, relative_stability  # noqa: E402
from deformstab_tf.models import cifar_vgg, probe_layer_names  # noqa: E402

CIFAR_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "test"
NUM_PROBES = 128


def probe_images(count):
    """`count` CIFAR-10 test images (round-robin over classes) in [0, 1], or random ones."""
    if CIFAR_TEST.is_dir():
        classes = sorted(p for p in CIFAR_TEST.iterdir() if p.is_dir())
        files = [sorted(c.glob("*.jpg"))[: count // len(classes) + 1] for c in classes]
        paths = [f[i] for i in range(count // len(classes) + 1) for f in files][:count]
        images = [tf.io.decode_jpeg(tf.io.read_file(str(p))).numpy() for p in paths]
        return np.stack(images).astype("float32") / 255.0, "cifar10 test"
    return np.random.default_rng(0).uniform(size=(count, 32, 32, 3)).astype("float32"), "random"


def deformation():
    try:
        from deformstab_tf.deformations import RandomThinPlateSpline

        return RandomThinPlateSpline(3, 2.0, seed=0), "RandomThinPlateSpline(3, 2.0)"
    except ImportError:
        return (lambda x: tf.roll(x, 1, axis=2)), "roll by 1 px"


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bench_measures(model, images, tps, batch_size, repeats):
    forward = tf.function(lambda x: model(x, training=False))
    deformed = tf.concat(
        [tps(images[s : s + batch_size], training=True) for s in range(0, len(images), batch_size)],
        0,
    )
    batches = [
        x[s : s + batch_size]
        for x in (tf.constant(images), deformed)
        for s in range(0, len(images), batch_size)
    ]

    def run_forward():
        for batch in batches:
            forward(batch).numpy()

    def run_sensitivity():
        normalized_sensitivity(model, images, tps, batch_size=batch_size, seed=0)

    def run_relative_stability():
        relative_stability(model, images, tps, batch_size=batch_size, seed=0)

    run_forward()  # trace
    cold = {
        "sensitivity": timed(run_sensitivity),
        "relative_stability": timed(run_relative_stability),
    }
    times = {"forward": [], "sensitivity": [], "relative_stability": []}
    for _ in range(repeats):  # alternate, so drifts of the shared machine hit all alike
        times["forward"].append(timed(run_forward))
        times["sensitivity"].append(timed(run_sensitivity))
        times["relative_stability"].append(timed(run_relative_stability))
    ratio = {
        name: statistics.median(t / f for t, f in zip(times[name], times["forward"], strict=True))
        for name in ("sensitivity", "relative_stability")
    }
    return {
        "batch_size": batch_size,
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "ratio_to_forward": ratio,
        "cold_first_call_s": cold,
        "peak_rss_increase_mib": {
            stage: peak_memory_increase(stage, batch_size)
            for stage in ("forward", "sensitivity", "relative_stability")
        },
    }


def peak_memory_increase(stage, batch_size):
    """Peak-RSS increase (MiB) of one `stage` in a fresh process that has already run the plain
    forward pass once (`ru_maxrss` is a high-water mark, so each stage gets its own process)."""
    output = subprocess.run(
        [sys.executable, __file__, "--memory-stage", stage, "--batch-size", str(batch_size)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_rss_increase_mib"]


def memory_stage(stage, batch_size):
    keras.utils.set_random_seed(0)
    model = cifar_vgg()
    images, _ = probe_images(NUM_PROBES)
    tps, _ = deformation()
    forward = tf.function(lambda x: model(x, training=False))
    x = tf.constant(images)
    deformed = tps(x, training=True)

    def run_forward():
        for batch in (x, deformed):
            for s in range(0, NUM_PROBES, batch_size):
                forward(batch[s : s + batch_size]).numpy()

    run_forward()
    before = reset_peak_rss()
    if stage == "forward":
        run_forward()
    elif stage == "sensitivity":
        normalized_sensitivity(model, images, tps, batch_size=batch_size, seed=0)
    else:
        relative_stability(model, images, tps, batch_size=batch_size, seed=0)
    print(json.dumps({"peak_rss_increase_mib": (peak_rss() - before) / 2**20}))


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss():
    """Resets the peak-RSS counter (Linux `clear_refs` 5) and returns the current RSS in bytes;
    without /proc, the `ru_maxrss` high-water mark (then increases below it go unseen)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return _status_kib("VmRSS") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss():
    try:
        return _status_kib("VmHWM") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class EpochTimer(keras.callbacks.Callback):
    """Epoch wall time; with `mark`, the time from `mark.on_epoch_end` to this one's (the time
    spent in the callbacks between them)."""

    def __init__(self, mark=None):
        super().__init__()
        self.mark = mark
        self.epoch_seconds = []
        self.between_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.epoch_seconds.append(now - self._start)
        if self.mark is not None:
            self.between_seconds.append(now - self.mark.end)


class Mark(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.end = time.perf_counter()


def bench_fit(images, tps, repeats, measures):
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(1024, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 1024)

    def fit(with_callback):
        keras.utils.set_random_seed(0)
        model = cifar_vgg()
        model.compile(
            "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False
        )
        mark = Mark()
        timer = EpochTimer(mark)
        callbacks = [mark, timer]
        if with_callback:
            # Between the marks: the timer's epoch includes the measurement, and the time from
            # mark to timer is the callback's own.
            callbacks.insert(1, StabilityCallback(images, tps, measures=measures, seed=0))
        total = timed(
            lambda: model.fit(x, y, epochs=2, batch_size=128, verbose=0, callbacks=callbacks)
        )
        # The 2nd epoch: no tracing.
        return total, timer.epoch_seconds[1], timer.between_seconds[1]

    rounds = {"without": [], "with": []}
    for _ in range(repeats):
        rounds["without"].append(fit(False))
        rounds["with"].append(fit(True))
    second_epoch = {k: statistics.median(e for _, e, _ in v) for k, v in rounds.items()}
    total = {k: statistics.median(t for t, _, _ in v) for k, v in rounds.items()}
    in_callback = statistics.median(c for _, _, c in rounds["with"])
    return {
        "measures": list(measures),
        "epoch_s": second_epoch,
        "callback_s_per_epoch": in_callback,
        "callback_fraction_of_epoch": in_callback / second_epoch["without"],
        "epoch_overhead_s": second_epoch["with"] - second_epoch["without"],
        "fit_total_s": total,
        "fit_total_overhead_s": total["with"] - total["without"],
    }


def bench_many_probes(model, count, repeats):
    """Relative stability on `count` probe images (Petrini et al. use 500): batch 64 vs one batch,
    clean features kept in memory (default) vs recomputed (`feature_cache_bytes=0`)."""
    from deformstab_tf.deformations import RandomDiffeomorphism

    images, source = probe_images(count)
    rows = []
    for batch_size in (64, count):
        for cache in (0, None):
            kwargs = {} if cache is None else {"feature_cache_bytes": cache}

            def run(batch_size=batch_size, kwargs=kwargs):
                diffeo = RandomDiffeomorphism(cutoff=3, displacement=1.0, seed=0)
                return relative_stability(
                    model, images, diffeo, batch_size=batch_size, seed=0, **kwargs
                )

            result = run()  # warm-up: traces and compiles
            seconds = sorted(timed(run) for _ in range(repeats))
            rows.append(
                {
                    "batch_size": batch_size,
                    "feature_cache": "off" if cache == 0 else "default (1 GiB)",
                    "median_s": seconds[len(seconds) // 2],
                    "forward_passes": result.metadata["forward_passes"],
                    "mean_R": result.mean(),
                }
            )
    return {"probe_images": f"{count} ({source})", "rows": rows}


def bench_resnet50(num_images, batch_size, image_size, repeats):
    """One `normalized_sensitivity` of Keras's ResNet50 (`weights=None`, its 57 default probe
    points) in forward passes of the `num_images` probe images: its time over the time of one
    forward pass of the clean images (the median over rounds of the ratio, a round timing the
    plain forward passes of the clean and of the deformed images, then the measurement). The
    floor is 2: one pass of the clean images, one of the deformed images."""
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(image_size, image_size, 3))
    images = np.random.default_rng(0).uniform(size=(num_images, image_size, image_size, 3))
    images = images.astype("float32")
    tps, deformation_name = deformation()
    forward = tf.function(lambda x: model(x, training=False))
    deformed = tf.concat(
        [tps(images[s : s + batch_size], training=True) for s in range(0, num_images, batch_size)],
        0,
    )
    batches = [
        x[s : s + batch_size]
        for x in (tf.constant(images), deformed)
        for s in range(0, num_images, batch_size)
    ]

    def run_forward():
        for batch in batches:
            forward(batch).numpy()

    result = {}

    def run_sensitivity():
        result["value"] = normalized_sensitivity(model, images, tps, batch_size=batch_size, seed=0)

    cold = {"forward": timed(run_forward), "sensitivity": timed(run_sensitivity)}
    times = {"forward": [], "sensitivity": []}
    for _ in range(repeats):  # alternate, so drifts of the shared machine hit both alike
        times["forward"].append(timed(run_forward))
        times["sensitivity"].append(timed(run_sensitivity))
    passes = [2 * s / f for s, f in zip(times["sensitivity"], times["forward"], strict=True)]
    return {
        "model": "keras.applications.ResNet50(weights=None)",
        "probe_points": len(result["value"]),
        "image_size": image_size,
        "num_images": num_images,
        "batch_size": batch_size,
        "deformation": deformation_name,
        "repeats": repeats,
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "cold_first_call_s": cold,
        "forward_passes_of_the_probe_images": statistics.median(passes),
        "forward_passes_per_round": passes,
        "batch_forward_passes": result["value"].metadata["forward_passes"],
    }


def print_resnet50(row):
    print(
        f"normalized_sensitivity of ResNet50 ({row['probe_points']} probe points), "
        f"{row['num_images']} images of {row['image_size']} px, batch {row['batch_size']}, "
        f"{row['deformation']}, median of {row['repeats']} rounds"
    )
    print(f"{'':<34} {'median s':>9} {'cold s':>7}")
    for name in ("forward", "sensitivity"):
        label = "forward (clean + deformed)" if name == "forward" else name
        print(f"{label:<34} {row['median_s'][name]:>9.2f} {row['cold_first_call_s'][name]:>7.2f}")
    print(
        f"cost in forward passes of the {row['num_images']} images (floor 2): "
        f"{row['forward_passes_of_the_probe_images']:.2f} "
        f"(rounds: {', '.join(f'{p:.2f}' for p in row['forward_passes_per_round'])})"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fit-repeats", type=int, default=2)
    parser.add_argument(
        "--out",
        default=str(Path(__file__).parent / "results" / "bench_callback.json"),
    )
    parser.add_argument(
        "--many-probes-only", action="store_true", help="only the 500-probe-image comparison"
    )
    parser.add_argument(
        "--resnet50",
        action="store_true",
        help="only the cost of one normalized_sensitivity of ResNet50 in forward passes",
    )
    parser.add_argument("--resnet50-images", type=int, default=64)
    parser.add_argument("--resnet50-batch-size", type=int, default=32)
    parser.add_argument("--resnet50-image-size", type=int, default=224)
    parser.add_argument("--memory-stage", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_stage:
        return memory_stage(args.memory_stage, args.batch_size)

    if args.resnet50:
        row = bench_resnet50(
            args.resnet50_images,
            args.resnet50_batch_size,
            args.resnet50_image_size,
            max(1, args.repeats),
        )
        row["machine"] = machine_info()
        print_resnet50(row)
        out = Path(args.out).with_name("bench_callback_resnet50.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(row, indent=1))
        print(f"wrote {out}")
        return None
    keras.utils.set_random_seed(0)
    model = cifar_vgg()
    many = bench_many_probes(model, 500, max(1, args.repeats // 2))
    print(f"relative stability of {model.name} on {many['probe_images']} probe images (diffeo)")
    print(f"{'batch':>5}  {'clean features':<16} {'median s':>9} {'passes':>7} {'mean R':>8}")
    for row in many["rows"]:
        print(
            f"{row['batch_size']:>5}  {row['feature_cache']:<16} {row['median_s']:>9.2f} "
            f"{row['forward_passes']:>7} {row['mean_R']:>8.4f}"
        )
    print()
    if args.many_probes_only:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_name("bench_callback_many_probes.json").write_text(
            json.dumps(many, indent=1)
        )
        return None
    images, source = probe_images(NUM_PROBES)
    tps, deformation_name = deformation()
    report = {
        "machine": machine_info(),
        "model": model.name,
        "probe_points": len(probe_layer_names(model)),
        "probe_images": f"{NUM_PROBES} ({source})",
        "deformation": deformation_name,
        "measures": [bench_measures(model, images, tps, b, args.repeats) for b in (64, 128)],
        "fit": [
            bench_fit(images, tps, args.fit_repeats, measures)
            for measures in (
                ("sensitivity", "smoothness"),
                ("sensitivity", "relative_stability", "shift_consistency", "smoothness"),
            )
        ],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "many_probe_images": many,
    }

    print(
        f"{report['model']}, {report['probe_points']} probe points, "
        f"{report['probe_images']} probe images, {deformation_name}"
    )
    print(
        f"{'batch':>5}  {'measure':<20} {'median s':>9} {'x forward':>9} {'cold s':>7} "
        f"{'peak +MiB':>9}"
    )
    for row in report["measures"]:
        b = row["batch_size"]
        print(
            f"{b:>5}  {'forward (2x128 img)':<20} {row['median_s']['forward']:>9.3f} "
            f"{1:>9.2f} {'':>7} {row['peak_rss_increase_mib']['forward']:>9.1f}"
        )
        for name in ("sensitivity", "relative_stability"):
            print(
                f"{b:>5}  {name:<20} {row['median_s'][name]:>9.3f} "
                f"{row['ratio_to_forward'][name]:>9.2f} {row['cold_first_call_s'][name]:>7.2f} "
                f"{row['peak_rss_increase_mib'][name]:>9.1f}"
            )
    print()
    print(f"{'callback measures':<60} {'epoch s without / with':>24} {'in callback':>12}")
    for row in report["fit"]:
        print(
            f"{', '.join(row['measures']):<60} "
            f"{row['epoch_s']['without']:>11.2f} / {row['epoch_s']['with']:<10.2f} "
            f"{row['callback_s_per_epoch']:>6.3f} s "
            f"{100 * row['callback_fraction_of_epoch']:>3.0f}%"
        )
    print(f"process peak RSS {report['peak_rss_mib']:.0f} MiB")

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
