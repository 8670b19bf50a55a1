r"""Draws the papers' figures from several training runs.

    python -m trainers.compare --runs="runs/*" --by=downsample --output_dir=figures

Per-layer sensitivity at initialisation and after training for each group (e.g. downsampling
variant), with +-2 SD bands over the seeds of a group; kernel smoothness per layer; the mean
sensitivity over epochs. Writes PNGs and a summary (summary.json, summary.md).
"""

import glob
import json
import os

from absl import app, flags

from trainers._cli import run_main

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", [], "Run directories or glob patterns (comma-separated).")
flags.DEFINE_string("by", "downsample", "The setting that groups runs (one line per value).")
flags.DEFINE_string("measure", "sensitivity", "The representation measure of the profiles.")
flags.DEFINE_string("output_dir", "figures", "Where the figures go.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    directories = sorted(
        {path for pattern in FLAGS.runs for path in (glob.glob(pattern) or [pattern])}
    )
    directories = [d for d in directories if os.path.isdir(d)]
    if not directories:
        raise ValueError(f"--runs={','.join(FLAGS.runs)!r} matches no run directory.")
    from deformstab_tf import reports
    from deformstab_tf.plots import plot_profile_bands

    runs = [reports.read_run(d) for d in directories]  # errors name the directory
    groups = reports.group_runs(runs, FLAGS.by)
    if not any(FLAGS.measure in r.at("final") for r in runs):
        raise ValueError(f"No run measured --measure={FLAGS.measure!r}.")
    figures = {}
    log = FLAGS.measure == "relative_stability"
    for which in ("init", "final"):
        profile = reports.profile_groups(groups, FLAGS.measure, which)
        if profile:
            stage = "at initialisation" if which == "init" else "after training"
            figures[f"{FLAGS.measure}_{which}.png"] = plot_profile_bands(
                profile, title=f"{FLAGS.measure} {stage} (mean +- 2 SD)", ylabel=FLAGS.measure,
                log=log,
            )  # fmt: skip
        smooth = reports.profile_groups(groups, "smoothness", which)
        if smooth:
            figures[f"smoothness_{which}.png"] = plot_profile_bands(
                smooth, title=f"kernel TV/L1 ({which})", ylabel="TV / L1"
            )
    over_epochs = {}
    # One line per group over epochs, averaged over the group's runs.
    for label, group_runs in groups.items():
        epochs = {}
        for run in group_runs:
            for record in run.history:
                if FLAGS.measure in record["results"]:
                    epochs.setdefault(f"epoch {record['epoch']}", []).append(
                        record["results"][FLAGS.measure].mean()
                    )
        over_epochs[label] = epochs
    figures[f"{FLAGS.measure}_over_epochs.png"] = plot_profile_bands(
        over_epochs, title=f"mean {FLAGS.measure} over epochs", ylabel=FLAGS.measure, log=log
    )
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    for name, figure in figures.items():
        figure.savefig(os.path.join(FLAGS.output_dir, name), dpi=90)
    summary = {
        "by": FLAGS.by,
        "measure": FLAGS.measure,
        "groups": {
            label: {
                "runs": [r.directory for r in group_runs],
                "test_accuracy": [r.summary and r.summary["test_accuracy"] for r in group_runs],
                "mean_init": [r.at("init")[FLAGS.measure].mean() for r in group_runs
                              if FLAGS.measure in r.at("init")],
                "mean_final": [r.at("final")[FLAGS.measure].mean() for r in group_runs],
            }
            for label, group_runs in groups.items()
        },
        "figures": sorted(figures),
    }  # fmt: skip
    with open(os.path.join(FLAGS.output_dir, "summary.json"), "w") as file:
        json.dump(summary, file, indent=1, allow_nan=True)
    lines = [f"# {FLAGS.measure} by {FLAGS.by}", "", "| group | runs | test accuracy | mean "
             f"{FLAGS.measure} init | after training |", "|---|---|---|---|---|"]  # fmt: skip
    for label, entry in summary["groups"].items():
        accuracy = ", ".join("-" if a is None else f"{a:.3f}" for a in entry["test_accuracy"])
        init = ", ".join(f"{v:.4g}" for v in entry["mean_init"])
        final = ", ".join(f"{v:.4g}" for v in entry["mean_final"])
        lines.append(f"| {label} | {len(entry['runs'])} | {accuracy} | {init} | {final} |")
    lines += [""] + [f"![{name}]({name})" for name in sorted(figures)]
    with open(os.path.join(FLAGS.output_dir, "summary.md"), "w") as file:
        file.write("\n".join(lines) + "\n")
    print("\n".join(lines[: -len(figures)]))
    print(f"Figures: {FLAGS.output_dir}")


def run():
    """Console script `deformstab-compare`."""
    run_main(main)


if __name__ == "__main__":
    run()
