"""pytest set-up for the whole repository: quiet TensorFlow, and what the docstring examples
of the package (`--doctest-modules deformstab_tf`) find in their namespace."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import importlib.util  # noqa: E402

import pytest  # noqa: E402
from _pytest.doctest import DoctestItem  # noqa: E402


def pytest_configure(config):
    # README's test command ends with a PyTorch run; where PyTorch is not installed (it is no
    # dependency: `pip install torch`), that run says so and passes instead of failing to import.
    if os.environ["KERAS_BACKEND"] == "torch" and importlib.util.find_spec("torch") is None:
        pytest.exit("KERAS_BACKEND=torch, but PyTorch is not installed: skipped.", returncode=0)


@pytest.fixture(autouse=True)
def _doctest_namespace(request):
    """For docstring examples only: `np`, `tf`, `keras`, `ops`, `deformstab_tf` (also as `ds`)
    and the module's own names; a fresh scratch directory as the working directory (examples
    write `runs/`, `profile.png`, ...), fixed Keras seeds and matplotlib's Agg backend."""
    if not isinstance(request.node, DoctestItem):
        yield
        return
    import keras
    import matplotlib
    import numpy as np
    import tensorflow as tf

    import deformstab_tf

    matplotlib.use("Agg")
    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(
        np=np, tf=tf, keras=keras, ops=keras.ops, deformstab_tf=deformstab_tf, ds=deformstab_tf
    )
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.chdir(request.getfixturevalue("tmp_path"))
    keras.utils.set_random_seed(0)
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
