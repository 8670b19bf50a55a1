r"""Draws the papers' figures from several training runs.

    python -m trainers.compare --runs="runs/*" --by=downsample --output_dir=figures
    python -m trainers.compare --runs=runs/max_s0,runs/max_s1,runs/blur_s0 --measure=sensitivity

Per-layer `--measure` at initialisation beside after training, one line per group of runs (e.g.
downsampling variant) with mean +- 2 SD over the group's runs (seeds); kernel smoothness per conv
layer; the measure's mean over epochs. Writes PNGs and a summary (summary.json, summary.md) to
--output_dir, all at once at the end (nothing half-written on an error).

The runs of a group are averaged as seeds: an unfinished run, or runs of one group with
different architectures (model, blocks, downsampling switches), are an error naming the run;
runs of one group that differ in another setting (epochs, learning rate, ...) are listed as a
warning in the summary.
"""

import glob
import os
import warnings

from absl import app, flags

from deformstab_tf.trainers._cli import run_main

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", [], "Run directories or glob patterns of them (comma-separated).")
flags.DEFINE_string("by", "downsample", "The setting (config.json) that groups runs.")
flags.DEFINE_string(
    "measure",
    "sensitivity",
    "The measure of the profiles: sensitivity, relative_stability, shift_consistency or "
    "smoothness.",
)
flags.DEFINE_string("output_dir", "figures", "Where the figures and the summary go.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.runs:
        raise app.UsageError("--runs is required: run directories or glob patterns.")
    from deformstab_tf._validation import check_output_directory

    check_output_directory("--output_dir", FLAGS.output_dir)
    directories = sorted(
        {path for pattern in FLAGS.runs for path in (glob.glob(pattern) or [pattern])}
    )
    directories = [d for d in directories if os.path.isdir(d)]
    if not directories:
        raise ValueError(f"--runs={','.join(FLAGS.runs)!r} matches no run directory.")
    from deformstab_tf import reports

    runs = [reports.read_run(d) for d in directories]  # errors name the directory
    # Runs of a group that differ in a setting besides their seed: summary.md, printed below,
    # lists them (an unfinished run or another architecture is an error).
    warnings.simplefilter("ignore", reports.ComparisonWarning)
    summary = reports.compare_runs(runs, FLAGS.output_dir, by=FLAGS.by, measure=FLAGS.measure)
    with open(os.path.join(FLAGS.output_dir, "summary.md")) as file:
        print(file.read().split("\n![")[0].rstrip())
    print(f"Figures ({len(summary['figures'])}): {FLAGS.output_dir}")


def run():
    """Console script `deformstab-compare`."""
    run_main(main)


if __name__ == "__main__":
    run()
