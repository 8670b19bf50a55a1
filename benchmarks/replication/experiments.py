"""The experiments as data: `plan(settings)` lists them, `run` runs one, `gather` collects them.

Every experiment is a row: its name (`<kind>/<label>`, its directory and its key in the
results), the `train_run` settings of the network it trains (none for a network measured at
initialisation), and the measurements taken of the finished network. A network's own stability
record (TPS sensitivity and kernel smoothness per epoch, `StabilityCallback`) comes back through
`reports.read_run`; the extra measurements (D/G/R, shift consistency) are the package's measures.
"""

import dataclasses
import json
import os
import time

import numpy as np

INIT_TPS = {"grid_size": 3, "max_displacement": 2.0}  # Ruderman et al.'s CIFAR-10 probe
DIFFEO = {"cutoff": 3, "displacement": 1.0}  # Petrini et al.'s probe
MAX_SHIFT = 4  # shift consistency: offsets in [-4, 4] per axis
TEST_SET_SHIFT_PAIRS = 5  # Z1 on the whole test set: shift pairs per image
# T3's training noise (SD, pixels in [0, 1]): CIFAR-10's pixel SD is about 0.25, so a mild and
# a strong level, signal-to-noise about 5 and 1.7.
T3_NOISE = (0.05, 0.15)
# T2: training images on which a permuted network's BatchNormalization statistics are re-estimated
# (with the old statistics the permuted network is broken, not just permuted).
RECALIBRATION_IMAGES = 2000
# Mouton et al.'s stride study. M2: max pooling windows at stride 2 (2 is the retrained `max`).
M2_KERNELS = (2, 3, 4, 5)
# M1: the data sets of three levels of local homogeneity (`data.transform_images`; CIFAR-10's
# test split: 0.940, 0.976, 0.993 by `measures.local_homogeneity`).
M1_HOMOGENEITY = {"noise": ["noise:0.1"], "plain": [], "smooth": ["resample:2"]}
# M3: each change from M1's max-pooled network on the plain data (global average pooling,
# flips only), one at a time; and the feature each compares (`gap` is the base network's,
# compared with the flatten head). The flatten head trains at a fifth of the recipe's learning
# rate: its Dense layer sums the 4 positions that global average pooling averages, and at 0.1
# it hardly learnt (seed 0: loss 3.9 after the first epoch, test accuracy 0.28; at 0.02 0.70,
# beside the base network's 0.71).
M3_CHANGES = {
    "flatten": {"head": "flatten", "learning_rate": 0.02},
    "blur": {"downsample": "blur"},
    "translate": {"augment": ["standard"]},
}
M3_FEATURES = {"gap": "flatten", "blur": "blur", "translate": "translate"}  # feature: change
# The translation maps Mouton et al.'s measure keeps whole (the others: means and rings).
MAP_PROBES = ("input", "block2_down", "logits")

# The training recipe every trained experiment starts from (a row overrides what it changes).
RECIPE = {
    "optimizer": "sgd",
    "learning_rate": 0.1,
    "momentum": 0.9,
    "schedule": "cosine",
    "weight_decay": 5e-4,
    "measures": ["sensitivity", "smoothness"],
    "deformation": "tps",
    "magnitude": INIT_TPS["max_displacement"],
    "grid_size": INIT_TPS["grid_size"],
}


# The kinds of experiment trained at paper scale, whose results are committed under docs/.
COMMITTED_KINDS = ("paper", "retrained", "noisy", "p1", "mouton")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One row of the table.

    Attributes:
        name: `"<kind>/<label>"`: the run directory under `--output_dir` and the results key.
        fields: what the row varies, copied into its result (`variant`, `seed`, `sigma`, ...).
        train: `train_run` settings beyond `RECIPE`; None: the network is measured at init.
        measure: measurements of the finished network, any of `"sensitivity"` (TPS probe),
            `"relative_stability"` (diffeo D/G/R), `"output"` (D/G/R at the logits too),
            `"shift_consistency"` (`--shift_images`, one pair each),
            `"shift_consistency_test_set"` (every test image, `TEST_SET_SHIFT_PAIRS` pairs each),
            `"channel_permutation"` (D/G/R of the network with its convolutions' input
            channels permuted, T2), `"translation_map"` (Mouton et al.'s translation maps on
            `--stability_probe_size` test images of the row's data, wrap-around shifts up to
            `MAX_SHIFT`, at the default probe points and the logits).
        smooth_sigma: Gaussian smoothing of the initial kernels (the F4b intervention).
        network: the name of another row whose network this row measures (the same `train`
            settings): its run directory is shared, so the network is trained once.
    """

    name: str
    fields: dict
    train: dict = None
    measure: tuple = ()
    smooth_sigma: float = 0.0
    network: str = None

    @property
    def kind(self):
        return self.name.split("/")[0]

    @property
    def committed(self):
        """Paper-scale results are committed under docs/, so a fresh clone skips them."""
        return self.kind in COMMITTED_KINDS


class Settings:
    """The experiment settings (the flags of replicate.py)."""

    def __init__(self, values):
        self.__dict__.update(values)

    def seeds_for(self, variant):
        counts = dict(entry.split(":") for entry in self.trained_seeds)
        return list(range(int(counts.get(variant, counts.get("*", 1)))))

    def model_config(self):
        config = {"model": self.model, "batch_size": self.batch_size}
        if self.blocks:
            config["blocks"] = [[int(w) for w in b.split(",")] for b in self.blocks.split(";")]
        return config

    def as_dict(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def plan(s):
    """The experiments of `s.scale`, in the order they run.

    CPU-sized: cheap and broad first, so a run cut off early still answers most findings:
    every variant at init, the intervention, the synthetic task, one trained seed per variant,
    random labels, then the extra training seeds. Paper scale: seed-major, so a partial run
    covers every variant early.
    """
    cifar10 = f"folder:{s.cifar10}"

    def cifar(variant, seed, **settings):
        return {
            "dataset": cifar10,
            "augment": ["standard"],
            "downsample": variant,
            "seed": seed,
            **settings,
        }

    trained_measures = ("relative_stability", "shift_consistency")

    def paper_recipe(v, seed):
        return cifar(
            v,
            seed,
            train_size=s.paper_train_size,
            epochs=s.paper_epochs,
            weight_decay=s.paper_weight_decay,
        )

    def short_recipe(v, seed):  # the CPU-sized recipe, flips only
        return {**cifar(v, seed, train_size=s.train_size, epochs=s.epochs), "augment": ["flip"]}

    if s.scale == "extended":
        rows = extended_plan(s, paper_recipe, trained_measures)
        return rows + mouton_plan(s, paper_recipe, short_recipe)
    if s.scale == "paper":
        return [
            Experiment(
                f"paper/{v}_s{seed}",
                {"variant": v, "seed": seed},
                paper_recipe(v, seed),
                trained_measures,
            )
            for seed in range(s.paper_seeds)
            for v in s.variants
        ]
    rows = [
        Experiment(
            f"init/{v}_s{seed}",
            {"variant": v, "seed": seed},
            measure=("sensitivity", "relative_stability"),
        )
        for v in s.variants
        for seed in range(s.init_seeds)
    ]
    rows += [
        Experiment(
            f"smoothing/sigma{sigma}_s{seed}",
            {"variant": "max", "sigma": float(sigma), "seed": seed},
            measure=("sensitivity",),
            smooth_sigma=float(sigma),
        )
        for sigma in s.sigmas
        for seed in range(2)
    ]
    rows += [
        Experiment(
            f"synthetic/{s.synthetic_prototypes}_{s.synthetic_downsample}_C{c}_s{seed}",
            {
                "strength": float(c),
                "prototypes": s.synthetic_prototypes,
                "downsample": s.synthetic_downsample,
                "seed": seed,
            },
            {
                "dataset": "synthetic",
                "synthetic_displacement": float(c),
                "synthetic_samples": s.synthetic_samples,
                "synthetic_image_size": s.synthetic_image_size,
                "synthetic_prototypes": s.synthetic_prototypes,
                "epochs": s.synthetic_epochs,
                "learning_rate": 0.05,
                "batch_size": 64,  # enough steps for BatchNorm's moving statistics to settle
                "downsample": s.synthetic_downsample,
                "seed": seed,
            },
        )
        for c in s.synthetic_strengths
        for seed in range(s.synthetic_seeds)
    ]

    def trained(v, seed):
        return Experiment(
            f"trained/{v}_s{seed}",
            {"variant": v, "seed": seed},
            cifar(v, seed, train_size=s.train_size, epochs=s.epochs),
            trained_measures,
        )

    rows += [trained(v, 0) for v in s.variants if s.seeds_for(v)]
    rows += [
        Experiment(
            f"random_labels/{v}_s0",
            {"variant": v, "seed": 0},
            {
                "dataset": cifar10,
                "train_size": s.random_label_size,
                "random_labels": True,
                "epochs": s.random_label_epochs,
                "learning_rate": 0.05,
                "weight_decay": 0.0,
                "schedule": "constant",
                "downsample": v,
                "seed": 0,
            },
        )
        for v in s.variants
    ]
    rows += [trained(v, seed) for v in s.variants for seed in s.seeds_for(v)[1:]]
    return rows


def extended_plan(s, paper_recipe, trained_measures):
    """The paper-scale studies after the replication (Z1 decided, T2, T3, P1), longest first.

    `retrained/<variant>_s<seed>`: the paper recipe retrained on this machine, `max` and `blur`
    with `--z1_seeds` seeds (Z1) and `strided` with `--t2_seeds` (T2 beside `max`), seed-major.
    `noisy/<variant>_noise<sigma>_s<seed>`: `max` and `strided` trained on images with Gaussian
    pixel noise of SD `T3_NOISE`, `--t3_seeds` seeds per noise level (T3), seed-major.
    """
    counts = {"max": s.z1_seeds, "blur": s.z1_seeds, "strided": s.t2_seeds}
    # The committed paper-scale measurements (to compare retrained networks with), Z1 on the
    # whole test set, T2's permuted copy, and R at the logits (P1).
    measures = (*trained_measures, "shift_consistency_test_set", "channel_permutation", "output")
    rows = []
    for seed in range(max(counts.values())):
        for v, count in counts.items():
            if seed < count:
                rows.append(
                    Experiment(
                        f"retrained/{v}_s{seed}",
                        {"variant": v, "seed": seed},
                        paper_recipe(v, seed),
                        measures,
                    )
                )
    # T3: the paper recipe on training images with Gaussian pixel noise (clean test images).
    t3_seeds = t3_seed_counts(s.t3_seeds)
    rows += [
        Experiment(
            f"noisy/{v}_noise{number(sigma)}_s{seed}",
            {"variant": v, "noise": sigma, "seed": seed},
            {
                **paper_recipe(v, seed),
                "augment": ["standard", f"noise:{number(sigma)}"],
            },
            ("relative_stability", "output"),
        )
        for seed in range(max(t3_seeds.values()))
        for sigma in T3_NOISE
        if seed < t3_seeds[sigma]
        for v in ("max", "strided")
    ]
    # P1: architectures x training-set sizes, one seed; the VGGs on all 50,000 images are the
    # retrained networks above.
    rows += [
        Experiment(
            f"p1/{architecture}_n{size}",
            {"architecture": architecture, "train_size": size, "seed": 0},
            p1_recipe(s, paper_recipe("max", 0), architecture, size),
            ("relative_stability", "output"),
        )
        for architecture in s.p1_architectures
        for size in map(int, s.p1_sizes)
        if (architecture, size) not in P1_LEFT_OUT
    ]
    return rows


def t3_seed_counts(counts):
    """`--t3_seeds` as {noise SD: seeds}: one count per level of `T3_NOISE`, or one for all."""
    counts = [counts] if isinstance(counts, (int, str)) else list(counts)
    if len(counts) == 1:
        counts = counts * len(T3_NOISE)
    if len(counts) != len(T3_NOISE) or not all(str(c).isdigit() for c in counts):
        raise ValueError(
            f"t3_seeds must be one count or one per noise level {T3_NOISE}: {counts!r}"
        )
    return dict(zip(T3_NOISE, map(int, counts), strict=True))


def mouton_plan(s, paper_recipe, short_recipe):
    """Mouton et al.'s stride study, `--mouton_seeds` seeds each, after the other studies.

    `mouton/m2_k<k>_s<seed>`: M2 at paper scale (generalisation needs it): max pooling of
    window `k` in `M2_KERNELS` at stride 2; `k = 2` is the paper recipe's `max` network, trained
    for M2 itself so that the study can take every network from one CPU bfloat16 path (on the
    path of `retrained/max_s<seed>` it is that network, bit for bit), and measured for D, G and
    R too: seed 0 is P1's VGG on all images when it shares P1's path.
    `mouton/m1_<variant>_<level>_s<seed>`: M1 at the CPU-sized scale (an invariance
    comparison, decided within seeds): `max` and `strided` on the data sets of
    `M1_HOMOGENEITY`. `mouton/m3_<change>_s<seed>`: M3 at the CPU-sized scale, each change of
    `M3_CHANGES` from `m1_max_plain`. Every network's translation maps are measured on its own
    data's test images.
    """
    rows, invariance = [], ("translation_map", "shift_consistency_test_set")
    for seed in range(s.mouton_seeds):
        for level, transform in M1_HOMOGENEITY.items():
            for v in ("max", "strided"):
                rows.append(
                    Experiment(
                        f"mouton/m1_{v}_{level}_s{seed}",
                        {"study": "M1", "variant": v, "homogeneity": level, "seed": seed},
                        {**short_recipe(v, seed), "transform": transform},
                        invariance,
                    )
                )
        for change, settings in M3_CHANGES.items():
            rows.append(
                Experiment(
                    f"mouton/m3_{change}_s{seed}",
                    {"study": "M3", "change": change, "seed": seed},
                    {**short_recipe("max", seed), **settings},
                    invariance,
                )
            )
    for seed in range(s.mouton_seeds):
        for k in M2_KERNELS:
            rows.append(
                Experiment(
                    f"mouton/m2_k{k}_s{seed}",
                    {"study": "M2", "variant": "max", "pool_size": k, "seed": seed},
                    {**paper_recipe("max", seed), "pool_size": k},
                    invariance + (("relative_stability", "output") if k == 2 else ()),
                )
            )
    return rows


# P1 networks not trained: the VGG on all images is the paper recipe's `max` seed 0
# (`retrained/max_s0` or `mouton/m2_k2_s0`, whichever shares P1's path); EfficientNetB0 on all
# images would take about 2.5 h on 2 CPU cores (about 1 s per step).
P1_LEFT_OUT = {("cifar_vgg", 50000), ("efficientnet_b0", 50000)}
# No BatchNorm in these two: at 0.1 both stayed at chance on 1,000 images (pilots: test accuracy
# 0.10 and 0.19), at 0.02 they learn (0.41 and 0.37).
P1_LEARNING_RATE = {"fully_connected": 0.02, "lenet": 0.02}


def p1_recipe(s, recipe, architecture, size):
    """The paper recipe for one P1 network on `size` images: `--p1_steps` SGD steps below
    50,000 images (on all of them the recipe's epochs), cosine to 0 as always, validated and
    measured 5 times."""
    epochs = recipe["epochs"]
    if size < 50000:
        steps_per_epoch = -(-size // s.batch_size)
        epochs = 5 * -(-s.p1_steps // (5 * steps_per_epoch))  # a multiple of 5
    return {
        **recipe,
        "model": architecture,
        "blocks": None,
        "train_size": size,
        "epochs": epochs,
        "validate_every": epochs // 5,
        "measure_every": epochs // 5,
        "learning_rate": P1_LEARNING_RATE.get(architecture, RECIPE["learning_rate"]),
    }


class Runner:
    """Runs experiments: trains through `train_run`, measures, writes each result."""

    def __init__(self, settings):
        self.settings = settings
        self.root = os.path.abspath(settings.output_dir)
        self.docs = os.path.join(settings.docs_dir, "replication")
        self._probes = {}
        self._num_classes = None

    def result_path(self, experiment):
        if experiment.committed:
            return os.path.join(self.docs, "experiments", experiment.name + ".json")
        return os.path.join(self.root, experiment.name, "result.json")

    def finished(self, experiments):
        """`(experiment, result)` of every finished experiment, in the table's order."""
        for experiment in experiments:
            path = self.result_path(experiment)
            if os.path.exists(path):
                with open(path) as file:
                    yield experiment, json.load(file)

    def run(self, experiment):
        """Runs one experiment and writes its result (a small JSON)."""
        started, cpu = time.time(), time.process_time()
        if experiment.train is None:
            model = self._initial_model(experiment)
            result = {}
        else:
            model, result = self._train(experiment)
        result.update(self._measure(model, experiment))
        if experiment.train is not None:
            result.update(self._machine(experiment))
        result = {**experiment.fields, **result}
        result["wall_seconds"] = time.time() - started
        result["cpu_seconds"] = time.process_time() - cpu
        write_json(self.result_path(experiment), result)
        return result

    def probe_images(self, count, transform=()):
        """The first `count` CIFAR-10 test images, of the derived data set `transform`
        (decoded once per process)."""
        key = (count, *transform) if transform else count
        if key not in self._probes:
            from deformstab_tf.data import load_dataset, take_images

            _, test, info = load_dataset(
                f"folder:{self.settings.cifar10}", batch_size=256, transform=list(transform)
            )
            self._num_classes = info.num_classes
            self._probes[key] = take_images(test, count)
        return self._probes[key]

    def _initial_model(self, experiment):
        import keras

        from deformstab_tf import smooth_kernels
        from deformstab_tf.training import build_model, check_config

        seed = experiment.fields["seed"]
        keras.utils.set_random_seed(seed)
        shape = self.probe_images(self.settings.probe_size).shape[1:]
        config = check_config(
            {**self.settings.model_config(), "downsample": experiment.fields["variant"]}
        )
        model = build_model(config, shape, self._num_classes)
        if experiment.smooth_sigma:
            smooth_kernels(model, experiment.smooth_sigma)
        return model

    def run_directory(self, experiment):
        return os.path.join(self.root, experiment.network or experiment.name)

    def is_trained(self, experiment):
        """Whether the row's network has finished training (its run directory is complete)."""
        from deformstab_tf.runrecord import is_complete

        return experiment.train is not None and is_complete(self.run_directory(experiment))

    def train_config(self, experiment):
        """The `train_run` settings of a row's network."""
        from deformstab_tf.training import LEGACY_BATCH_NORM_MOMENTUM, REFERENCE_MODELS

        s = self.settings
        config = {**RECIPE, **s.model_config(), "probe_size": s.probe_size, **experiment.train}
        if config["model"] not in REFERENCE_MODELS:
            # Every network of the replication trained with Keras's BatchNormalization
            # momentum 0.99, the builders' default until it became 0.9: pinned, so the
            # committed numbers stay what they are.
            config["batch_norm_momentum"] = LEGACY_BATCH_NORM_MOMENTUM
        return config

    def train_next(self, experiments):
        """Trains the first row whose network is neither measured nor trained; measures
        nothing (a later run measures it). Returns the experiment, or None when none is left."""
        from deformstab_tf.training import train_run

        for experiment in experiments:
            if experiment.train is None or os.path.exists(self.result_path(experiment)):
                continue
            if self.is_trained(experiment):
                continue
            train_run(self.run_directory(experiment), verbose=2, **self.train_config(experiment))
            return experiment
        return None

    def _train(self, experiment):
        """Trains (or resumes) the row's network; its record: accuracies, precision, and the
        stability record of its first and last epoch."""
        import keras

        from deformstab_tf.reports import read_run
        from deformstab_tf.training import train_run

        directory = self.run_directory(experiment)
        trained_separately = self.is_trained(experiment)  # by an earlier run (--train_next)
        summary = train_run(directory, verbose=2, **self.train_config(experiment))
        run = read_run(directory)
        first, last = run.history[0]["results"], run.history[-1]["results"]
        record = {
            "test_accuracy": summary["test_accuracy"],
            "train_accuracy": run.metrics["accuracy"],
            "precision": summary.get("precision", "float32"),
            # training's own wall time, all sessions (None where an earlier session kept no
            # record of its epochs; runs from before that record: the last session's); when
            # another run trained the network, `wall_seconds` covers the measurements only
            "train_wall_seconds": summary.get(
                "wall_seconds", summary.get("wall_seconds_last_session")
            ),
            "trained_separately": trained_separately,
            "sensitivity_init": dict(first["sensitivity"]),
            "sensitivity": dict(last["sensitivity"]),
            "smoothness_init": dict(first["smoothness"]),
            "smoothness": dict(last["smoothness"]),
        }
        return keras.models.load_model(os.path.join(directory, "model.keras")), record

    def _machine(self, experiment):
        """The CPU's bfloat16 path the network was trained on (`config.json`), and this one's."""
        from deformstab_tf.runrecord import read_config_document
        from deformstab_tf.training import cpu_bfloat16_path

        recorded = read_config_document(self.run_directory(experiment))
        return {
            "cpu_bfloat16": recorded.get("cpu_bfloat16", "unrecorded"),
            "measured_on_cpu_bfloat16": cpu_bfloat16_path(),
        }

    def _measure(self, model, experiment):
        """The row's measurements of its network (`Experiment.measure`), each a plan of the
        package's measures (`deformstab_tf.measures.plan`) on its own probe images, prepared
        once."""
        import deformstab_tf as ds
        from deformstab_tf.measures.plan import measure

        s, seed, wanted = self.settings, experiment.fields["seed"], experiment.measure
        transform = tuple((experiment.train or {}).get("transform", ()))
        out = {"smoothness": dict(measure(model, "smoothness")["smoothness"])}
        if "sensitivity" in wanted:
            tps = ds.deformation_layer("tps", seed=seed, **INIT_TPS)
            images = self.probe_images(s.probe_size)
            out["sensitivity"] = dict(measure(model, "sensitivity", images, tps)["sensitivity"])
        if "relative_stability" in wanted:
            out.update(self._relative_stability(model, seed, "output" in wanted))
        if "channel_permutation" in wanted:
            out["channel_permutation"] = self._channel_permutation(model, seed, "output" in wanted)
        if "shift_consistency" in wanted:
            images = self.probe_images(s.shift_images)
            result = measure(model, "shift_consistency", images, max_shift=MAX_SHIFT, seed=seed)
            out["shift_consistency"] = result["shift_consistency"]["output"]
        if "translation_map" in wanted:
            out["translation_map"] = self._translation_map(model, transform)
        if "shift_consistency_test_set" in wanted:
            images = self.probe_images(self.test_size(), transform)
            result = measure(
                model,
                "shift_consistency",
                images,
                max_shift=MAX_SHIFT,
                batch_size=500,
                seed=seed,
                pairs_per_image=TEST_SET_SHIFT_PAIRS,
            )["shift_consistency"]
            out["shift_consistency_test_set"] = {
                "value": result["output"],
                "standard_error": result.details["standard_error"]["output"],
                **{k: result.metadata[k] for k in ("num_images", "pairs_per_image", "seed")},
            }
        return out

    def _translation_map(self, model, transform):
        """Mouton et al.'s measure: per probe point (the defaults and the logits) the mean of
        its translation map and of each ring, and the whole maps at `MAP_PROBES`."""
        from deformstab_tf.measures.features import default_probe_layer_names
        from deformstab_tf.measures.plan import measure
        from deformstab_tf.measures.translation import similarity_map

        images = self.probe_images(self.settings.stability_probe_size, transform)
        default, output = default_probe_layer_names(model), model.layers[-1].name
        layers = [*default, output] if output not in default else default
        result = measure(
            model, "translation_map", images, layers=layers, batch_size=100, max_shift=MAX_SHIFT
        )["translation_map"]
        return {
            "mean": dict(result),
            "rings": result.details,
            "output_layer": output,
            "maps": {
                name: np.round(similarity_map(result, name), 6).tolist()
                for name in MAP_PROBES
                if name in result
            },
            **{k: result.metadata[k] for k in ("num_images", "max_shift", "fill_mode")},
        }

    def _channel_permutation(self, model, seed, at_output):
        """T2: D/G/R of the network with its convolutions' input channels permuted (seeded
        with the training seed), its BatchNormalization statistics re-estimated for the new
        pre-activations on `RECALIBRATION_IMAGES` training images (float32, no augmentation);
        and, for comparison, with the stale statistics."""
        import deformstab_tf as ds
        from deformstab_tf.measures.features import float32_compute

        permuted = ds.permute_input_channels(model, seed=seed)
        stale = self._relative_stability(permuted, seed, at_output)
        with float32_compute(permuted):
            ds.recalibrate_batch_norm(permuted, self.training_images(RECALIBRATION_IMAGES))
        return {
            "seed": seed,
            "recalibration_images": RECALIBRATION_IMAGES,
            **self._relative_stability(permuted, seed, at_output),
            "stale_statistics": stale,
        }

    def training_images(self, count):
        """The first `count` training images of the seeded shuffle, without augmentation (all
        of them when there are fewer)."""
        key = ("train", count)
        if key not in self._probes:
            from deformstab_tf.data import load_dataset, take_images

            train, _, info = load_dataset(f"folder:{self.settings.cifar10}", batch_size=250)
            self._probes[key] = take_images(train, min(count, info.train_size))
        return self._probes[key]

    def _relative_stability(self, model, seed, at_output):
        """D/G/R at the default probe points (and, with `at_output`, at the logits: the last
        layer, kept apart so the per-layer profile is the committed one)."""
        import deformstab_tf as ds
        from deformstab_tf.measures.features import default_probe_layer_names
        from deformstab_tf.measures.plan import measure

        diffeo = ds.deformation_layer("diffeo", seed=seed, **DIFFEO)
        images = self.probe_images(self.settings.stability_probe_size)
        default, output = default_probe_layer_names(model), model.layers[-1].name
        layers = [*default, output] if at_output and output not in default else default
        result = measure(
            model, "relative_stability", images, diffeo, layers, batch_size=100, seed=seed
        )["relative_stability"]
        components = {"R": dict(result), "D": result.details["D"], "G": result.details["G"]}
        out = {
            "relative_stability": {
                c: {name: values[name] for name in default} for c, values in components.items()
            }
        }
        if at_output:
            out["output_stability"] = {
                "layer": output,
                **{c: values[output] for c, values in components.items()},
            }
        return out

    def test_size(self):
        """The number of test images (decoding them once)."""
        from deformstab_tf.data import load_dataset

        if not hasattr(self, "_test_size"):
            _, _, info = load_dataset(f"folder:{self.settings.cifar10}", batch_size=256)
            self._test_size = info.test_size
        return self._test_size


# -- results ----------------------------------------------------------------------------------


def gather(settings, experiments, finished):
    """Every finished experiment gathered into the documented `results.json` layout.

    Args:
        settings: `Settings`.
        experiments: the plan.
        finished: `(experiment, result)` pairs (`Runner.finished`).
    """
    sensitivity, smoothness, accuracy, relative, shift = {}, {}, {}, {}, {}
    random_labels, synthetic, smoothing, done = {}, {}, {}, []
    cpu = wall = 0.0
    for experiment, r in finished:
        done.append(experiment.name)
        cpu += r.get("cpu_seconds", 0.0)
        wall += r.get("wall_seconds", 0.0)
        kind = experiment.kind
        if kind in ("init", "trained", "paper"):
            stage = "init" if kind == "init" else "trained"
            v = r["variant"]
            _append(sensitivity, [v, stage], r.get("sensitivity", {}))
            _append(smoothness, [v, stage], r["smoothness"])
            for component, values in r.get("relative_stability", {}).items():
                _append(relative, [v, stage, component], values)
            if stage == "trained":
                accuracy.setdefault(v, []).append(r["test_accuracy"])
                shift.setdefault(v, []).append(r["shift_consistency"])
                _append(sensitivity, [v, "init_of_trained"], r["sensitivity_init"])
        elif kind == "random_labels":
            random_labels[r["variant"]] = r
        elif kind == "synthetic":
            add_synthetic(synthetic, r)
        elif kind == "smoothing":
            key = number(r["sigma"])
            _append(smoothing, [key, "sensitivity"], r["sensitivity"])
            _append(smoothing, [key, "smoothness"], r["smoothness"])
    return {
        "settings": settings.as_dict(),
        "finished": done,
        "missing": [e.name for e in experiments if e.name not in done],
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "sensitivity": sensitivity,
        "smoothness": smoothness,
        "test_accuracy": accuracy,
        "relative_stability": relative,
        "shift_consistency": shift,
        "random_labels": random_labels,
        "synthetic": synthetic,
        "synthetic_other_settings": other_synthetic_settings(settings),
        "smoothing_intervention": smoothing,
    }


def gather_paper(settings, experiments, finished, cpu):
    """The paper-scale experiments in the layout of the CPU-sized results, with the
    initialisation stage of `cpu` (the same networks at init) and the T1/Z1 statistics."""
    from _stats import t1_statistics, z1_statistics  # benchmarks/ is on sys.path

    s = settings
    gathered = gather(settings, experiments, finished)
    for key in ("sensitivity", "smoothness", "relative_stability"):
        for v in s.variants:
            if "init" in cpu.get(key, {}).get(v, {}):
                gathered[key].setdefault(v, {})["init"] = cpu[key][v]["init"]
    paper_settings = {
        "train_size": s.paper_train_size or 50000,
        "epochs": s.paper_epochs,
        "weight_decay": s.paper_weight_decay,
        "seeds": s.paper_seeds,
        "variants": list(s.variants),
        "batch_size": s.batch_size,
        "recipe": "random flips + 4-px translations, SGD momentum 0.9, cosine decay from "
        f"0.1 to 0, decoupled weight decay {s.paper_weight_decay:g} (not on biases/BN), "
        "bfloat16 compute where native "
        "(measurements in float32), op determinism, the builders' fused BatchNormalization",
        "command": s.command,
    }
    keys = (
        "finished", "missing", "cpu_seconds", "wall_seconds", "sensitivity", "smoothness",
        "test_accuracy", "relative_stability", "shift_consistency",
    )  # fmt: skip
    return {
        "settings": paper_settings,
        **{key: gathered[key] for key in keys},
        "T1": t1_statistics(gathered["relative_stability"]),
        "Z1": z1_statistics(gathered["shift_consistency"]),
        "keras_batch_norm": keras_batch_norm_runs(s),
    }


def gather_extended(settings, experiments, finished):
    """The extended studies' results: every network's headline numbers, Z1 on the whole test
    set (with the measurement's own error), T1 and T2 over the retrained seeds, and how far the
    retrained networks land from the committed paper-scale ones (reproducibility).

    Each study compares networks trained on one CPU bfloat16 path only: the most common one
    among its finished networks (`cpu_bfloat16.used`, per study: a session's machine can take a
    whole study); networks of another path are listed under `cpu_bfloat16.excluded`.
    """
    from _stats import (  # benchmarks/ is on sys.path
        p1_statistics,
        reproducibility,
        t1_statistics,
        t2_statistics,
        z1_measurement_error,
        z1_statistics,
    )

    s, done = settings, []
    cpu = wall = 0.0
    groups = {"retrained": {}, "noisy": {}, "p1": {}}  # kind -> group -> seed -> result
    mouton = []
    for experiment, r in finished:
        done.append(experiment.name)
        cpu += r.get("cpu_seconds", 0.0)
        wall += r.get("wall_seconds", 0.0)
        if r.get("trained_separately"):
            wall += r.get("train_wall_seconds") or 0.0
        if experiment.kind == "mouton":
            mouton.append((experiment, r))
            continue
        if experiment.kind == "p1":
            group = f"{r['architecture']}_n{r['train_size']}"
        elif experiment.kind in groups:
            group = r["variant"] + (f"_noise{number(r['noise'])}" if "noise" in r else "")
        else:
            continue
        groups[experiment.kind].setdefault(group, {})[r["seed"]] = r
    used, excluded = {}, []
    for kind, members in groups.items():
        path, others = one_cpu_path(
            {f"{group}_s{seed}": r for group, seeds in members.items() for seed, r in seeds.items()}
        )
        if path is not None:
            used[STUDIES_OF_KIND[kind]] = path
        excluded += others
        groups[kind] = {
            group: {seed: r for seed, r in sorted(seeds.items()) if r.get("cpu_bfloat16") == path}
            for group, seeds in members.items()
        }
    retrained, noisy = groups["retrained"], groups["noisy"]
    p1_points = [
        {"name": group, "architecture": r["architecture"], "train_size": r["train_size"],
         **p1_point(r)}
        for group, seeds in groups["p1"].items() for r in seeds.values()
    ]  # fmt: skip
    # the VGG on all images (P1's cifar_vgg at 50,000): the paper recipe's max seed 0 of P1's
    # bfloat16 path, retrained for Z1 or trained for M2 as its window 2
    p1_path = used.get(STUDIES_OF_KIND["p1"], used.get(STUDIES_OF_KIND["retrained"]))
    vgg = [("retrained/max_s0", retrained.get("max", {}).get(0))] + [
        (e.name, r) for e, r in mouton if e.name == "mouton/m2_k2_s0"
    ]
    vgg = [(name, r) for name, r in vgg if r and r.get("cpu_bfloat16") == p1_path]
    if vgg:
        name, r = vgg[0]
        p1_points.append(
            {"name": f"cifar_vgg_n50000 ({name})", "architecture": "cifar_vgg",
             "train_size": 50000, **p1_point(r)}
        )  # fmt: skip
    networks = {
        f"{group}_s{seed}": network_headline(r) for kind in groups.values()
        for group, seeds in kind.items() for seed, r in seeds.items()
    }  # fmt: skip

    # Z1: seed k of max with seed k of blur (the same data order and augmentations).
    common = sorted(set(retrained.get("max", {})) & set(retrained.get("blur", {})))
    test_set = {
        v: [retrained[v][k]["shift_consistency_test_set"] for k in common]
        for v in ("max", "blur")
        if common
    }
    z1 = {
        "seeds": common,
        "test_set": {
            **z1_statistics({v: [e["value"] for e in values] for v, values in test_set.items()}),
            **z1_measurement_error(test_set),
        },
        "first_1000": z1_statistics(
            {v: [retrained[v][k]["shift_consistency"] for k in common] for v in test_set}
        ),
    }
    profiles = {
        v: {c: _per_probe([r["relative_stability"][c] for r in seeds.values()]) for c in "DG"}
        for v, seeds in retrained.items()
    }

    def permuted(statistics):  # "recalibrated" (T2's measure) or "stale_statistics"
        return {
            v: {c: _per_probe([_permutation(r, statistics)[c] for r in seeds.values()])
                for c in "DG"}
            for v, seeds in retrained.items()
            if all("channel_permutation" in r for r in seeds.values())
        }  # fmt: skip

    committed = committed_paper_networks(s)
    keys = ("test_accuracy", "shift_consistency", "R_last", "D_last", "G_last", "sensitivity")
    kept = []
    for study, rows in (("M1, M3", [m for m in mouton if m[1]["study"] != "M2"]),
                        ("M2", [m for m in mouton if m[1]["study"] == "M2"])):  # fmt: skip
        path, others = one_cpu_path({e.name.split("/", 1)[1]: r for e, r in rows})
        if path is not None:
            used[study] = path
        excluded += others
        kept += [(e, r) for e, r in rows if r.get("cpu_bfloat16") == path]
    studies = gather_mouton(kept)  # in the plan's order: M1 and M3 rows come before M2's
    return {
        **studies,
        "settings": {
            "recipe": "the paper-scale recipe (see paper.settings), retrained on this machine",
            "z1_seeds": s.z1_seeds,
            "t2_seeds": s.t2_seeds,
            "test_set_shift_pairs": TEST_SET_SHIFT_PAIRS,
            "max_shift": MAX_SHIFT,
            "command": s.command,
        },
        "finished": done,
        "missing": [e.name for e in experiments if e.name not in done],
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "cpu_bfloat16": {"used": used, "excluded": sorted(excluded)},
        "networks": networks,
        "Z1": z1,
        "T1": t1_statistics({v: {"trained": p} for v, p in profiles.items()}),
        "P1": {"points": p1_points, **p1_statistics(p1_points)},
        "T2": t2_statistics(profiles, permuted("recalibrated")),
        # For comparison: the permuted networks with their stale BatchNormalization statistics.
        "T2_stale_statistics": t2_statistics(profiles, permuted("stale_statistics")),
        "T3": t1_statistics(
            {
                group: {
                    "trained": {
                        c: _per_probe([r["relative_stability"][c] for r in seeds.values()])
                        for c in "DG"
                    }
                }
                for group, seeds in noisy.items()
            }
        ),
        "reproducibility": reproducibility(
            {
                v: {seed: networks[f"{v}_s{seed}"] for seed in seeds}
                for v, seeds in retrained.items()
            },
            committed,
            keys,
        ),  # fmt: skip
        "bit_for_bit": bit_for_bit(finished, s),
    }


# The findings each kind of extended row decides (the keys of `cpu_bfloat16.used`).
STUDIES_OF_KIND = {"retrained": "Z1, T1, T2", "noisy": "T3", "p1": "P1"}


def one_cpu_path(results):
    """The CPU bfloat16 path most of `results` ({name: result}) were trained on (a tie goes to
    the first network's), and the names of the networks trained on another.

    Example:

    >>> one_cpu_path({"a": {"cpu_bfloat16": "amx_bf16"}, "b": {"cpu_bfloat16": "avx512_bf16"},
    ...               "c": {"cpu_bfloat16": "avx512_bf16"}})
    ('avx512_bf16', ['a'])
    >>> one_cpu_path({})
    (None, [])
    """
    paths = [r.get("cpu_bfloat16") for r in results.values()]
    if not paths:
        return None, []
    used = max(paths, key=paths.count)
    return used, [name for name, r in results.items() if r.get("cpu_bfloat16") != used]


def gather_mouton(finished):
    """Mouton et al.'s findings from the finished `mouton/` rows (`M1`, `M2`, `M3`; none
    without a finished row). Invariance is the mean of the translation map at the logits; the
    shift consistency on the whole test set is kept beside it."""
    from _stats import m1_statistics, m2_statistics, m3_statistics  # benchmarks/ on sys.path

    if not finished:
        return {}
    m1, m2, m3 = {}, {}, {}
    networks = {}
    for experiment, r in finished:
        point = mouton_point(r)
        networks[experiment.name.split("/", 1)[1]] = point
        study, seed = r["study"], r["seed"]
        if study == "M1":
            m1.setdefault(r["variant"], {}).setdefault(r["homogeneity"], {})[seed] = point
        elif study == "M2":
            m2.setdefault(seed, {})[r["pool_size"]] = point
        else:
            m3.setdefault(r["change"], {})[seed] = point

    def seeds_of(groups):  # the seeds finished in every group
        sets = [set(seeds) for seeds in groups]
        return sorted(set.intersection(*sets)) if sets else []

    def values(by_seed, seeds, key="invariance"):
        return [by_seed[k][key] for k in seeds]

    m1_groups = [
        m1.get(v, {}).get(level, {}) for v in ("max", "strided") for level in M1_HOMOGENEITY
    ]
    m1_seeds = seeds_of(m1_groups)
    base = m1.get("max", {}).get("plain", {})
    m3_seeds = seeds_of([base, *(m3.get(change, {}) for change in M3_CHANGES)])
    out = {"mouton_networks": networks}
    out["M1"] = {
        "seeds": m1_seeds,
        **m1_statistics(
            {
                v: {level: values(m1[v][level], m1_seeds) for level in M1_HOMOGENEITY}
                for v in ("max", "strided")
            }
            if m1_seeds
            else {}
        ),
    }
    out["M2"] = m2_statistics(
        {
            seed: {
                k: {key: p[key] for key in ("invariance", "test_accuracy")} for k, p in w.items()
            }
            for seed, w in m2.items()
        }
    )
    out["M3"] = {"seeds": m3_seeds}
    for key in ("invariance", "shift_consistency"):
        pairs = {}
        for feature, change in M3_FEATURES.items():
            changed = values(m3.get(change, {}), m3_seeds, key)
            plain = values(base, m3_seeds, key)
            # gap is the base network's own feature: with it = base, without = flatten
            pairs[feature] = (changed, plain) if feature == "gap" else (plain, changed)
        out["M3"][key] = m3_statistics(pairs) if m3_seeds else {}
    return out


def mouton_point(r):
    """A Mouton network's numbers: invariance (the translation map's mean at the logits), the
    map's mean per probe point, shift consistency on the test set, test accuracy, the CPU
    bfloat16 path it was trained on, how long its training took (when it was timed)."""
    maps = r["translation_map"]
    minutes = r["train_wall_seconds"] / 60 if r.get("train_wall_seconds") else None
    return {
        "invariance": maps["mean"][maps["output_layer"]],
        "map_mean": maps["mean"],
        "shift_consistency": r["shift_consistency_test_set"]["value"],
        "test_accuracy": r["test_accuracy"],
        "maps": maps["maps"],
        "max_shift": maps["max_shift"],
        "cpu_bfloat16": r.get("cpu_bfloat16"),
        **({"train_minutes": minutes} if minutes else {}),
    }


def p1_point(r):
    """A network's P1 numbers: test error and D, G, R at the logits (and R at the last probe)."""
    output = r["output_stability"]
    last = list(r["relative_stability"]["R"])[-1]
    return {
        "error": 1.0 - r["test_accuracy"],
        **{c: output[c] for c in ("R", "D", "G")},
        "R_last": r["relative_stability"]["R"][last],
    }


def network_headline(r):
    """A network's scalar numbers: accuracy, shift consistency, D/G/R at the last probe and at
    the logits, mean sensitivity of the last epoch, the CPU bfloat16 path it was trained on."""
    relative = r.get("relative_stability", {})
    last = list(relative["R"])[-1] if relative else None
    out = {
        "test_accuracy": r["test_accuracy"],
        "shift_consistency": r.get("shift_consistency"),
        "sensitivity": float(np.mean(list(r["sensitivity"].values())))
        if r.get("sensitivity")
        else None,
        "cpu_bfloat16": r.get("cpu_bfloat16"),
        "train_minutes": r["train_wall_seconds"] / 60 if r.get("train_wall_seconds") else None,
    }
    if last is not None:
        out.update({f"{c}_last": relative[c][last] for c in ("R", "D", "G")})
    if "shift_consistency_test_set" in r:
        out["shift_consistency_test_set"] = r["shift_consistency_test_set"]["value"]
        out["shift_consistency_test_set_se"] = r["shift_consistency_test_set"]["standard_error"]
    if "output_stability" in r:
        out.update({f"{c}_output": r["output_stability"][c] for c in ("R", "D", "G")})
    return {k: v for k, v in out.items() if v is not None}


# What a network trained again by the committed command repeats to the last bit when it runs on
# the committed network's CPU bfloat16 path (ops are deterministic; the two paths round apart):
# each record key with the words the report names it by.
BIT_FOR_BIT = {
    "test_accuracy": "test accuracy",
    "train_accuracy": "every epoch's training accuracy",
    "sensitivity_init": "sensitivity per layer at initialisation",
    "sensitivity": "sensitivity per layer trained",
    "smoothness_init": "kernel smoothness at initialisation",
    "smoothness": "kernel smoothness trained",
    "relative_stability": "D, G and R at every probe",
}


def bit_for_bit(finished, s):
    """Which networks trained again by a committed paper-scale command repeat it to the last bit:
    the retrained networks (Z1, T1, T2) and M2's window-2 networks (the paper recipe's max).

    Returns:
        `{"networks": {name: {"committed": "paper/<variant>_s<seed>", "cpu_bfloat16",
        "identical": [keys], "different": [keys]}}, "committed_cpu_bfloat16": the one path
        whose networks repeat theirs in every key of `BIT_FOR_BIT` (None when no or several
        paths do)}`.
    """
    committed = {(r["variant"], r["seed"]): r for _, r in _committed_records(s, "paper")}
    networks = {}
    for experiment, r in finished:
        if experiment.kind == "retrained":
            variant = r["variant"]
        elif experiment.kind == "mouton" and r["study"] == "M2" and r["pool_size"] == 2:
            variant = "max"
        else:
            continue
        twin = committed.get((variant, r["seed"]))
        keys = [k for k in BIT_FOR_BIT if twin is not None and k in r and k in twin]
        if keys:
            networks[experiment.name] = {
                "committed": f"paper/{variant}_s{r['seed']}",
                "cpu_bfloat16": r.get("cpu_bfloat16"),
                "identical": [k for k in keys if r[k] == twin[k]],
                "different": [k for k in keys if r[k] != twin[k]],
            }
    paths = {e["cpu_bfloat16"] for e in networks.values() if not e["different"]}
    return {
        "networks": networks,
        "committed_cpu_bfloat16": paths.pop() if len(paths) == 1 else None,
    }


def committed_paper_networks(s):
    """`{variant: {seed: headline}}` of the committed paper-scale networks (docs/replication/
    experiments/paper/), to compare retrained ones with."""
    networks = {}
    for _, r in _committed_records(s, "paper"):
        networks.setdefault(r["variant"], {})[r["seed"]] = network_headline(r)
    return networks


def _committed_records(s, kind):
    """`(name, record)` of each committed result under docs/replication/experiments/<kind>/,
    by name (nothing when the directory is missing)."""
    directory = os.path.join(s.docs_dir, "replication", "experiments", kind)
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as file:
                yield name[: -len(".json")], json.load(file)


def _permutation(record, statistics):
    """The permuted network's D/G/R per probe: `"recalibrated"` BatchNormalization statistics
    (T2's measure) or the `"stale_statistics"` (empty for a record without them)."""
    entry = record["channel_permutation"]
    if statistics == "stale_statistics":
        entry = entry.get("stale_statistics", {})
    return entry.get("relative_stability", {"D": {}, "G": {}})


def _per_probe(records):
    """`[{probe: value}]` (one per seed) -> `{probe: [per seed]}`."""
    tree = {}
    for record in records:
        _append(tree, [], record)
    return tree


# The first paper-scale networks were trained with Keras's own (unfused) BatchNormalization,
# before the builders' layer ran TensorFlow's fused kernel (2x faster steps); all were then
# retrained with the fused layer. Their numbers stay, as a check that the change is numerical.
KERAS_BATCH_NORM_DIR = "paper_keras_bn"


def keras_batch_norm_runs(s):
    """`{"<variant>_s<seed>": {test_accuracy, shift_consistency}}` of the networks trained with
    Keras's unfused BatchNormalization (same recipe and seeds), from docs/replication/."""
    return {
        name: {"test_accuracy": r["test_accuracy"], "shift_consistency": r["shift_consistency"]}
        for name, r in _committed_records(s, KERAS_BATCH_NORM_DIR)
    }


def other_synthetic_settings(s):
    """Finished synthetic runs of other settings under `synthetic/` (earlier runs), by
    `"<prototypes>/<downsample>"`, each in the layout of `synthetic`."""
    other = {}
    current = (s.synthetic_prototypes, s.synthetic_downsample)
    directory = os.path.join(os.path.abspath(s.output_dir), "synthetic")
    for label in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        path = os.path.join(directory, label, "result.json")
        if not os.path.exists(path):
            continue
        with open(path) as file:
            r = json.load(file)
        # Results written before the setting was recorded: strokes, max pooling.
        setting = (r.get("prototypes", "strokes"), r.get("downsample", "max"))
        if setting != current:
            add_synthetic(other.setdefault("/".join(setting), {}), r)
    return other


def add_synthetic(tree, result):
    """`tree[C]` gathers a synthetic run: per-layer lists over seeds, accuracy per seed."""
    entry = tree.setdefault(number(result["strength"]), {"strength": result["strength"]})
    entry.setdefault("test_accuracy", []).append(result["test_accuracy"])
    for measure in ("sensitivity", "smoothness", "smoothness_init"):
        _append(entry, [measure], result.get(measure, {}))


def _append(tree, keys, values):
    """`tree[k1][k2]...[probe]` lists, one entry per seed."""
    for key in keys:
        tree = tree.setdefault(key, {})
    for name, value in values.items():
        tree.setdefault(name, []).append(value)


def number(value):
    return str(int(value)) if float(value).is_integer() else str(value)


def write_json(path, document):
    """`document` as JSON at `path`, written atomically: the package's one JSON writer
    (`deformstab_tf.runrecord.write_json`)."""
    from deformstab_tf.runrecord import write_json as write

    write(path, document)


def write_text(path, text):
    """Written beside and moved into place (`deformstab_tf.runrecord.write_text`): a cut-off
    write leaves the old file whole, never half a result."""
    from deformstab_tf.runrecord import write_text as write

    write(path, text)
