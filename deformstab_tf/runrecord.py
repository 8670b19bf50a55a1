"""The run record: what a training run directory holds, written and read in one place.

`train_run` (`deformstab_tf.training`) writes a run directory, `StabilityCallback` writes its
stability history into `stability/` under its `log_dir`, and `reports.read_run` reads both back.
The file names, the one atomic JSON writer and the readers live here, below all three, so the
format is written once:

    <run>/config.json                   {"config": {setting: value}, "precision", "cpu_bfloat16",
                                         "version"}                       (`CONFIG_FILE`)
    <run>/summary.json                  test accuracy, epochs, timings; marks the run complete
                                                                          (`SUMMARY_FILE`)
    <run>/metrics.csv                   Keras's `CSVLogger`: a row per epoch (`METRICS_FILE`)
    <run>/model.keras                   the trained model                 (`MODEL_FILE`)
    <run>/backup/                       `BackupAndRestore` while training (`BACKUP_DIR`)
    <run>/stability/measurements.json   `StabilityCallback`'s history     (`measurements_path`)
    <run>/train/, validation/, stability/   TensorBoard runs

The stability history is `[{"epoch": int, "step": int, "results": {measure: MeasureResult}}]`;
`stability_document` / `decode_history` are its codec (the callback's own identity fields, which
tell one measurement series from another, sit beside it in the same document).

This module knows files, not settings: what a recorded configuration means (defaults, settings
of earlier versions) is `training.read_config`'s business.
"""

import contextlib
import csv
import json
import math
import os
import tempfile

from deformstab_tf.measures.results import MeasureResult

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
MODEL_FILE = "model.keras"
BACKUP_DIR = "backup"
STABILITY_DIR = "stability"
MEASUREMENTS_FILE = "measurements.json"
EPOCH_SECONDS_FILE = "epoch_seconds.json"


# -- writing ---------------------------------------------------------------------------------


def write_text(path, text):
    """`text` at `path`, atomically: written to a temporary file beside it and moved into place,
    so a reader (or a kill) never sees half a file; the directory is created if missing."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_json(path, document):
    """`document` as JSON at `path` (indent 1, NaN and inf as JavaScript's literals), atomically
    (`write_text`). The one writer of every JSON file of a run and of the replication.

    Example:

    >>> write_json("records/example.json", {"epoch": 1, "loss": float("nan")})
    >>> open("records/example.json").read()
    '{\\n "epoch": 1,\\n "loss": NaN\\n}'
    """
    write_text(path, json.dumps(document, indent=1))


# -- reading ---------------------------------------------------------------------------------


def read_json(path):
    """The JSON document in `path`; a ValueError naming the file if it is not JSON."""
    with open(path) as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path!r} is not valid JSON: {error}.") from None


def read_config_document(run_dir):
    """`config.json` of a run directory, whole (`{"config": {...}, "precision", ...}`), or None
    without one.

    Raises:
        ValueError: naming the file when it is not JSON or holds no `"config"` object.
    """
    path = os.path.join(os.fspath(run_dir), CONFIG_FILE)
    if not os.path.exists(path):
        return None
    document = read_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise ValueError(
            f'{path!r} is not a run\'s configuration: it holds no "config" object (a run '
            "directory written by train_run has one)."
        )
    return document


def read_summary(run_dir):
    """`summary.json` of a run directory (a dict), or None while the run is unfinished.

    Raises:
        ValueError: naming the file when it is not JSON or not a summary (an object).
    """
    path = os.path.join(os.fspath(run_dir), SUMMARY_FILE)
    if not os.path.isfile(path):
        return None
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise ValueError(f"{path!r} is not a run summary.")
    return summary


def is_complete(run_dir):
    """Whether the run in `run_dir` finished (its `summary.json`, written last, exists)."""
    return os.path.exists(os.path.join(os.fspath(run_dir), SUMMARY_FILE))


def read_metrics(run_dir):
    """`metrics.csv` by column, one float per finished epoch (`{"accuracy": [...], ...}`; NaN
    where a cell is empty or `NA`: an epoch without validation); `{}` without the file."""
    path = os.path.join(os.fspath(run_dir), METRICS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    columns = rows[0].keys() if rows else ()
    return {
        c: [float(row[c]) if row[c] not in ("", "NA", None) else math.nan for row in rows]
        for c in columns
    }


def truncate_metrics(run_dir, start):
    """Keeps the header and the rows of epochs before `start` in `metrics.csv`, in place:
    `CSVLogger` holds the file open for appending, and appends go to the new end."""
    path = os.path.join(os.fspath(run_dir), METRICS_FILE)
    if not os.path.exists(path):
        return
    with open(path, "r+", newline="") as file:
        rows = list(csv.reader(file))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        epoch = header.index("epoch") if "epoch" in header else 0
        kept = [row for row in body if row and _is_int(row[epoch]) and int(row[epoch]) < start]
        if len(kept) == len(body):
            return
        file.seek(0)
        csv.writer(file).writerows([header, *kept])
        file.truncate()


def _is_int(text):
    try:
        int(text)
    except ValueError:
        return False
    return True


# -- the stability history -------------------------------------------------------------------


def stability_directory(log_dir):
    """Where `StabilityCallback` writes under its `log_dir`: its TensorBoard run and JSON file."""
    return os.path.join(os.fspath(log_dir), STABILITY_DIR)


def measurements_path(log_dir):
    """The stability history's file under a `log_dir` (a run directory)."""
    return os.path.join(stability_directory(log_dir), MEASUREMENTS_FILE)


def stability_document(identity, every_n_epochs, history):
    """The JSON document of a stability history: the series' `identity` fields, then
    `every_n_epochs` and the `history` records with their results as dicts."""
    return {
        **identity,
        "every_n_epochs": every_n_epochs,
        "history": [
            {
                "epoch": record["epoch"],
                "step": record["step"],
                "results": {m: r.to_dict() for m, r in record["results"].items()},
            }
            for record in history
        ],
    }


def decode_history(document, path):
    """The history records of a stability document (`stability_document`), results decoded.

    Raises:
        ValueError: naming `path` when it holds no `"history"` list or a malformed record.
    """
    records = document.get("history") if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise ValueError(f'{path!r} is not a stability record: it holds no "history" list.')
    try:
        return [
            {
                "epoch": int(r["epoch"]),
                "step": int(r.get("step", r["epoch"] - 1)),
                "results": {m: MeasureResult.from_dict(v) for m, v in r["results"].items()},
            }
            for r in records
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(
            f'{path!r} holds a malformed measurement (each needs "epoch" and "results" '
            f"written by StabilityCallback): {type(error).__name__}: {error}."
        ) from None


def write_stability(log_dir, identity, every_n_epochs, history):
    """Writes a stability history under `log_dir` (`measurements_path`), atomically."""
    write_json(measurements_path(log_dir), stability_document(identity, every_n_epochs, history))


def read_stability(log_dir):
    """`(document, history)` of the stability history under `log_dir`, or `(None, None)`
    without one: the raw document (for its identity fields) and the decoded records."""
    path = measurements_path(log_dir)
    if not os.path.isfile(path):
        return None, None
    document = read_json(path)
    return document, decode_history(document, path)
