"""Every private name of Keras the package uses, in one place.

Keras's public API does not reach everything the package does: reading a functional model's
graph (to probe nested layers and to tell which weights a probe point depends on), switching
between backend namespaces inside `tf.data`, ordering sibling callbacks, and working around two
defects of `fit` under `MultiWorkerMirroredStrategy`. Each private name is used here only, with
why and the Keras versions it was checked against: the installed Keras when this was written
(3.15.1) and the oldest that `pyproject.toml` allows (3.14.0; CI runs the backend-independent
tests on it, `.ci/run`). After a Keras upgrade, what breaks is in this file.

(Names private to TensorFlow, used where the package configures TensorFlow itself, stay beside
their use in `training.py`: op determinism's state and the coordination service of a
multi-worker cluster; `tests/backends.py` patches Keras's torch backend in tests only.)
"""

import contextlib
import re
import sys

import keras

# Keras's own switch between backend namespaces, what its preprocessing layers use to run in
# `tf.data` on any backend (`DataLayer`'s `self.backend`): `DynamicBackend(name)` is the ops
# namespace of one backend, `in_tf_graph()` tells a TensorFlow graph (`tf.data`, `tf.function`)
# from eager code. No public equivalent. Same module and behaviour in Keras 3.3.3 to 3.15.1.
from keras.src.utils.backend_utils import DynamicBackend, in_tf_graph  # noqa: F401


def _version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


KERAS_VERSION = _version(keras.version())


# -- functional graphs (`measures/features.py`, `measures/consistency.py`) ------------------------
# Keras has no public API for a functional model's graph of layer calls: `model.layers` and
# `layer.output` reach top-level layers only. To probe layers inside nested models, to select
# probe points by what follows a layer, and to know which weights a probe point is computed from
# (a diverged network), the graph's nodes are read. These attributes are the same from Keras
# 3.3.3 to 3.15.1.


def functional_graph(layer):
    """The functional graph of a model (functional, or a built `Sequential`'s inner functional
    model, `Sequential._functional`), or None for a layer or a model without one (subclassed)."""
    if not isinstance(layer, keras.Model):
        return None
    graph = getattr(layer, "_functional", None) if isinstance(layer, keras.Sequential) else layer
    return graph if hasattr(graph, "_nodes_by_depth") else None


def graph_node_ids(graph):
    """The ids of the nodes (layer calls) of a functional `graph` itself: `_nodes_by_depth`
    (calls of its layers made elsewhere, e.g. by re-running the graph, are not among them)."""
    return {id(node) for level in graph._nodes_by_depth.values() for node in level}


def outbound_nodes(layer):
    """The nodes (calls) that consume `layer`'s outputs, `layer._outbound_nodes`."""
    return getattr(layer, "_outbound_nodes", [])


def keras_history(tensor):
    """A symbolic tensor's `(operation, node_index, tensor_index)`, `_keras_history`; None for a
    tensor that no layer call made."""
    return getattr(tensor, "_keras_history", None)


def input_tensors(history):
    """The symbolic inputs of the call that made a tensor (`keras_history`):
    `operation._inbound_nodes[node_index].input_tensors`."""
    return history.operation._inbound_nodes[history.node_index].input_tensors


def inputs_struct(model):
    """The nesting of a functional model's inputs (a tensor, a list or a dict), `_inputs_struct`:
    what `keras.tree.pack_sequence_as` needs to call the model on a flat list of inputs."""
    return model._inputs_struct


def run_through_graph(graph, inputs, operation_fn):
    """Re-runs a functional `graph` on `inputs`, each layer call going through
    `operation_fn(operation) -> callable` (`Functional._run_through_graph`): how nested models
    are inlined so that their inner layers become tensors of the outer graph."""
    return graph._run_through_graph(inputs, operation_fn=operation_fn)


def all_layers(model):
    """`model` and every layer inside it, nested ones too (`_flatten_layers`; the public
    `model.layers` is one level)."""
    return model._flatten_layers(include_self=True, recursive=True)


# -- callbacks (`callbacks.py`) --------------------------------------------------------------------
# Keras gives a callback no handle on its siblings and no public way to order them (checked in
# Keras 3.15.1: `Callback` has `model` and `params` only). `StabilityCallback` must run after any
# `TensorBoard` callback of the same `fit`, so it finds the `CallbackList` calling its hook on the
# call stack; `CallbackList.callbacks` (a public attribute) is then rebound. The list calls each
# callback's hook from its own method of the same name (Keras 3.3.3 to 3.15.1).

_STACK_DEPTH = 8  # frames searched above the hook


def calling_callback_list(callback):
    """The `keras.callbacks.CallbackList` whose hook is calling `callback`'s (searched on the
    call stack, at most `_STACK_DEPTH` frames up), or None when something else calls it."""
    frame = sys._getframe(1)
    for _ in range(_STACK_DEPTH):
        frame = frame.f_back
        if frame is None:
            return None
        caller = frame.f_locals.get("self")
        if isinstance(caller, keras.callbacks.CallbackList) and any(
            c is callback for c in caller.callbacks
        ):
            return caller
    return None


# -- resuming a fit (`training.py`) ---------------------------------------------------------------
# `BackupAndRestore` restores a fit's weights and epoch when the fit begins and hands the epoch to
# `fit` in the model's private `_initial_epoch`: too late for the training data, whose one
# iterator must first be advanced past the epochs already done for a resumed run to see what an
# uninterrupted one sees. So the backup is restored before `fit` (which restores it again, to the
# same state) and its epoch read there. Same names in Keras 3.14.0 and 3.15.1.


def restore_backup(backup, model):
    """Restores `backup` (a `keras.callbacks.BackupAndRestore`) into the built `model` now; the
    epoch the fit resumes at (0 without a backup)."""
    backup.set_model(model)
    backup.on_train_begin()
    return model._initial_epoch or 0


# -- multi-worker training (`training.py`) ---------------------------------------------------------
# Two defects of Keras's TensorFlow trainer with `MultiWorkerMirroredStrategy` (tensorflow#72388):
#
# - `reduce_per_replica` reduces the per-step logs of a multi-worker strategy with
#   `strategy.reduce("MEAN", v, axis=0)`, which fails for the rank-0 scalars `fit` and
#   `evaluate` log. In every Keras 3 release up to 3.15.1 (the newest checked); no release fixes
#   it yet, so a later one is taken as affected until checked (then set the bound here).
# - since Keras 3.5.0 (`_maybe_symbolic_build`, "Reland tf distribute fix"), `fit` and `evaluate`
#   first build the model from a batch reduced across workers with `strategy.reduce` over the
#   whole (images, labels) tuple, which the collectives reject. The build needs shapes only, so
#   it is done once from a local batch, and the reducing build is skipped while the run lasts.
MULTI_WORKER_REDUCE_AFFECTED = ((3, 0, 0), None)  # [from, to): None = no fixed release known
MULTI_WORKER_BUILD_AFFECTED = ((3, 5, 0), None)


def _affected(versions, version=None):
    low, high = versions
    version = KERAS_VERSION if version is None else version
    return version >= low and (high is None or version < high)


@contextlib.contextmanager
def multi_worker_fit(model, strategy, data):
    """Inside the block, `model.fit` / `model.evaluate` work under a `MultiWorkerMirroredStrategy`
    (the two defects above, where the installed Keras has them); everything patched is restored
    on exit.

    Args:
        model: the compiled model, created in `strategy.scope()`.
        strategy: the `tf.distribute.MultiWorkerMirroredStrategy`.
        data: the training `tf.data.Dataset` (one local batch builds the model).
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as keras_trainer

    restore = []
    if _affected(MULTI_WORKER_BUILD_AFFECTED) and hasattr(model, "_maybe_symbolic_build"):
        with strategy.scope():
            model._symbolic_build(data_batch=next(iter(data)))
        model._maybe_symbolic_build = lambda *args, **kwargs: None  # an instance attribute
        restore.append(lambda: delattr(model, "_maybe_symbolic_build"))
    if _affected(MULTI_WORKER_REDUCE_AFFECTED):
        original = keras_trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if reduction in ("auto", "mean") and isinstance(
                strategy, tf.distribute.MultiWorkerMirroredStrategy
            ):
                return tf.nest.map_structure(
                    lambda v: strategy.reduce("MEAN", v, axis=None if v.shape.rank == 0 else 0),
                    values,
                )
            return original(values, strategy, reduction)

        keras_trainer.reduce_per_replica = reduce_per_replica
        restore.append(lambda: setattr(keras_trainer, "reduce_per_replica", original))
    try:
        yield model
    finally:
        for undo in reversed(restore):
            undo()
