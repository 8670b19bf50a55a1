"""Tests of the VGG and ResNet builders with switchable downsampling."""

import keras
import numpy as np
import pytest

from deformstab_tf import deformation_layer, relative_stability
from deformstab_tf.measures.features import default_probe_layer_names
from deformstab_tf.models import (
    DOWNSAMPLING,
    build_resnet,
    build_vgg,
    cifar_vgg,
    efficientnet_b0,
    fully_connected,
    imagenet_vgg,
    lenet,
    mobilenet_v2,
    probe_layer_names,
    resnet18,
)
from tests.backends import as_numpy

# Backend-independent: CI also runs this file with KERAS_BACKEND=jax (see README).
pytestmark = pytest.mark.backends

TINY_BLOCKS = [(4,), (8,)]
TINY_WIDTHS = (4, 8, 8, 16)


def images(batch=2, size=16, channels=3, seed=0):
    return np.random.default_rng(seed).random((batch, size, size, channels), dtype="float32")


def train_one_step(model, x):
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(x, np.arange(len(x)) % model.output.shape[-1])
    assert np.isfinite(loss)
    after = model.trainable_weights
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, after, strict=True)]
    assert all(changed), "every trainable weight should receive a gradient"


def assert_save_load_round_trip(model, x, path):
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        as_numpy(loaded(x, training=False)), as_numpy(model(x, training=False)), atol=1e-5
    )
    assert probe_layer_names(loaded) == probe_layer_names(model)


def spatial(model, name):
    return tuple(model.get_layer(name).output.shape[1:3])


# --- closed-form parameter counts (all weights, BatchNorm moving statistics included) ------


def bn(c):
    return 4 * c  # gamma, beta, moving mean, moving variance


def vgg_param_count(blocks, downsample, num_classes, in_channels=3, pool=2, head_features=None):
    total, c = 0, in_channels
    for block in blocks:
        for width in block:
            total += 9 * c * width + bn(width)  # 3x3 conv without bias, then BatchNorm
            c = width
        if downsample == "strided":
            total += pool * pool * c * c
        elif downsample == "strided_relu":
            total += pool * pool * c * c + bn(c)
    features = c if head_features is None else head_features
    return total + features * num_classes + num_classes  # Dense with bias


def resnet_param_count(stage_blocks, widths, downsample, num_classes, stem="cifar", pool=2):
    stem_kernel = 3 if stem == "cifar" else 7
    total, c = stem_kernel**2 * 3 * widths[0] + bn(widths[0]), widths[0]
    for stage, (count, width) in enumerate(zip(stage_blocks, widths, strict=True)):
        for index in range(count):
            downsamples = stage > 0 and index == 0
            total += 9 * c * width + bn(width) + 9 * width * width + bn(width)
            if downsamples and downsample == "strided":
                total += c * width + bn(width)  # 1x1 stride-2 shortcut conv
            else:
                if downsamples and downsample == "strided_relu":
                    # one 2x2 conv -> BN unit on the main path, one on the shortcut
                    total += pool * pool * width * width + bn(width)
                    total += pool * pool * c * c + bn(c)
                if c != width:
                    total += c * width + bn(width)  # 1x1 shortcut conv
            c = width
    return total + c * num_classes + num_classes


def bn_moving_statistics(model):
    return sum(
        2 * layer.moving_mean.shape[0]
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )


# --- every variant builds, trains, halves its size and round-trips through .keras ---------


@pytest.mark.parametrize("downsample", DOWNSAMPLING)
def test_vgg_variant_trains_and_round_trips(downsample, tmp_path):
    model = build_vgg(TINY_BLOCKS, downsample, input_shape=(16, 16, 3), num_classes=3)
    expected = [(16, 16), (16, 16)] if downsample == "none" else [(8, 8), (4, 4)]
    assert [spatial(model, f"block{b}_down") for b in (1, 2)] == expected
    assert spatial(model, "block2_conv1") == ((16, 16) if downsample == "none" else (8, 8))
    x = images()
    train_one_step(model, x)
    assert_save_load_round_trip(model, x, tmp_path / "m.keras")


@pytest.mark.parametrize("downsample", DOWNSAMPLING)
def test_resnet_variant_trains_and_round_trips(downsample, tmp_path):
    model = build_resnet(
        (1, 1, 1, 1), TINY_WIDTHS, downsample, input_shape=(16, 16, 3), num_classes=3
    )
    sizes = [spatial(model, f"block{b}_out") for b in (1, 2, 3, 4)]
    if downsample == "none":
        assert sizes == [(16, 16)] * 4
    else:
        assert sizes == [(16, 16), (8, 8), (4, 4), (2, 2)]
        assert [spatial(model, f"block{b}_down") for b in (2, 3, 4)] == sizes[1:]
    x = images()
    train_one_step(model, x)
    assert_save_load_round_trip(model, x, tmp_path / "m.keras")


def test_resnet18_tiny_trains():
    model = resnet18("blur", input_shape=(16, 16, 3), widths=TINY_WIDTHS)
    train_one_step(model, images())


def test_flatten_head_trains_and_counts(tmp_path):
    model = build_vgg(TINY_BLOCKS, "avg", input_shape=(16, 16, 3), num_classes=3, head="flatten")
    assert model.count_params() == vgg_param_count(TINY_BLOCKS, "avg", 3, head_features=4 * 4 * 8)
    x = images()
    train_one_step(model, x)
    assert_save_load_round_trip(model, x, tmp_path / "m.keras")


def test_variable_input_size_with_gap_head():
    model = build_vgg(TINY_BLOCKS, "blur", input_shape=(None, None, 3), num_classes=3)
    for size in (16, 24):
        assert model(images(size=size)).shape == (2, 3)


# --- wiring -------------------------------------------------------------------------------


def probe_model(model, names):
    return keras.Model(model.input, [model.get_layer(n).output for n in names])


def test_subsample_unit_keeps_top_left_pixels_of_the_block_output():
    model = build_vgg(TINY_BLOCKS, "subsample", input_shape=(16, 16, 3))
    conv, down = probe_model(model, ["block1_conv1", "block1_down"])(images(), training=False)
    np.testing.assert_array_equal(as_numpy(down), as_numpy(conv)[:, ::2, ::2, :])


def test_max_unit_with_pool_3_stride_2_matches_numpy():
    model = build_vgg(TINY_BLOCKS, "max", input_shape=(16, 16, 3), pool_size=3, strides=2)
    conv, down = probe_model(model, ["block1_conv1", "block1_down"])(images(), training=False)
    conv = as_numpy(conv)
    # "same" padding for a 3-window at stride 2 on 16 pixels pads 0 before and 1 after.
    padded = np.pad(conv, [(0, 0), (0, 1), (0, 1), (0, 0)], constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    np.testing.assert_allclose(as_numpy(down), windows.max(axis=(-2, -1))[:, ::2, ::2], atol=0)


def test_pool_size_and_stride_grid_sizes():
    # Every step maps n -> ceil(n / strides), whatever the kernel size.
    for pool_size, strides, expected in [(3, 2, (8, 4)), (2, 3, (6, 2)), (4, 4, (4, 1))]:
        for downsample in ("max", "avg", "strided", "strided_relu", "subsample", "blur"):
            model = build_vgg(
                TINY_BLOCKS,
                downsample,
                input_shape=(16, 16, 3),
                pool_size=pool_size,
                strides=strides,
            )
            sizes = tuple(spatial(model, f"block{b}_down")[0] for b in (1, 2))
            assert sizes == expected, (downsample, pool_size, strides)


def test_resnet_strided_is_the_standard_resnet_block():
    model = build_resnet((1, 1), (4, 8), "strided", input_shape=(16, 16, 3))
    assert model.get_layer("block2_conv1_conv").strides == (2, 2)
    shortcut = model.get_layer("block2_shortcut_conv")
    assert shortcut.kernel_size == (1, 1) and shortcut.strides == (2, 2)
    assert isinstance(model.get_layer("block2_down"), keras.layers.Identity)


def test_resnet_switch_downsamples_main_path_and_shortcut():
    model = build_resnet((1, 1), (4, 8), "max", input_shape=(16, 16, 3))
    assert model.get_layer("block2_conv1_conv").strides == (1, 1)
    assert isinstance(model.get_layer("block2_down"), keras.layers.MaxPooling2D)
    assert isinstance(model.get_layer("block2_shortcut_down"), keras.layers.MaxPooling2D)
    assert model.get_layer("block2_shortcut_conv").strides == (1, 1)
    block1_out, shortcut_down = probe_model(model, ["block1_out", "block2_shortcut_down"])(
        images(), training=False
    )
    pooled = as_numpy(block1_out).reshape(2, 8, 2, 8, 2, 4).max(axis=(2, 4))
    np.testing.assert_allclose(as_numpy(shortcut_down), pooled)


def test_resnet_imagenet_stem_reduces_by_four():
    model = build_resnet((1, 1), (4, 8), "avg", input_shape=(32, 32, 3), stem="imagenet")
    assert spatial(model, "stem") == (8, 8)
    assert spatial(model, "block2_out") == (4, 4)


# --- channels_first -----------------------------------------------------------------------


def copy_weights(source, target):
    target.set_weights(source.get_weights())


@pytest.mark.parametrize("downsample", DOWNSAMPLING)
def test_vgg_channels_first_matches_channels_last(downsample):
    last = build_vgg(TINY_BLOCKS, downsample, input_shape=(16, 16, 3))
    first = build_vgg(
        TINY_BLOCKS, downsample, input_shape=(3, 16, 16), data_format="channels_first"
    )
    copy_weights(last, first)
    x = images()
    np.testing.assert_allclose(
        as_numpy(first(np.transpose(x, (0, 3, 1, 2)), training=False)),
        as_numpy(last(x, training=False)),
        atol=1e-5,
    )


@pytest.mark.parametrize("downsample", ["strided", "blur"])
def test_resnet_channels_first_matches_channels_last(downsample):
    last = build_resnet((1, 1), (4, 8), downsample, input_shape=(16, 16, 3))
    first = build_resnet(
        (1, 1), (4, 8), downsample, input_shape=(3, 16, 16), data_format="channels_first"
    )
    copy_weights(last, first)
    x = images()
    np.testing.assert_allclose(
        as_numpy(first(np.transpose(x, (0, 3, 1, 2)), training=False)),
        as_numpy(last(x, training=False)),
        atol=1e-5,
    )


def test_channels_first_trains_and_defaults_its_input_shape():
    model = build_vgg(TINY_BLOCKS, "blur", data_format="channels_first")
    assert tuple(model.input.shape) == (None, 3, 32, 32)
    assert tuple(model.get_layer("block2_down").output.shape) == (None, 8, 8, 8)
    train_one_step(model, np.transpose(images(size=32), (0, 3, 1, 2)))


# --- presets: probe names and parameter counts --------------------------------------------


CIFAR_BLOCKS = [(32, 32), (64, 64), (128, 128), (256, 256)]
IMAGENET_BLOCKS = [(64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3]


def expected_probe_names(blocks):
    names = ["input"]
    for b, block in enumerate(blocks, start=1):
        names += [f"block{b}_conv{k}" for k in range(1, len(block) + 1)] + [f"block{b}_down"]
    return names


@pytest.mark.parametrize("downsample", DOWNSAMPLING)
def test_cifar_vgg_probes_and_parameter_count(downsample):
    model = cifar_vgg(downsample)
    names = probe_layer_names(model)
    assert len(names) == 13
    assert names == expected_probe_names(CIFAR_BLOCKS)
    assert model.count_params() == vgg_param_count(CIFAR_BLOCKS, downsample, 10)
    if downsample != "none":
        assert spatial(model, "block4_down") == (2, 2)


def test_imagenet_vgg_probes_and_parameter_count():
    model = imagenet_vgg("blur")
    names = probe_layer_names(model)
    assert len(names) == 19
    assert names == expected_probe_names(IMAGENET_BLOCKS)
    assert tuple(model.input.shape) == (None, 224, 224, 3)
    assert model.output.shape[-1] == 1000
    assert spatial(model, "block5_down") == (7, 7)
    assert model.count_params() == vgg_param_count(IMAGENET_BLOCKS, "blur", 1000)


@pytest.mark.parametrize("downsample", ["strided", "strided_relu", "blur"])
def test_resnet18_probes_and_parameter_count(downsample):
    model = resnet18(downsample)
    names = probe_layer_names(model)
    assert len(names) == 21
    assert names[:4] == ["input", "stem", "block1_conv1", "block1_out"]
    assert names[6:9] == ["block3_conv1", "block3_down", "block3_out"]
    widths = (64, 128, 256, 512)
    expected = resnet_param_count((2, 2, 2, 2), widths, downsample, 10)
    assert model.count_params() == expected


def test_resnet18_matches_published_parameter_counts():
    # Trainable parameters of the reference implementations: the CIFAR ResNet-18 of
    # kuangliu/pytorch-cifar (3x3 stem, 10 classes) and torchvision's resnet18 (1000 classes).
    cifar = resnet18("strided")
    assert cifar.count_params() - bn_moving_statistics(cifar) == 11_173_962
    imagenet = resnet18("strided", input_shape=(224, 224, 3), num_classes=1000, stem="imagenet")
    assert imagenet.count_params() - bn_moving_statistics(imagenet) == 11_689_512


def test_resnet_parameter_count_with_equal_widths():
    # With equal widths only "strided" needs a shortcut conv.
    for downsample in ("strided", "max", "strided_relu"):
        model = build_resnet((2, 1), (8, 8), downsample, input_shape=(16, 16, 3), num_classes=5)
        assert model.count_params() == resnet_param_count((2, 1), (8, 8), downsample, 5)


def test_probe_layer_names_rejects_foreign_models():
    inputs = keras.Input((8, 8, 3))
    foreign = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="block1_conv1")(inputs))
    with pytest.raises(ValueError, match="not built by deformstab_tf builders"):
        probe_layer_names(foreign)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not built by deformstab_tf builders"):
        probe_layer_names(plain)


# --- kernel smoothness at initialisation --------------------------------------------------


def tv_over_l1(kernel):
    """TV/L1 of a (h, w, in, out) kernel: spatial neighbour differences over all channels."""
    tv = np.abs(kernel[1:] - kernel[:-1]).sum() + np.abs(kernel[:, 1:] - kernel[:, :-1]).sum()
    return tv / np.abs(kernel).sum()


def test_fresh_3x3_kernels_have_tv_over_l1_near_1_87():
    keras.utils.set_random_seed(1)
    model = cifar_vgg("max")
    big = tv_over_l1(model.get_layer("block4_conv2_conv").kernel.numpy())  # 3x3x256x256
    assert abs(big - 1.87) < 0.03
    # Independent check: a numpy 3x3 kernel of 2-sigma-truncated normals gives the same ratio.
    samples = np.random.default_rng(0).standard_normal(3 * 3 * 256 * 256 * 2)
    truncated = samples[np.abs(samples) <= 2][: 3 * 3 * 256 * 256].reshape(3, 3, 256, 256)
    assert abs(big - tv_over_l1(truncated)) < 0.01
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert abs(tv_over_l1(layer.kernel.numpy()) - 1.87) < 0.15, layer.name


def test_kernel_initializer_is_lecun_normal_by_default():
    keras.utils.set_random_seed(2)
    model = cifar_vgg("max")
    kernel = as_numpy(model.get_layer("block4_conv2_conv").kernel)
    fan_in = 3 * 3 * 256
    # Keras draws N(0, s^2) truncated at 2 s with s = 1/sqrt(fan_in) / 0.8796 (so std = 1/sqrt).
    assert abs(kernel.std() * np.sqrt(fan_in) - 1.0) < 0.02
    # None beyond 2 s; Keras's PyTorch backend keeps a draw outside when 4 tries in a row fall
    # there (p = 4e-6 per weight), so a few in a million may.
    beyond = np.mean(np.abs(kernel) > 2 / np.sqrt(fan_in) / 0.87962566)
    assert beyond <= (1e-5 if keras.backend.backend() == "torch" else 0.0)


# --- bad arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"downsample": "maxpool"}, r"downsample='maxpool'.*'subsample'.*'blur'.*'none'"),
        ({"blur_size": 1}, r"blur_size=1.*2, 3, 4, 5, 6, 7"),
        ({"blur_size": 8}, r"blur_size=8"),
        ({"head": "dense"}, r"head='dense'.*'gap', 'flatten'"),
        ({"num_classes": 0}, r"num_classes=0"),
        ({"blocks": []}, r"blocks=\[\]"),
        ({"blocks": [(4,), ()]}, r"blocks.*block 2 is \(\)"),
        ({"blocks": [(4, -1)]}, r"blocks=-1"),
        ({"input_shape": (8, 8, 3)}, r"input_shape=\(8, 8, 3\).*step 4.*at least 9x9"),
        ({"input_shape": (32, 32)}, r"input_shape=\(32, 32\)"),
        ({"pool_size": 0}, r"pool_size=0"),
        ({"data_format": "NCHW"}, r"data_format='NCHW'.*'channels_first'"),
        ({"batch_norm_momentum": 1.5}, r"batch_norm_momentum=1.5"),
    ],
)
def test_build_vgg_rejects_bad_arguments(kwargs, message):
    arguments = {"blocks": CIFAR_BLOCKS, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_vgg(**arguments)


@pytest.mark.parametrize(
    "build",
    [
        lambda **kw: build_vgg(TINY_BLOCKS, "strided_relu", input_shape=(8, 8, 3), **kw),
        lambda **kw: resnet18("blur", input_shape=(16, 16, 3), widths=(4, 4, 4, 4), **kw),
        # keras.applications keep their ImageNet momenta (MobileNetV2: 0.999) unless told
        lambda **kw: mobilenet_v2(alpha=0.35, **kw),
        lambda **kw: efficientnet_b0(**kw),
    ],
    ids=["vgg", "resnet", "mobilenet_v2", "efficientnet_b0"],
)
def test_batch_norm_momentum_reaches_every_normalization_and_sets_how_fast_stats_follow(build):
    """Default 0.9: after n training steps on a constant batch, the moving mean holds
    0.9**n of its initial value (closed form of the exponential average)."""
    norms = [
        layer for layer in build().layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert norms and {layer.momentum for layer in norms} == {0.9}
    model = build(batch_norm_momentum=0.5)
    assert {layer.momentum for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)} == {0.5}  # fmt: skip
    assert model.get_config() == keras.Model.from_config(model.get_config()).get_config()

    norm = norms[0]
    x = np.random.default_rng(0).normal(3.0, 1.0, (4, *norm.input.shape[1:])).astype("float32")
    batch_mean = x.mean(axis=(0, 1, 2))
    for _ in range(5):
        norm(x, training=True)
    expected = batch_mean * (1 - 0.9**5)  # the moving mean starts at 0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm.moving_mean), expected, rtol=1e-5)


def test_input_too_small_message_accounts_for_blur_padding():
    # Blur with 7 taps reflect-pads 3 pixels, so every step needs 4 pixels, not 2.
    build_vgg(TINY_BLOCKS, "max", input_shape=(4, 4, 3))
    with pytest.raises(
        ValueError, match=r"input_shape=\(4, 4, 3\).*step 2.*at least 4x4.*at least 7x7"
    ):
        build_vgg(TINY_BLOCKS, "blur", input_shape=(4, 4, 3), blur_size=7)
    build_vgg(TINY_BLOCKS, "none", input_shape=(1, 1, 3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"downsample": "pool"}, r"downsample='pool'"),
        ({"stem": "tiny"}, r"stem='tiny'.*'cifar', 'imagenet'"),
        ({"num_classes": -3}, r"num_classes=-3"),
        ({"blur_size": 9}, r"blur_size=9"),
        ({"input_shape": (4, 4, 3)}, r"input_shape=\(4, 4, 3\).*at least 5x5"),
        ({"stem": "imagenet", "input_shape": (16, 16, 3)}, r"\(16, 16, 3\).*at least 17x17"),
        ({"widths": (8, 16)}, r"stage_blocks=.*widths=\(8, 16\)"),
        ({"batch_norm_momentum": -0.1}, r"batch_norm_momentum=-0.1"),
    ],
)
def test_resnet_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resnet18(**kwargs)


# --- reference architectures of Petrini et al. (2021): fully connected, LeNet, keras.applications


def dense_params(n_in, n_out):
    return n_in * n_out + n_out  # kernel + bias


def conv_params(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def build_with_policy(builder, policy="mixed_bfloat16", **kwargs):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        return builder(**kwargs)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def assert_logits(model, x):
    """Linear logits in float32-castable form: no softmax (rows need not sum to 1)."""
    assert model.get_layer("logits").activation.__name__ == "linear"
    assert model.layers[-1].name == "logits"
    out = as_numpy(keras.ops.cast(model(x, training=False), "float32"))
    assert out.shape == (len(x), model.output.shape[-1])
    assert np.all(np.isfinite(out))
    assert not np.allclose(out.sum(axis=-1), 1.0, atol=1e-3)
    return out


def assert_relative_stability_at_output(model, names):
    """R, D, G finite at every probe, on a tiny batch; the last probe is the output."""
    x = images(batch=8, size=32, seed=1)
    diffeo = deformation_layer("diffeo", seed=0, cutoff=3, displacement=1.0)
    result = relative_stability(model, x, diffeo, seed=0)
    assert list(result) == names and names[-1] == "logits"
    for value in (result["logits"], result.details["D"]["logits"], result.details["G"]["logits"]):
        assert np.isfinite(value) and value > 0
    assert abs(result["input"] - 1.0) < 1e-6  # D = G at the input


def test_fully_connected_layers_parameters_and_logits(tmp_path):
    model = fully_connected()  # Petrini et al.'s FC: 2 hidden layers of 500 units
    assert model.count_params() == (
        dense_params(32 * 32 * 3, 500) + dense_params(500, 500) + dense_params(500, 10)
    )
    assert model.count_params() == 1_792_010
    small = fully_connected(input_shape=(4, 4, 2), num_classes=3, width=8, depth=3)
    assert small.count_params() == dense_params(32, 8) + 2 * dense_params(8, 8) + dense_params(8, 3)
    assert [layer.name for layer in small.layers] == [
        "input", "flatten", "dense1", "relu1", "dense2", "relu2", "dense3", "relu3", "logits",
    ]  # fmt: skip
    assert default_probe_layer_names(small) == ["input", "relu1", "relu2", "relu3", "logits"]
    x = images(size=4, channels=2)
    assert_logits(small, x)
    # Nothing after the linear logits: a negative kernel on the (non-negative) last hidden
    # activations gives negative outputs (the sign of a fresh net's logits is a coin toss).
    logits = small.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([-np.abs(kernel) - 0.1, bias])
    assert keras.ops.convert_to_numpy(small(x)).max() < 0
    logits.set_weights([kernel, bias])
    train_one_step(small, x)
    small.save(tmp_path / "fc.keras")
    loaded = keras.models.load_model(tmp_path / "fc.keras")
    np.testing.assert_allclose(as_numpy(loaded(x)), as_numpy(small(x)), atol=1e-6)
    linear = fully_connected(input_shape=(4, 4, 2), num_classes=3, depth=0)
    assert linear.count_params() == dense_params(32, 3)
    assert default_probe_layer_names(linear) == ["input", "logits"]


def test_lenet_layers_parameters_and_logits(tmp_path):
    model = lenet()  # 32 -> conv 28 -> pool 14 -> conv 10 -> pool 5: 400 features
    assert model.get_layer("pool2").output.shape == (None, 5, 5, 16)
    expected = (
        conv_params(5, 3, 6)
        + conv_params(5, 6, 16)
        + dense_params(5 * 5 * 16, 120)
        + dense_params(120, 84)
        + dense_params(84, 10)
    )
    assert model.count_params() == expected == 62_006
    assert default_probe_layer_names(model) == [
        "input", "relu1", "pool1", "relu2", "pool2", "relu3", "relu4", "logits",
    ]  # fmt: skip
    assert model.get_layer("dense3").input.shape == (None, 400)
    small = lenet(input_shape=(16, 16, 1), num_classes=3, filters=(2, 4), units=(8,))
    assert small.get_layer("pool2").output.shape == (None, 1, 1, 4)
    assert small.count_params() == (
        conv_params(5, 1, 2) + conv_params(5, 2, 4) + dense_params(4, 8) + dense_params(8, 3)
    )
    assert default_probe_layer_names(small) == [
        "input", "relu1", "pool1", "relu2", "pool2", "relu3", "logits",
    ]  # fmt: skip
    x = images(size=16, channels=1)
    assert_logits(small, x)
    train_one_step(small, x)
    small.save(tmp_path / "lenet.keras")
    loaded = keras.models.load_model(tmp_path / "lenet.keras")
    np.testing.assert_allclose(as_numpy(loaded(x)), as_numpy(small(x)), atol=1e-6)


@pytest.mark.parametrize("builder", [fully_connected, lenet])
def test_small_reference_models_under_mixed_bfloat16_and_relative_stability(builder):
    before = keras.mixed_precision.global_policy().name
    model = build_with_policy(builder)
    assert keras.mixed_precision.global_policy().name == before  # restored
    assert model.get_layer("logits").compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in model.weights)
    assert_logits(model, images(batch=4, size=32))
    assert_relative_stability_at_output(model, default_probe_layer_names(model))


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="keras.applications builds it; the small reference models cover the other backends",
)
def test_mobilenet_v2_is_keras_mobilenet_with_logits_under_mixed_bfloat16():
    model = build_with_policy(mobilenet_v2, alpha=0.35)
    reference = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None
    )
    assert model.count_params() == reference.count_params()
    assert model.get_layer("out_relu").output.shape == (None, 1, 1, 1280)
    assert model.get_layer("logits").compute_dtype == "bfloat16"
    assert_logits(model, images(batch=4, size=32))
    names = default_probe_layer_names(model)
    assert len(names) == 55
    assert names[:2] == ["input", "Conv1_relu"] and names[-3:] == ["out_relu", "avg_pool", "logits"]
    assert_relative_stability_at_output(model, names)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="keras.applications builds it; the small reference models cover the other backends",
)
def test_efficientnet_b0_takes_unit_range_images_and_gives_logits_under_mixed_bfloat16():
    model = build_with_policy(efficientnet_b0)
    # Keras's B0 with its top, less the 7 numbers of the Normalization layer left out here.
    reference = keras.applications.EfficientNetB0(
        input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=None
    )
    assert model.count_params() == reference.count_params() - 7
    assert not any(
        isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))
        for layer in model.layers
    )
    assert [layer.name for layer in model.layers[:3]] == ["input", "stem_conv_pad", "stem_conv"]
    assert model.get_layer("top_activation").output.shape == (None, 1, 1, 1280)
    assert model.get_layer("logits").compute_dtype == "bfloat16"
    assert_logits(model, images(batch=4, size=32))
    names = default_probe_layer_names(model)
    assert len(names) == 100
    assert names[:2] == ["input", "stem_activation"]
    assert names[-3:] == ["top_activation", "avg_pool", "logits"]
    assert_relative_stability_at_output(model, names)


@pytest.mark.parametrize(
    "builder, kwargs, message",
    [
        (fully_connected, {"width": 0}, r"`width` must be a positive integer.*width=0"),
        (fully_connected, {"depth": -1}, r"`depth` must be an integer >= 0.*depth=-1"),
        (fully_connected, {"num_classes": 0}, r"num_classes=0"),
        (fully_connected, {"input_shape": (None, 32, 3)}, r"input_shape=\(None, 32, 3\)"),
        (lenet, {"filters": ()}, r"`filters` must be a non-empty sequence.*filters=\(\)"),
        (lenet, {"filters": (6, 0)}, r"filters=\(6, 0\)"),
        (lenet, {"units": (120, -1)}, r"units=\(120, -1\)"),
        (lenet, {"input_shape": (12, 12, 3)}, r"input_shape=\(12, 12, 3\).*at least 16x16"),
        (lenet, {"data_format": "NHWC"}, r"data_format='NHWC'"),
        (mobilenet_v2, {"alpha": 0}, r"`alpha` must be a finite number > 0.*alpha=0"),
        (mobilenet_v2, {"batch_norm_momentum": 1.5}, r"batch_norm_momentum=1.5"),
        (efficientnet_b0, {"batch_norm_momentum": -1}, r"batch_norm_momentum=-1"),
        (mobilenet_v2, {"input_shape": (16, 16, 3)}, r"input_shape=\(16, 16, 3\).*32x32"),
        (efficientnet_b0, {"num_classes": -1}, r"num_classes=-1"),
        (efficientnet_b0, {"input_shape": (32, 32)}, r"input_shape=\(32, 32\)"),
    ],
)
def test_reference_models_reject_bad_arguments_in_one_line(builder, kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        builder(**kwargs)
    assert "\n" not in str(error.value)
