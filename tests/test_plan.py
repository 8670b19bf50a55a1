"""The measurement plan (`deformstab_tf.measures.plan`): one registry that the callback, the
reports and training read, and a new measure that is one entry there."""

import json
import os

import keras
import numpy as np
import pytest

from deformstab_tf import callbacks, reports, training
from deformstab_tf.deformations.layers import deformation_layer
from deformstab_tf.measures import MeasureResult, ProbeFeatures, plan
from deformstab_tf.models import build_vgg


def _model():
    keras.utils.set_random_seed(0)
    return build_vgg([(4,), (8,)], input_shape=(16, 16, 3), num_classes=3)


def _images(count=8):
    return np.random.default_rng(0).random((count, 16, 16, 3), dtype="float32")


def test_the_registry_is_the_one_list_of_measures():
    assert plan.NAMES == tuple(plan.MEASURES)
    assert callbacks.MEASURES == reports.REPORT_MEASURES == plan.NAMES
    assert plan.NAMES == (
        "sensitivity",
        "relative_stability",
        "shift_consistency",
        "translation_map",
        "smoothness",
    )
    assert plan.deformation_measures() == ("sensitivity", "relative_stability")
    assert not plan.needs_images(["smoothness"])
    assert plan.needs_images(["smoothness", "sensitivity"])
    assert [n for n, m in plan.MEASURES.items() if not m.per_layer] == ["shift_consistency"]
    assert plan.components("relative_stability") == ("D", "G")
    assert plan.log_scale("relative_stability") and not plan.log_scale("sensitivity")
    # names the registry does not know (a user's own results) are drawn as profiles
    assert plan.per_layer("my_measure") and plan.components("my_measure") == ()
    for name, entry in plan.MEASURES.items():
        assert entry.name == name and entry.axis_label and entry.description


def test_a_plan_prepared_once_gives_what_the_measures_give_alone():
    model, images = _model(), _images()
    tps = deformation_layer("tps", 1.0, seed=0)
    probe = plan.prepare(model, plan.NAMES, images, tps, batch_size=4, seed=0)
    results = plan.run(probe)
    assert list(results) == list(plan.NAMES)
    from deformstab_tf import measures

    alone = {
        "sensitivity": measures.normalized_sensitivity(model, images, tps, batch_size=4, seed=0),
        "relative_stability": measures.relative_stability(
            model, images, tps, batch_size=4, seed=0
        ),
        "shift_consistency": measures.shift_consistency(model, images, 4, batch_size=4, seed=0),
        "translation_map": measures.translation_sensitivity_map(model, images, 4, batch_size=4),
        "smoothness": measures.kernel_smoothness(model),
    }
    for name, result in results.items():
        assert result == alone[name], name
    # the same probe again: the same numbers (a measurement, not a draw)
    assert plan.run(probe) == results


def test_stability_report_prepares_the_probe_once(monkeypatch):
    builds, checks = [], []
    for_model, check = ProbeFeatures.for_model.__func__, plan.check_probe_images
    monkeypatch.setattr(
        ProbeFeatures, "for_model", classmethod(lambda c, *a: builds.append(1) or for_model(c, *a))
    )
    monkeypatch.setattr(plan, "check_probe_images", lambda *a: checks.append(1) or check(*a))
    report = reports.stability_report(
        _model(), _images(), deformation_layer("tps", 1.0, seed=0), verbose=0
    )
    assert list(report) == ["sensitivity", "relative_stability", "smoothness"]
    assert (len(builds), len(checks)) == (1, 1)


def test_deform_once_deforms_the_probe_set_with_derived_seeds():
    model, images = _model(), _images()
    roll = lambda x, seed=None: np.roll(np.asarray(x), 1 + seed % 3, axis=2)  # noqa: E731
    probe = plan.prepare(model, ["sensitivity"], images, roll, batch_size=4, seed=5,
                         deform_once=True)  # fmt: skip
    from deformstab_tf.measures._common import derive_seed

    expected = [np.roll(images[s : s + 4], 1 + derive_seed(5, i) % 3, axis=2)
                for i, s in enumerate((0, 4))]  # fmt: skip
    np.testing.assert_array_equal(np.asarray(probe.deformed), np.concatenate(expected))
    shape = r"`deformation` returned shape \(8, 16, 15, 3\) for probe images"
    with pytest.raises(ValueError, match=shape):
        plan.prepare(model, ["sensitivity"], images, lambda x: x[:, :, 1:], batch_size=4,
                     seed=0, deform_once=True)  # fmt: skip
    with pytest.raises(ValueError, match="`probe_images` must hold at least 2 distinct"):
        plan.prepare(model, ["sensitivity"], np.zeros((4, 16, 16, 3)), roll,
                     images_argument="probe_images")  # fmt: skip


def _activation_norm(probe):
    """The example of the registry's docstring: mean L2 norm per probe point."""
    outputs = probe.features.extractor(probe.images, training=False)
    values = {
        name: float(np.mean(np.linalg.norm(np.reshape(np.asarray(o), (len(o), -1)), axis=1)))
        for name, o in zip(probe.features.names, outputs, strict=True)
    }
    return MeasureResult("activation_norm", values)


def test_a_new_measure_is_one_registry_entry(monkeypatch, tmp_path):
    entry = plan.Measure(
        "activation_norm",
        _activation_norm,
        "mean L2 norm of the representation per probe point",
        needs_features=True,
        axis_label="mean |r|",
    )
    monkeypatch.setitem(plan.MEASURES, "activation_norm", entry)
    model, images = _model(), _images()
    # the callback: validated, measured, logged per probe point with a mean, written
    stability = callbacks.StabilityCallback(
        images, None, measures=["activation_norm", "smoothness"], log_dir=tmp_path / "run"
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(images, np.arange(8) % 3, epochs=1, verbose=0, callbacks=[stability])
    assert "stability/activation_norm/block1_conv1" in history.history
    assert "stability/activation_norm/mean" in history.history
    with open(tmp_path / "run" / "stability" / "measurements.json") as file:
        document = json.load(file)
    assert document["measures"] == ["activation_norm", "smoothness"]
    # the reports: measured, tabled and drawn
    results = reports.stability_report(model, images, None, ["activation_norm"], verbose=0)
    assert list(results["activation_norm"]) == ["input", "block1_conv1", "block1_down",
                                                "block2_conv1", "block2_down"]  # fmt: skip
    written = reports.write_report(tmp_path / "report", results)
    assert os.path.join(tmp_path / "report", "profile.png") in written
    # training: a setting it accepts
    assert training.check_config({"measures": "activation_norm"})["measures"] == (
        "activation_norm",
    )
