"""Tests of the VGG and ResNet builders with switchable downsampling."""

import keras
import numpy as np
import pytest

from deformstab_tf.models import (
    DOWNSAMPLING,
    build_resnet,
    build_vgg,
    cifar_vgg,
    imagenet_vgg,
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
    ],
)
def test_build_vgg_rejects_bad_arguments(kwargs, message):
    arguments = {"blocks": CIFAR_BLOCKS, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_vgg(**arguments)


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
    ],
)
def test_resnet_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resnet18(**kwargs)
