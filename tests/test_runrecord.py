"""The run record (`deformstab_tf.runrecord`): the one atomic JSON writer, the readers and the
stability history's codec; and the Keras internals kept in `deformstab_tf._keras_internals`."""

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from deformstab_tf import _keras_internals, runrecord
from deformstab_tf.measures import MeasureResult


def test_write_json_is_atomic_and_writes_what_json_dumps_writes(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "record.json"
    document = {"a": [1, 2.5], "b": math.nan, "c": {"d": "e"}}
    runrecord.write_json(path, document)
    assert path.read_text() == json.dumps(document, indent=1)
    assert runrecord.read_json(path)["c"] == {"d": "e"}

    # A write cut off (here: unserialisable) leaves the old file whole and no temporary file.
    with pytest.raises(TypeError):
        runrecord.write_json(path, {"bad": object()})
    assert path.read_text() == json.dumps(document, indent=1)

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        runrecord.write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == json.dumps(document, indent=1)
    assert sorted(os.listdir(path.parent)) == ["record.json"]


def test_readers_of_a_run_directory(tmp_path):
    assert runrecord.read_config_document(tmp_path) is None
    assert runrecord.read_summary(tmp_path) is None and not runrecord.is_complete(tmp_path)
    assert runrecord.read_metrics(tmp_path) == {}
    (tmp_path / "config.json").write_text('{"version": "0.1.0"}')
    with pytest.raises(ValueError, match="is not a run's configuration"):
        runrecord.read_config_document(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json' is not valid JSON"):
        runrecord.read_config_document(tmp_path)
    (tmp_path / "summary.json").write_text("[1]")
    with pytest.raises(ValueError, match="is not a run summary"):
        runrecord.read_summary(tmp_path)
    assert runrecord.is_complete(tmp_path)
    (tmp_path / "metrics.csv").write_text("epoch,accuracy,val_accuracy\n0,0.5,NA\n1,0.6,0.7\n")
    metrics = runrecord.read_metrics(tmp_path)
    assert metrics["accuracy"] == [0.5, 0.6] and math.isnan(metrics["val_accuracy"][0])
    runrecord.truncate_metrics(tmp_path, 1)  # a resumed run redoes epoch 1
    assert (tmp_path / "metrics.csv").read_text() == "epoch,accuracy,val_accuracy\n0,0.5,NA\n"


def test_stability_history_round_trips_through_its_codec(tmp_path):
    history = [
        {
            "epoch": epoch,
            "step": epoch - 1,
            "results": {
                "relative_stability": MeasureResult(
                    "relative_stability", {"input": 1.0, "conv": 0.5 + epoch},
                    details={"D": {"input": 2.0, "conv": 1.0}, "G": {"input": 2.0, "conv": 2.0}},
                )
            },
        }
        for epoch in (0, 1)
    ]  # fmt: skip
    identity = {"measures": ["relative_stability"], "seed": 0}
    assert runrecord.read_stability(tmp_path) == (None, None)
    runrecord.write_stability(tmp_path, identity, 1, history)
    document, decoded = runrecord.read_stability(tmp_path)
    assert document["seed"] == 0 and document["every_n_epochs"] == 1
    assert decoded == history
    path = runrecord.measurements_path(tmp_path)
    assert path == os.path.join(tmp_path, "stability", "measurements.json")
    with pytest.raises(ValueError, match='holds no "history" list'):
        runrecord.decode_history({"seed": 0}, path)
    with pytest.raises(ValueError, match="holds a malformed measurement"):
        runrecord.decode_history({"history": [{"epoch": 0}]}, path)


def test_multi_worker_workarounds_are_scoped_to_the_block():
    from keras.src.backend.tensorflow import trainer as keras_trainer

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    data = tf.data.Dataset.from_tensor_slices((np.ones((4, 4)), np.ones((4, 2)))).batch(2)
    original = keras_trainer.reduce_per_replica
    with _keras_internals.multi_worker_fit(model, tf.distribute.get_strategy(), data):
        assert keras_trainer.reduce_per_replica is not original
        assert "_maybe_symbolic_build" in vars(model)
        model.fit(data, epochs=1, verbose=0)  # the patched reduction passes others through
    assert keras_trainer.reduce_per_replica is original
    assert "_maybe_symbolic_build" not in vars(model)
    # gated on the affected Keras versions
    assert not _keras_internals._affected(((3, 5, 0), None), (3, 4, 1))
    assert _keras_internals._affected(((3, 5, 0), None), (3, 15, 1))
    assert not _keras_internals._affected(((3, 0, 0), (3, 16, 0)), (3, 16, 0))


def test_the_calling_callback_list_is_found_on_the_stack():
    found = []

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            found.append(_keras_internals.calling_callback_list(self))

    probe = Probe()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(np.ones((2, 2)), np.ones((2, 1)), epochs=1, verbose=0, callbacks=[probe])
    assert isinstance(found[0], keras.callbacks.CallbackList)
    assert any(c is probe for c in found[0].callbacks)
    probe.on_train_begin()  # called by hand: no list
    assert found[1] is None
