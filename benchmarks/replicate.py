r"""Reproduces the papers' findings (SPEC F1-F6, T1, Z1) with the package; resumable.

    python benchmarks/replicate.py --cifar10=../shared/data/cifar10                # CPU-sized, ~3 h
    python benchmarks/replicate.py --cifar10=../shared/data/cifar10 --scale=paper  # ~12 h

`--scale=paper` trains every downsampling variant on all 50,000 CIFAR-10 images to convergence,
`--paper_seeds` seeds each (seed-major order, so a partial run covers every variant early), and
measures F2, F3, F4, T1 and Z1 on those networks; T1 and Z1 are decided with intervals over seeds.
Each finished network's numbers are written to `<docs_dir>/replication/experiments/paper/`
(small JSON, committed), so a rerun on a fresh clone skips it; results.json keeps the CPU-sized
keys and gains a `"paper"` object; replication.md shows the two scales side by side.

Every experiment has its own directory under `--output_dir`; a rerun skips finished experiments
and resumes a cut-off training run where it stopped (`deformstab_tf.training.train_run`), so the
whole can run in the background across sessions. After every experiment,
`<docs_dir>/replication/results.json`, the figures beside it and `<docs_dir>/replication.md` are
rewritten from what is finished (a report of a partial run says which experiments are missing).

Experiments of the CPU-sized scale (the defaults):
- `init/<variant>_s<seed>`: every downsampling variant of `cifar_vgg` at initialisation,
  `--init_seeds` seeds: TPS sensitivity (3x3 grid, C=2, 128 test images), kernel smoothness,
  D/G/R (diffeo delta=1 px, c=3, 500 test images) — F1, F4 (init), T1 (init).
- `smoothing/sigma<s>_s<seed>`: the Gaussian-smoothing intervention on `max` at init — F4/§4.
- `trained/<variant>_s<seed>`: CIFAR-10, `--train_size` images, `--epochs`,
  flips + 4-px translations, SGD 0.9, cosine from 0.1, weight decay 5e-4; seeds per variant from
  `--trained_seeds`; then D/G/R and shift consistency of the trained net — F2, F3, F4, T1, Z1.
- `random_labels/<variant>_s0`: random labels fixed per example on `--random_label_size` images
  — F5.
- `synthetic/<prototypes>_<downsample>_C<c>_s<seed>`: the synthetic task at TPS strength C,
  `--synthetic_seeds` seeds — F6. The default prototypes are fine textures and the net has no
  pooling (`subsample`), so deformation stability must come from the filters; other settings
  found under `synthetic/` (e.g. an earlier run's strokes with max pooling) are reported too.

A sweep across machines: the rows are independent, so `--shard=K/N` runs only every N-th row of
the plan, starting at the K-th (K = 1..N): a cluster's own scheduler starts shards 1/N .. N/N
(a SLURM array, Kubernetes jobs) over one shared `--output_dir` and `--docs_dir`. A row's shard
is fixed by its place in the plan, not by what is finished when a shard starts, so shards
started at different times never overlap or leave a gap. A sharded run writes each finished
row's JSON but no report (shards would race to rewrite it); `--report_only` then draws the
report from whatever rows are there. `--rows` takes the rows whose names match its patterns:
networks trained on CPUs of different bfloat16 paths are not compared, so one machine can
take whole studies.
"""

import fnmatch
import os
import shlex
import sys

from absl import app, flags
from replication import report  # benchmarks/ is on sys.path
from replication.experiments import (
    T3_NOISE,
    Runner,
    Settings,
    gather,
    gather_extended,
    gather_paper,
    plan,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("cifar10", "../shared/data/cifar10", "CIFAR-10 image folder (train/, test/).")
flags.DEFINE_string("output_dir", "runs/replication", "One directory per experiment.")
flags.DEFINE_string("docs_dir", "docs", "Where replication.md and replication/ are written.")
flags.DEFINE_enum(
    "scale",
    "cpu",
    ["cpu", "paper", "extended"],
    "CPU-sized experiments, paper scale, or the studies after it (Z1, T2, T3, P1, M1-M3).",
)
flags.DEFINE_integer("z1_seeds", 5, "Extended: training seeds of max and blur (Z1).")
flags.DEFINE_integer("t2_seeds", 3, "Extended: training seeds of strided (T2).")
flags.DEFINE_integer("mouton_seeds", 3, "Extended: training seeds of Mouton et al.'s M1-M3.")
flags.DEFINE_list(
    "t3_seeds",
    ["3", "2"],
    "Extended: training seeds of T3 per noise level, in the order of the noise SDs "
    f"{', '.join(map(str, T3_NOISE))}; one count serves all.",
)
flags.DEFINE_list(
    "p1_architectures",
    ["fully_connected", "lenet", "cifar_vgg", "mobilenet_v2", "efficientnet_b0"],
    "Extended: P1's architectures (train_run models).",
)
flags.DEFINE_list("p1_sizes", ["1000", "5000", "50000"], "Extended: P1's training-set sizes.")
flags.DEFINE_integer("p1_steps", 3000, "Extended: P1's SGD steps below 50,000 images.")
flags.DEFINE_bool(
    "measure_trained",
    False,
    "Only measure (and report) the networks whose training is complete; train nothing.",
)
flags.DEFINE_string(
    "shard",
    None,
    "K/N: run only the rows K, K + N, K + 2N, ... of the plan (1 <= K <= N) and write no "
    "report; --report_only draws it from the finished rows.",
)
flags.DEFINE_list(
    "rows",
    None,
    "Run only the rows whose names match one of these shell patterns (e.g. 'mouton/m1_*', "
    "'mouton/m3_*'): the studies one machine's CPU path should decide; the report covers all.",
)
flags.DEFINE_bool(
    "train_next",
    False,
    "Only train the next network of the plan that is neither trained nor measured, then exit "
    "(status 3 when none is left); a later run measures it.",
)
flags.DEFINE_integer("paper_seeds", 3, "Paper scale: training seeds per variant.")
flags.DEFINE_integer("paper_epochs", 30, "Paper scale: training epochs (cosine to 0).")
flags.DEFINE_float(
    "paper_weight_decay",
    5e-3,
    "Paper scale: decoupled weight decay (Keras's: w -= lr * wd * w each step); 5e-3 equals the "
    "papers' L2 5e-4 coupled with momentum 0.9 (amplified 1 / (1 - 0.9) = 10x).",
)
flags.DEFINE_integer(
    "paper_train_size", None, "Paper scale: training images (default all; smaller for tests)."
)
flags.DEFINE_list(
    "variants", ["subsample", "max", "avg", "strided", "strided_relu", "blur"], "Downsampling."
)
flags.DEFINE_integer("init_seeds", 5, "Seeds of the measurements at initialisation.")
flags.DEFINE_list(
    "trained_seeds", ["max:2", "subsample:2", "*:1"], "Training seeds per variant (* = others)."
)
flags.DEFINE_integer("train_size", 10000, "CIFAR-10 training images.")
flags.DEFINE_integer("epochs", 12, "CIFAR-10 training epochs.")
flags.DEFINE_integer("random_label_size", 1000, "Training images of the random-label runs.")
flags.DEFINE_integer("random_label_epochs", 25, "Epochs of the random-label runs.")
flags.DEFINE_list("synthetic_strengths", ["1", "2", "3", "4"], "TPS strengths C of F6.")
flags.DEFINE_integer("synthetic_epochs", 10, "Epochs of the synthetic-task runs.")
flags.DEFINE_integer("synthetic_samples", 6400, "Synthetic training samples per epoch.")
flags.DEFINE_integer("synthetic_seeds", 2, "Training seeds per strength C of the synthetic task.")
flags.DEFINE_enum(
    "synthetic_prototypes", "texture", ["texture", "strokes"], "Synthetic task prototypes (F6)."
)
flags.DEFINE_enum(
    "synthetic_downsample", "subsample",
    ["subsample", "max", "avg", "strided", "strided_relu", "blur", "none"],
    "Downsampling of the synthetic-task net.",
)  # fmt: skip
flags.DEFINE_integer("probe_size", 128, "Probe images of the sensitivity (Ruderman et al.).")
flags.DEFINE_integer("stability_probe_size", 500, "Probe images of D, G, R (Petrini et al.).")
flags.DEFINE_integer("shift_images", 1000, "Test images of the shift consistency.")
flags.DEFINE_list("sigmas", ["0.5", "1", "2"], "Gaussian-smoothing intervention at init.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_string("model", "cifar_vgg", "Model: cifar_vgg, or vgg with --blocks (tests).")
flags.DEFINE_string("blocks", None, "For --model=vgg: conv widths per block, e.g. '8;16'.")
flags.DEFINE_integer("synthetic_image_size", 32, "Image size of the synthetic task.")
flags.DEFINE_bool("report_only", False, "Only rewrite the report from finished experiments.")


def write_reports(settings, experiments, runner):
    """Rewrites results.json, the figures and replication.md from the finished experiments."""
    finished = list(runner.finished(experiments))
    if settings.scale == "extended":
        report.write_extended_report(
            settings.docs_dir, gather_extended(settings, experiments, finished)
        )
    elif settings.scale == "paper":
        cpu = report.read_cpu_results(settings.docs_dir)
        paper = gather_paper(settings, experiments, finished, cpu)
        report.write_paper_report(settings.docs_dir, cpu, paper)
    else:
        report.write_report(settings.docs_dir, gather(settings, experiments, finished))


def main(argv):
    del argv
    names = [
        "cifar10", "output_dir", "docs_dir", "scale", "paper_seeds", "paper_epochs",
        "paper_train_size", "paper_weight_decay", "variants", "init_seeds", "trained_seeds",
        "train_size", "epochs", "random_label_size", "random_label_epochs",
        "synthetic_strengths", "synthetic_epochs", "synthetic_samples", "synthetic_seeds",
        "synthetic_prototypes", "synthetic_downsample", "probe_size",
        "stability_probe_size", "shift_images", "sigmas", "batch_size", "model", "blocks",
        "synthetic_image_size", "z1_seeds", "t2_seeds", "t3_seeds", "mouton_seeds",
        "p1_architectures", "p1_sizes", "p1_steps",
    ]  # fmt: skip
    settings = Settings({name: FLAGS[name].value for name in names})
    # The command that runs the experiments (a --report_only rewrite names that command).
    # How a run is staged or sliced is not part of the command.
    stages = ("--report_only", "--measure_trained", "--train_next", "--shard", "--rows")
    run_args = [a for a in sys.argv if not a.startswith(stages)]
    settings.command = "python " + " ".join(shlex.quote(a) for a in run_args)
    if not os.path.isdir(os.path.join(settings.cifar10, "train")):
        raise app.UsageError(
            f"--cifar10 must be an image folder with train/ and test/: {settings.cifar10!r}"
        )
    try:
        experiments, runner = plan(settings), Runner(settings)
    except ValueError as error:  # a flag the plan cannot use: one line, not a traceback
        raise app.UsageError(str(error)) from None
    mine = select_rows(shard_rows(experiments, FLAGS.shard), FLAGS.rows)
    if FLAGS.train_next:
        experiment = runner.train_next(mine)
        print(f"[replicate] trained {experiment.name if experiment else 'nothing: none left'}")
        sys.exit(0 if experiment else 3)
    # --measure_trained runs what is trained and trains nothing; the report covers the plan.
    runnable = [e for e in mine if runner.is_trained(e) or not FLAGS.measure_trained]
    if not FLAGS.report_only:
        done = len(list(runner.finished(mine)))
        print(f"[replicate] {done} of {len(mine)} experiments finished earlier", flush=True)
        for experiment in runnable:
            if not os.path.exists(runner.result_path(experiment)):
                print(f"[replicate] {experiment.name}", flush=True)
                runner.run(experiment)
                if FLAGS.shard is None:
                    write_reports(settings, experiments, runner)
    if FLAGS.shard is not None and not FLAGS.report_only:
        print(f"[replicate] shard {FLAGS.shard} done; --report_only draws the report")
        return
    write_reports(settings, experiments, runner)
    print(f"Report: {os.path.join(settings.docs_dir, 'replication.md')}")


def shard_rows(experiments, shard):
    """The rows of `experiments` that shard `"K/N"` runs: K, K + N, ... (1-based); all for None.

    Example:

    >>> shard_rows(list("abcde"), "2/2"), shard_rows(list("abcde"), None)
    (['b', 'd'], ['a', 'b', 'c', 'd', 'e'])
    """
    if shard is None:
        return list(experiments)
    k, _, n = str(shard).partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise app.UsageError(f"--shard must be K/N with 1 <= K <= N, e.g. 1/4; received {shard!r}")
    return list(experiments)[int(k) - 1 :: int(n)]


def select_rows(experiments, patterns):
    """The experiments whose names match one of the shell `patterns` (all for None).

    Example:

    >>> from types import SimpleNamespace as Row
    >>> rows = [Row(name=n) for n in ("mouton/m1_max_s0", "mouton/m2_k3_s0", "p1/lenet_n1000")]
    >>> [r.name for r in select_rows(rows, ["mouton/m1_*", "p1/*"])]
    ['mouton/m1_max_s0', 'p1/lenet_n1000']
    """
    if patterns is None:
        return list(experiments)
    chosen = [e for e in experiments if any(fnmatch.fnmatchcase(e.name, p) for p in patterns)]
    if not chosen:
        raise app.UsageError(f"--rows matches no row of the plan: {','.join(patterns)!r}")
    return chosen


if __name__ == "__main__":
    app.run(main)
