"""trainers/train.py and deformstab_tf.training end to end: artefacts, resume after kill -9,
TensorBoard through a real server, distribution, bad flags."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tensorflow.python.framework import config as tf_config

from deformstab_tf import training
from deformstab_tf.callbacks import StabilityCallback
from deformstab_tf.training import DEFAULTS, check_config, train_run
from tests.cli_cases import run_cases
from tests.references import TINY_RUN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = TINY_RUN
TINY_FLAGS = [
    "--synthetic_classes=3",
    "--synthetic_image_size=16",
    "--model=vgg",
    "--blocks=4;8",
    "--batch_size=32",
    "--probe_size=8",
    "--verbose=2",
]


def _events(run_dir, tag):
    accumulator = EventAccumulator(run_dir, size_guidance={"tensors": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["tensors"]:
        return []
    return [
        (event.step, float(tf.make_ndarray(event.tensor_proto)))
        for event in accumulator.Tensors(tag)
    ]


def _csv_epochs(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as file:
        return [int(row["epoch"]) for row in csv.DictReader(file)]


def _csv_column(run_dir, column):
    with open(os.path.join(run_dir, "metrics.csv")) as file:
        return [row[column] for row in csv.DictReader(file)]


def _json_epochs(run_dir):
    with open(os.path.join(run_dir, "stability", "measurements.json")) as file:
        return [record["epoch"] for record in json.load(file)["history"]]


def _train_script(args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "trainers.train", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Warnings the fixture's run raised (with every warning shown, as `-W always` would).
RUN_WARNINGS = []


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("runs") / "tiny")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train_run(run_dir, verbose=0, **TINY)
    RUN_WARNINGS.extend(caught)
    return run_dir, summary


def test_a_default_run_raises_no_warning(finished_run):
    # e.g. Keras's "`shuffle=True` was passed, but will be ignored" for our own fit() call.
    # (Keras's saving raises a DeprecationWarning of its own under NumPy 2: not ours.)
    shown = [w for w in RUN_WARNINGS if not issubclass(w.category, DeprecationWarning)]
    assert [f"{w.category.__name__}: {w.message}" for w in shown] == []


def test_a_run_writes_every_artefact(finished_run):
    run_dir, summary = finished_run
    with open(os.path.join(run_dir, "config.json")) as file:
        assert json.load(file)["config"] == json.loads(json.dumps(check_config(TINY)))
    assert _csv_epochs(run_dir) == [0, 1]
    with open(os.path.join(run_dir, "metrics.csv")) as file:
        row = next(csv.DictReader(file))
    for column in ("loss", "accuracy", "val_loss", "val_accuracy", "stability/sensitivity/mean"):
        assert np.isfinite(float(row[column])), column
    assert _json_epochs(run_dir) == [0, 1, 2]
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    assert model.output_shape == (None, 3)
    with open(os.path.join(run_dir, "summary.json")) as file:
        assert json.load(file) == summary
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert not os.path.exists(os.path.join(run_dir, "backup"))
    # TensorBoard: Keras's scalars, the stability run on the same epoch axis, examples, HParams.
    assert [step for step, _ in _events(os.path.join(run_dir, "train"), "epoch_loss")] == [0, 1]
    assert [s for s, _ in _events(os.path.join(run_dir, "validation"), "epoch_accuracy")] == [0, 1]
    stability = os.path.join(run_dir, "stability")
    assert [step for step, _ in _events(stability, "sensitivity/mean")] == [-1, 0, 1]
    accumulator = EventAccumulator(os.path.join(run_dir, "train"), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert "training_examples" in accumulator.Tags()["tensors"]
    root = EventAccumulator(run_dir)
    root.Reload()
    hparams = root.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    columns = [info.name for info in experiment.hparam_infos]
    # The dashboard's first columns tell runs apart; the rest follow by name.
    first = ["model", "downsample", "dataset", "seed", "learning_rate", "epochs"]
    # then the precision used and the setting that chose it
    assert columns[:8] == [*first, "precision", "mixed_precision"]
    assert columns[8:] == sorted(columns[8:])
    assert sorted(columns) == sorted([*DEFAULTS, "precision"])
    session = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["downsample"].string_value == "max"


def test_a_finished_run_is_left_alone_and_other_flags_are_an_error(finished_run):
    run_dir, summary = finished_run
    before = {name: os.path.getmtime(os.path.join(run_dir, name)) for name in os.listdir(run_dir)}
    assert train_run(run_dir, verbose=0, **TINY) == summary
    with pytest.raises(ValueError, match=r"other settings \(downsample: 'max' there, 'avg' now"):
        train_run(run_dir, verbose=0, **{**TINY, "downsample": "avg"})
    after = {name: os.path.getmtime(os.path.join(run_dir, name)) for name in os.listdir(run_dir)}
    assert after == before
    # A run recorded before a setting existed ran with that setting's default: still the same run.
    path = os.path.join(run_dir, "config.json")
    with open(path) as file:
        recorded = json.load(file)
    older = {**recorded, "config": dict(recorded["config"])}
    del older["config"]["synthetic_prototypes"]
    with open(path, "w") as file:
        json.dump(older, file)
    try:
        assert train_run(run_dir, verbose=0, **TINY) == summary
        expected = "synthetic_prototypes: 'strokes' there, 'texture' now"
        with pytest.raises(ValueError, match=expected):
            train_run(run_dir, verbose=0, **{**TINY, "synthetic_prototypes": "texture"})
        # Except the BatchNormalization momentum, whose default changed (0.99 -> 0.9): a run
        # recorded without it trained with Keras's 0.99, and resumes only as such.
        del older["config"]["batch_norm_momentum"]
        with open(path, "w") as file:
            json.dump(older, file)
        assert training.read_config(run_dir)["batch_norm_momentum"] == 0.99
        expected = "batch_norm_momentum: 0.99 there, 0.9 now"
        with pytest.raises(ValueError, match=expected):
            train_run(run_dir, verbose=0, **TINY)
        assert train_run(run_dir, verbose=0, **{**TINY, "batch_norm_momentum": 0.99}) == summary
    finally:
        with open(path, "w") as file:
            json.dump(recorded, file)


def test_bad_settings_name_the_setting_and_write_nothing(tmp_path):
    run_dir = tmp_path / "run"
    cases = {
        "model": ({"model": "alexnet"}, "model='alexnet'"),
        "downsample": ({"downsample": "maxx"}, "downsample='maxx'"),
        "epochs": ({"epochs": 0}, "epochs=0"),
        "blocks": ({"model": "cifar_vgg"}, "`blocks` goes with"),
        "measures": ({"measures": ["curvature"]}, "measures="),
        "probe": ({"probe_size": 1}, "probe_size=1"),
        "folder": ({"dataset": f"folder:{tmp_path}/missing"}, "missing"),
        "unknown": ({"epochz": 3}, "epochz"),
        "prototypes": ({"synthetic_prototypes": "noise"}, "synthetic_prototypes='noise'"),
        # Settings that only the data rules out: checked before the run directory is made.
        "probe_size": (
            {"probe_size": 5000},
            r"`probe_size`=5000 exceeds the 1000 images of the test split of 'synthetic'",
        ),
        "grid_size": ({"grid_size": 1}, "grid_size=1"),
        "grid_size_image": ({"grid_size": 17}, r"at most the image size 16.*grid_size=17"),
        "cutoff": ({"deformation": "diffeo", "cutoff": 0}, "cutoff=0"),
        "classes": ({"synthetic_classes": 1}, "synthetic_classes=1"),
        "synthetic_grid": ({"synthetic_image_size": 2}, r"`synthetic_grid_size`.*image_size=2"),
        "translate": ({"augment": ["translate:100"]}, r"'translate:100'.*16x16"),
        "seed": ({"seed": -1}, "seed=-1"),
        "momentum": ({"momentum": 2.0}, r"`momentum` must be a number in \[0, 1\]"),
        "batch_norm_momentum": (
            {"batch_norm_momentum": -1}, r"`batch_norm_momentum` must be a number in \[0, 1\]"
        ),
        "blocks_flat": ({"blocks": [4, 8]}, r"`blocks` must be.*blocks=\[4, 8\]"),
        "dataset": ({"dataset": "no_such"}, "`dataset`='no_such'"),
        "measure_every": ({"measure_every": 3}, r"`measure_every`=3 exceeds `epochs`=2"),
        "output_dir": ({}, None),
    }
    for name, (settings, message) in cases.items():
        directory = run_dir
        if name == "output_dir":  # a path no one can create
            directory, message = tmp_path / "file" / "run", r"`output_dir` cannot be created"
            (tmp_path / "file").write_text("")
        with pytest.raises(ValueError, match=message):
            train_run(str(directory), verbose=0, **{**TINY, **settings})
        assert not run_dir.exists(), name
    for settings, error, message in [
        ({"random_labels": "no"}, TypeError, "random_labels='no'"),  # "no" would be true
        ({"measures": 42}, TypeError, "measures=42"),
    ]:
        with pytest.raises(error, match=message):
            train_run(str(run_dir), verbose=0, **{**TINY, **settings})
    with pytest.raises(ValueError, match="verbose=5"):
        train_run(str(run_dir), verbose=5, **TINY)
    assert not run_dir.exists()
    assert set(DEFAULTS) >= set(TINY)
    # One augmentation or measure as a string is that one, not a list of characters.
    for key, value in [("augment", "tps:grid_size=3,max_displacement=1"),
                       ("measures", "sensitivity")]:  # fmt: skip
        assert check_config({key: value})[key] == check_config({key: [value]})[key] == (value,)


def test_kill_9_mid_epoch_then_resume_loses_and_repeats_no_epoch(tmp_path):
    run_dir = str(tmp_path / "run")
    augment = "tps:grid_size=3,max_displacement=1"  # a seeded stream, as the shuffle
    args = [*TINY_FLAGS, "--epochs=4", "--synthetic_samples=1200",
            f"--augment={augment.replace(',', ';')}", f"--output_dir={run_dir}"]  # fmt: skip
    process = _train_script(args, start_new_session=True)
    deadline = time.time() + 240
    metrics = os.path.join(run_dir, "metrics.csv")
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 2:
            break  # the first epoch is complete; the second is under way
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(run_dir, "summary.json"))
    resumed = _train_script(args)
    out, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, err
    assert _csv_epochs(run_dir) == [0, 1, 2, 3]
    assert [s for s, _ in _events(os.path.join(run_dir, "train"), "epoch_loss")] == [0, 1, 2, 3]
    assert _json_epochs(run_dir) == [0, 1, 2, 3, 4]
    stability = os.path.join(run_dir, "stability")
    assert [s for s, _ in _events(stability, "sensitivity/mean")] == [-1, 0, 1, 2, 3]
    # The resumed process did not measure initialisation again: one "initialisation" profile.
    assert "test accuracy" in out
    # The training time counts both sessions: this one whole, and the epochs the first finished.
    seconds = json.load(open(os.path.join(run_dir, "epoch_seconds.json")))
    assert sorted(seconds) == ["0", "1", "2", "3"] and min(seconds.values()) > 0
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    first_session = range(4 - summary["epochs_last_session"])
    assert 1 <= summary["epochs_last_session"] <= 4
    earlier = sum(seconds[str(e)] for e in first_session)
    assert summary["wall_seconds"] == pytest.approx(summary["wall_seconds_last_session"] + earlier)
    assert summary["wall_seconds_last_session"] > sum(
        seconds[str(e)] for e in range(len(first_session), 4)
    )
    # The resumed run is the uninterrupted one, to the bit: it reads the batches that one reads.
    whole_dir = str(tmp_path / "whole")
    settings = {**TINY, "learning_rate": DEFAULTS["learning_rate"], "epochs": 4,
                "synthetic_samples": 1200, "augment": augment}  # fmt: skip
    whole = train_run(whole_dir, verbose=0, **settings)
    assert summary["test_accuracy"] == whole["test_accuracy"]
    for column in ("loss", "accuracy", "val_loss", "stability/sensitivity/mean"):
        assert _csv_column(run_dir, column) == _csv_column(whole_dir, column), column


def test_epoch_clock_drops_redone_epochs_and_knows_when_earlier_ones_are_unrecorded(tmp_path):
    path = tmp_path / "epoch_seconds.json"

    def resume_at(epoch, record):
        path.write_text(json.dumps(record))
        clock = training._EpochClock(str(tmp_path))
        clock.on_train_begin()
        clock.on_epoch_begin(epoch)
        clock.on_epoch_end(epoch)
        return clock, json.loads(path.read_text())

    # Epoch 2 was written, then killed before its backup: it is redone, its old time dropped.
    clock, written = resume_at(2, {"0": 1.5, "1": 2.0, "2": 9.0})
    assert clock.earlier_seconds() == 3.5
    assert sorted(written) == ["0", "1", "2"] and written["2"] < 9.0
    # A first session that kept no record (begun before the clock existed): unknown, not 0.
    clock, _ = resume_at(2, {"0": 1.5})
    assert clock.earlier_seconds() is None
    path.unlink()
    clock = training._EpochClock(str(tmp_path))
    clock.on_train_begin()
    clock.on_epoch_begin(0)
    assert clock.earlier_seconds() == 0


def test_tensorboard_server_shows_one_clean_picture(finished_run, tmp_path):
    """Through a real TensorBoard server: runs, grouped stability tags, values per step on
    Keras's epoch axis, no NaN, the profile image."""
    run_dir, _ = finished_run
    # Beside the trainer's run: a plain fit with the callback listed *before* Keras's
    # TensorBoard callback and a measurement every second epoch (issue: duplicates and NaN).
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="input")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = np.random.default_rng(0).random((32, 8, 8, 3)).astype("float32")
    plain_dir = os.path.join(os.path.dirname(run_dir), "plain")
    model.fit(
        images,
        np.arange(32) % 3,
        epochs=3,
        verbose=0,
        callbacks=[
            StabilityCallback(
                images[:6], lambda b: tf.roll(b, 1, 2), every_n_epochs=2, log_dir=plain_dir
            ),
            keras.callbacks.TensorBoard(plain_dir),
        ],
    )
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            os.path.dirname(run_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data"

    def get(path, **query):
        url = f"{base}/{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        return body if path.endswith("individualImage") else json.loads(body)

    try:
        deadline = time.time() + 90
        tags = {}
        while time.time() < deadline:
            try:
                tags = get("plugin/scalars/tags")
                if {"tiny/stability", "tiny/train", "plain/stability", "plain/train"} <= set(tags):
                    break
            except OSError:
                pass
            time.sleep(1)
        runs = get("runs")
        assert {"tiny/train", "tiny/validation", "tiny/stability"} <= set(runs)
        stability_tags = set(tags["tiny/stability"])
        assert {"sensitivity/mean", "sensitivity/block1_conv1", "smoothness/mean"} <= stability_tags
        assert not [tag for tag in tags["tiny/train"] if "stability" in tag]
        values = get("plugin/scalars/scalars", run="tiny/stability", tag="sensitivity/mean")
        assert [step for _, step, _ in values] == [-1, 0, 1]
        assert all(np.isfinite(value) for _, _, value in values)
        loss = get("plugin/scalars/scalars", run="tiny/train", tag="epoch_loss")
        assert [step for _, step, _ in loss] == [0, 1]
        profiles = get("plugin/images/images", run="tiny/stability", tag="profile", sample=0)
        assert [image["step"] for image in profiles] == [-1, 0, 1]
        # The plain fit: each measurement once, at its epoch's step, nothing on skipped epochs.
        assert not [tag for tag in tags["plain/train"] if "stability" in tag]
        values = get("plugin/scalars/scalars", run="plain/stability", tag="sensitivity/conv")
        assert [step for _, step, _ in values] == [-1, 1]
        loss = get("plugin/scalars/scalars", run="plain/train", tag="epoch_loss")
        assert [step for _, step, _ in loss] == [0, 1, 2]
        query = profiles[-1]["query"]
        with urllib.request.urlopen(f"{base}/plugin/images/individualImage?{query}") as response:
            png = response.read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_mirrored_on_two_logical_cpus(tmp_path):
    run_dir = str(tmp_path / "mirrored")
    process = _train_script(
        [
            *TINY_FLAGS,
            "--epochs=1",
            "--synthetic_samples=64",
            "--strategy=mirrored",
            "--cpu_devices=2",
            f"--output_dir={run_dir}",
        ]  # fmt: skip
    )
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "2 replicas" in err or "CPU:1" in err or os.path.exists(run_dir)
    assert _csv_epochs(run_dir) == [0]


def test_bad_flags_exit_with_one_line_naming_the_flag_and_write_nothing(tmp_path):
    """Every flag is checked before the run directory is made (issue: a mistyped flag at the end
    of a long command left a half-written run that the corrected command then refused)."""
    bad = str(tmp_path / "bad")
    (tmp_path / "a_file").write_text("")
    cases = [
        ("--downsample=maxx", "downsample='maxx'"),
        ("--epochs=0", "epochs=0"),
        ("--dataset=folder:/nonexistent/tree", "/nonexistent/tree"),
        ("--model=alexnet", "--model=alexnet"),
        ("--probe_size=5000", "`probe_size`=5000 exceeds the 1000 images of the test split"),
        ("--grid_size=1", "grid_size=1"),
        ("--grid_size=17", "at most the image size 16"),
        ("--deformation=diffeo --cutoff=0", "cutoff=0"),
        ("--cpu_devices=-1", "--cpu_devices=-1"),
        # A split CPU only serves MirroredStrategy: elsewhere it would change nothing, silently.
        ("--cpu_devices=2", "--cpu_devices=2 splits the CPU into devices for --strategy=mirrored"),
        ("--cpu_devices=2", "only; with --strategy=default it would change nothing"),
        ("--synthetic_image_size=2", "`synthetic_grid_size` must be in 2..synthetic_image_size=2"),
        ("--synthetic_grid_size=1", "synthetic_grid_size=1"),
        ("--synthetic_classes=1", "synthetic_classes=1"),
        ("--synthetic_displacement=-1", "synthetic_displacement=-1"),
        ("--seed=-1", "seed=-1"),
        ("--momentum=2", "momentum=2"),
        ("--verbose=7", "--verbose=7"),
        ("--augment=translate:abc", "'translate:abc'"),
        ("--augment=translate:100", "'translate:100' translates by up to 100 pixels"),
        ("--augment=tps:grid_size=40", "'tps:grid_size=40'"),
        ("--dataset=no_such", "`dataset`='no_such'"),
        (f"--output_dir={tmp_path}/a_file/run", "`output_dir` cannot be created"),
        # offline: a TFDS dataset missing from --data_dir is not downloaded
        (f"--dataset=cifar10 --data_dir={tmp_path}/tfds --nodownload", "download=False"),
    ]
    results = run_cases(
        "trainers.train",
        [[*TINY_FLAGS, f"--output_dir={bad}", *flag.split()] for flag, _ in cases],
    )
    for (flag, message), (code, lines) in zip(cases, results, strict=True):
        assert code == 1, (flag, lines)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
            flag,
            lines,
        )
        assert "\x1b[" not in lines[0], lines  # no terminal colour codes from Keras
        assert not os.path.exists(bad), flag


def test_data_dir_where_no_tfds_dataset_reads_it_is_ignored_with_a_warning(tmp_path, capsys):
    """Issue 26: `data_dir` with synthetic or image-folder data changed nothing but was recorded
    as a setting, so the same run without it was refused."""
    run_dir = str(tmp_path / "run")
    settings = {**TINY, "epochs": 1, "synthetic_samples": 32, "measures": []}
    summary = train_run(run_dir, verbose=1, data_dir=str(tmp_path / "tfds"), **settings)
    err = capsys.readouterr().err
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warning == (
        f"warning: `data_dir`={str(tmp_path / 'tfds')!r} has no effect on dataset='synthetic' "
        "(only TFDS datasets read it): ignored, and not recorded as a setting of the run."
    )
    with open(os.path.join(run_dir, "config.json")) as file:
        recorded = json.load(file)
    assert recorded["config"]["data_dir"] is None
    assert train_run(run_dir, verbose=0, **settings) == summary  # the same run, without it
    # A run recorded with it (before this fix) is the same run too, with or without it.
    recorded["config"]["data_dir"] = "/somewhere"
    with open(os.path.join(run_dir, "config.json"), "w") as file:
        json.dump(recorded, file)
    assert train_run(run_dir, verbose=0, **settings) == summary
    assert train_run(run_dir, verbose=0, data_dir="/elsewhere", **settings) == summary
    # Image folders ignore it too; TFDS datasets keep it (it is where their files are).
    assert check_config({"dataset": "folder:/images", "data_dir": "/x"})["data_dir"] is None
    assert check_config({"dataset": "cifar10", "data_dir": "/x"})["data_dir"] == "/x"
    with pytest.raises(TypeError, match="data_dir=5"):  # still checked
        check_config({"data_dir": 5})


def _worker_config(ports, index=0):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def test_multi_worker_checks_tf_config_and_its_timeout_first(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    settings = {**TINY, "strategy": "multi_worker"}
    for value, error in [(0, ValueError), (-1, ValueError), ("5", ValueError)]:
        with pytest.raises(error, match=f"`cluster_timeout`.*cluster_timeout={value!r}"):
            train_run(str(run_dir), verbose=0, cluster_timeout=value, **settings)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        train_run(str(run_dir), verbose=0, **settings)
    for text, message in [
        ("{cluster", r"`TF_CONFIG` must be JSON such as .*TF_CONFIG='\{cluster'"),
        ('{"cluster": {"worker": ["nohost"]}}', r"'nohost' is not a host:port address"),
        ('{"cluster": {"ps": ["h:1"]}}', r"names no chief or worker task"),
    ]:
        monkeypatch.setenv("TF_CONFIG", text)
        with pytest.raises(ValueError, match=message):
            train_run(str(run_dir), verbose=0, **settings)
    assert not run_dir.exists()
    config = {"cluster": {"chief": ["a:1"], "worker": {"1": "[::1]:3"}}, "task": {"type": "chief"}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert training._tf_config_tasks() == (("chief 0", "a:1"), {"worker 1": "[::1]:3"})
    assert training._host_port("[::1]:3") == ("::1", 3)


def test_a_worker_whose_peer_never_joins_says_so_gives_up_and_stops_on_sigterm(tmp_path):
    """Issue 26: with TF_CONFIG naming a worker that never starts, `--strategy=multi_worker`
    waited forever, printed nothing and ignored SIGTERM. Three workers 0, started together (one
    TensorFlow import of wall time): worker 1 never starts (a 2 s timeout; SIGTERM), or it
    answers on its port but never joins TensorFlow's cluster (a 2 s timeout)."""
    answering = socket.create_server(("127.0.0.1", 0))  # a port that answers, not a worker
    cases = {
        "timeout": ([_free_port(), _free_port()], ["--cluster_timeout=2"]),
        "sigterm": ([_free_port(), _free_port()], []),  # the default timeout: 300 s
        "no_join": ([_free_port(), answering.getsockname()[1]], ["--cluster_timeout=2"]),
    }
    processes, logs = {}, {}
    for name, (ports, flags) in cases.items():
        logs[name] = tmp_path / f"{name}.err"
        args = [*TINY_FLAGS, "--strategy=multi_worker", *flags, f"--output_dir={tmp_path / name}"]
        with open(logs[name], "w") as log:
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "trainers.train", *args],
                cwd=ROOT,
                env={**os.environ, "TF_CONFIG": _worker_config(ports)},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
    try:
        seen = {}  # when each says whom it waits for
        deadline = time.time() + 300
        while len(seen) < len(cases) and time.time() < deadline:
            for name, (ports, _) in cases.items():
                text = logs[name].read_text()
                line = (
                    f"for the other workers of TF_CONFIG: worker 1 at 127.0.0.1:{ports[1]} "
                    f"(this is worker 0 at 127.0.0.1:{ports[0]})."
                )
                if name not in seen and line in text:
                    seen[name] = time.time()
                assert name in seen or processes[name].poll() is None, text[-3000:]
            time.sleep(0.1)
        assert set(seen) == set(cases), {name: logs[name].read_text()[-2000:] for name in cases}
        assert "Waiting up to 2 s" in logs["timeout"].read_text()
        assert "Waiting up to 300 s" in logs["sigterm"].read_text()

        processes["sigterm"].send_signal(signal.SIGTERM)
        assert processes["sigterm"].wait(timeout=10) == -signal.SIGTERM
        assert time.time() - seen["sigterm"] < 15

        for name, expected in [
            ("timeout", "did not start within cluster_timeout=2 s: no answer from worker 1 at "),
            ("no_join", "joined TensorFlow's cluster within cluster_timeout=2 s: worker 1 at "),
        ]:
            assert processes[name].wait(timeout=60) == 1, logs[name].read_text()[-3000:]
            assert time.time() - seen[name] < 60
            # One line of ours (TensorFlow logs its own errors around it).
            (line,) = [x for x in logs[name].read_text().splitlines() if x.startswith("error: ")]
            assert expected in line and f"127.0.0.1:{cases[name][0][1]}" in line, line
        for name in cases:
            assert not (tmp_path / name).exists(), name  # nothing written
    finally:
        answering.close()
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def test_multi_worker_with_two_local_processes(tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    run_dir = str(tmp_path / "multi")
    workers = [
        _train_script(
            [
                *TINY_FLAGS,
                "--epochs=1",
                "--synthetic_samples=64",
                "--strategy=multi_worker",
                f"--output_dir={run_dir}",
            ],  # fmt: skip
            env={
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                )
            },
        )
        for index in range(2)
    ]
    for worker in workers:
        out, err = worker.communicate(timeout=400)
        assert worker.returncode == 0, err[-3000:]
    # Only the chief (worker 0) wrote the run directory.
    assert _csv_epochs(run_dir) == [0]
    assert os.path.exists(os.path.join(run_dir, "summary.json"))
    assert not [name for name in os.listdir(tmp_path) if name != "multi"]


def test_mixed_precision_smoothing_and_augmentation_options(tmp_path):
    run_dir = str(tmp_path / "options")
    settings = {**TINY, "epochs": 1, "measures": ["smoothness"], "smooth_init_sigma": 2.0}
    summary = train_run(
        run_dir, verbose=0, mixed_precision="bfloat16",
        augment=["standard", "tps:max_displacement=1"], **settings,
    )  # fmt: skip
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    assert summary["precision"] == "bfloat16"
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    assert model.get_layer("block1_conv1_conv").compute_dtype == "bfloat16"
    assert model.get_layer("block1_conv1_conv").variable_dtype == "float32"
    with open(os.path.join(run_dir, "stability", "measurements.json")) as file:
        initial = json.load(file)["history"][0]["results"]["smoothness"]["values"]
    # Gaussian-smoothed initial filters: far below the ~1.86 TV/L1 of random 3x3 kernels.
    assert max(initial.values()) < 1.0
    assert np.isfinite(summary["test_loss"])


def _json_history(run_dir):
    with open(os.path.join(run_dir, "stability", "measurements.json")) as file:
        return [record["results"] for record in json.load(file)["history"]]


def _cpu_flags():
    with open("/proc/cpuinfo") as file:
        return next(line for line in file if line.startswith("flags")).split()


class _FakeJaxDevice:
    def __init__(self, platform, compute_capability=None):
        self.platform = platform
        if compute_capability is not None:
            self.compute_capability = compute_capability


@pytest.mark.parametrize(
    "backend, stubs, expected",
    [
        ("jax", {"devices": [_FakeJaxDevice("gpu", "9.0")]}, ("gpu", (9, 0), "bfloat16")),
        ("jax", {"devices": [_FakeJaxDevice("gpu", "7.5")]}, ("gpu", (7, 5), "float16")),
        ("jax", {"devices": [_FakeJaxDevice("tpu")]}, ("tpu", None, "bfloat16")),
        ("torch", {"cuda": (8, 6)}, ("gpu", (8, 6), "bfloat16")),
        ("torch", {"cuda": (7, 0)}, ("gpu", (7, 0), "float16")),
        ("tensorflow", {"tf_gpu": (8, 0)}, ("gpu", (8, 0), "bfloat16")),
        ("tensorflow", {"tf_gpu": (6, 1)}, ("gpu", (6, 1), "float16")),
    ],
)
def test_precision_auto_asks_the_active_backend_for_its_accelerator(
    monkeypatch, backend, stubs, expected
):
    """Each backend's own device query (stubbed here) decides `"auto"`: a JAX or PyTorch user's
    GPU counts although TensorFlow (the CPU build) sees none, and TensorFlow's GPUs do not
    count for another backend."""
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    # TensorFlow sees a GPU only in its own cases: another backend must not ask it.
    tf_gpus = ["GPU:0"] if "tf_gpu" in stubs else []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: tf_gpus)
    monkeypatch.setattr(
        tf.config.experimental,
        "get_device_details",
        lambda device: {"compute_capability": stubs["tf_gpu"]},
    )
    if backend == "jax":
        import jax

        monkeypatch.setattr(jax, "devices", lambda *args: stubs["devices"])
    if backend == "torch":
        torch = pytest.importorskip("torch")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: stubs["cuda"])
    kind, capability, precision = expected
    assert training.accelerator() == (kind, capability)
    assert training.resolve_precision("auto") == precision


def test_precision_auto_on_a_cpu_follows_its_bfloat16_flags_whatever_tensorflow_sees(monkeypatch):
    import jax

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(jax, "devices", lambda *args: [_FakeJaxDevice("cpu")])
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    monkeypatch.setattr(training, "cpu_bfloat16_path", lambda: None)
    assert training.accelerator() is None
    assert training.resolve_precision("auto") == "float32"
    monkeypatch.setattr(training, "cpu_bfloat16_path", lambda: "avx512_bf16")
    assert training.resolve_precision("auto") == "bfloat16"


def test_precision_auto_is_resolved_recorded_and_kept_on_resume(tmp_path, monkeypatch, capsys):
    native = {"amx_bf16", "avx512_bf16"} & set(_cpu_flags())
    expected = "bfloat16" if native else "float32"
    assert training.resolve_precision("auto") == expected
    assert training.resolve_precision("float16") == "float16"
    with pytest.raises(ValueError, match="mixed_precision='half'"):
        training.resolve_precision("half")
    run_dir = str(tmp_path / "auto")
    settings = {**TINY, "epochs": 1, "measures": ["smoothness"]}
    assert train_run(run_dir, verbose=0, **settings)["precision"] == expected
    with open(os.path.join(run_dir, "config.json")) as file:
        recorded = json.load(file)
    assert (recorded["precision"], recorded["config"]["mixed_precision"]) == (expected, "auto")
    # Resumed on a machine whose "auto" picks another precision: the recorded one is kept.
    os.remove(os.path.join(run_dir, "summary.json"))
    other = "float32" if expected == "bfloat16" else "bfloat16"
    monkeypatch.setattr(training, "resolve_precision", lambda setting="auto": other)
    assert train_run(run_dir, verbose=1, **settings)["precision"] == expected
    assert f"Resuming {run_dir} in {expected}" in capsys.readouterr().out
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    assert model.get_layer("block1_conv1_conv").compute_dtype == expected
    # A run recorded when the setting was a bool (False: float32) is the same run as float32.
    recorded["config"]["mixed_precision"] = False
    del recorded["precision"]
    with open(os.path.join(run_dir, "config.json"), "w") as file:
        json.dump(recorded, file)
    with pytest.raises(ValueError, match="mixed_precision: 'float32' there, 'auto' now"):
        train_run(run_dir, verbose=0, **settings)


def test_the_same_seed_gives_the_same_numbers_on_a_busy_machine(tmp_path):
    """Op determinism (the default): two runs of one command agree to the last digit while other
    processes load the CPU (thread timing changed the numbers before, at this size too)."""
    settings = {"epochs": 2, "synthetic_samples": 384, "probe_size": 16, "batch_size": 64}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for name in ("a", "b"):
            train_run(str(tmp_path / name), verbose=0, **settings)
    finally:
        for process in busy:
            process.kill()
    with open(tmp_path / "a" / "metrics.csv") as a, open(tmp_path / "b" / "metrics.csv") as b:
        assert a.read() == b.read()
    a, b = (_json_history(tmp_path / name) for name in ("a", "b"))
    assert a == b and len(a) == 3
    assert not tf_config.is_op_determinism_enabled()  # restored after the run


def test_the_train_flags_default_to_the_defaults_of_train_run():
    # In a subprocess: trainers.train and trainers.measure define flags of the same names.
    code = (
        "import json; from absl import flags; from trainers import train; "
        "print(json.dumps({n: f.default for n, f in flags.FLAGS._flags().items()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    defaults = json.loads(out.strip().splitlines()[-1])

    def plain(value):
        return tuple(value) if isinstance(value, list | tuple) else value

    names = [name for name in DEFAULTS if name in defaults]
    assert len(names) == len(DEFAULTS)  # every setting of train_run is a flag
    for name in names:
        if name == "jit_compile":  # the flag is a string: "auto", "true", "false"
            continue
        assert plain(defaults[name]) == plain(DEFAULTS[name]), name
    assert defaults["cluster_timeout"] == training.CLUSTER_TIMEOUT  # not a setting of the run


def test_a_reference_model_trains_and_rejects_the_switch_settings(tmp_path):
    # LeNet on the tiny task's 16x16 images (the smallest it takes): one epoch, measured.
    run_dir = str(tmp_path / "lenet")
    summary = train_run(run_dir, verbose=0, **{**TINY, "model": "lenet", "blocks": None,
                                               "epochs": 1})  # fmt: skip
    assert summary["epochs_completed"] == 1 and np.isfinite(summary["test_loss"])
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    assert model.get_layer("pool2").output.shape == (None, 1, 1, 16)
    sensitivity = _json_history(run_dir)[-1]["sensitivity"]["values"]
    assert list(sensitivity)[-1] == "logits"  # the "units" probe points end at the output
    for settings, message in [
        ({"model": "lenet", "downsample": "blur"}, r"lenet has no `downsample`.*downsample='blur'"),
        ({"model": "fully_connected", "head": "flatten"}, r"fully_connected has no `head`"),
        ({"model": "mobilenet_v2", "pool_size": 3}, r"mobilenet_v2 has no `pool_size`"),
        ({"model": "lenet", "batch_norm_momentum": 0.5}, r"lenet has no `batch_norm_momentum`"),
        ({"model": "efficientnet_b0", "blocks": [[4]]}, r"`blocks` goes with model='vgg'"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_config(settings)
    # The keras.applications models take the run's momentum (not their ImageNet 0.999 / 0.99).
    config = check_config({"model": "mobilenet_v2", "batch_norm_momentum": 0.5})
    model = training.build_model(config, (32, 32, 3), 10)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 52 and {layer.momentum for layer in norms} == {0.5}
    # No kernel, so no smoothness: left out of the summary (not a NaN mean), with a warning.
    run_dir = str(tmp_path / "fully_connected")
    with pytest.warns(UserWarning, match="'smoothness' has no probe point"):
        summary = train_run(run_dir, verbose=0, **{**TINY, "model": "fully_connected",
                                                   "blocks": None, "epochs": 1})  # fmt: skip
    assert list(summary["stability"]) == ["sensitivity"]
    assert np.isfinite(summary["stability"]["sensitivity"])


def test_validate_every_validates_only_every_nth_epoch_and_the_last(tmp_path):
    run_dir = str(tmp_path / "every2")
    train_run(run_dir, verbose=0, **{**TINY, "epochs": 4, "validate_every": 2, "measures": []})
    with open(os.path.join(run_dir, "metrics.csv")) as file:
        rows = list(csv.DictReader(file))
    assert [row["val_accuracy"] == "NA" for row in rows] == [True, False, True, False]
    assert all(row["accuracy"] not in ("", "NA") for row in rows)
    with pytest.raises(ValueError, match=r"`validate_every`=3 must divide `epochs`=4"):
        check_config({"epochs": 4, "validate_every": 3})
    with pytest.raises(ValueError, match="validate_every"):
        check_config({"validate_every": 0})
