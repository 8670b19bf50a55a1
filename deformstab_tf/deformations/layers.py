"""Keras 3 preprocessing layers for random deformations.

The layers build on the public ``keras.layers.Layer`` (not Keras's private
``BaseImagePreprocessingLayer``) but keep its shape: ``get_random_transformation`` draws the
parameters and returns the dense displacement field, and ``transform_images`` /
``transform_segmentation_masks`` / ``transform_labels`` apply it, so images and masks in one dict
get the *same* warp; ``transform_bounding_boxes`` and ``transform_keypoints`` move boxes and
keypoints to where the warped images show them (`deformstab_tf.deformations.points`). Like Keras's
own image preprocessing layers they run on every backend: on TensorFlow ops inside a ``tf.data``
pipeline whatever the Keras backend, and on the active backend's ops otherwise (eagerly, inside
models, under XLA on TensorFlow and JAX).
"""

import math

import keras

from deformstab_tf._validation import check_choice, standardize_data_format
from deformstab_tf.deformations import _backend
from deformstab_tf.deformations.affine import affine_displacement, affine_matrices
from deformstab_tf.deformations.diffeo import _check_cutoff, diffeo_displacement
from deformstab_tf.deformations.points import deform_boxes, deform_keypoints
from deformstab_tf.deformations.tps import tps_displacement
from deformstab_tf.deformations.warp import FILL_MODES, INTERPOLATIONS, warp, warp_affine


class Transformation(dict):
    """A layer's drawn deformation, the dict `get_random_transformation` returns.

    ``{"displacement": (B or 1, H, W, 2)}`` for the field layers. `RandomAffine`'s holds
    ``"matrices"`` ``(B or 1, 2, 3)`` and builds its ``"displacement"`` from them on first read
    (`affine_displacement`), so that images and masks, which `warp_affine` resamples from the
    matrices, never pay for a dense field; boxes and keypoints read it.

    Example:

    >>> t = RandomAffine(rotation=10, seed=0).get_random_transformation(np.zeros((2, 8, 8, 1)))
    >>> sorted(t), tuple(t["displacement"].shape), sorted(t)
    (['matrices'], (2, 8, 8, 2), ['displacement', 'matrices'])
    """

    def __init__(self, *args, image_size=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_size = image_size

    def __missing__(self, key):
        if key == "displacement" and "matrices" in self and self.image_size is not None:
            self[key] = affine_displacement(self["matrices"], *self.image_size)
            return self[key]
        raise KeyError(key)


def _magnitude(argument, value):
    """A finite non-negative number, or raises a ValueError naming `argument`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < math.inf  # also rejects NaN
    ):
        raise ValueError(
            f"`{argument}` must be a finite number >= 0. Received: {argument}={value!r}"
        )
    return float(value)


# Keras's bounding box formats (`keras.utils.bounding_boxes.convert_format`), case-insensitive.
BOUNDING_BOX_FORMATS = (
    "xyxy",
    "yxyx",
    "xywh",
    "center_xywh",
    "center_yxhw",
    "rel_xyxy",
    "rel_yxyx",
    "rel_xywh",
    "rel_center_xywh",
)


def _bounding_box_format(value):
    """None, or one of `BOUNDING_BOX_FORMATS` (lower-cased), or raises a ValueError naming it."""
    if value is None:
        return None
    name = value.lower() if isinstance(value, str) else value
    if name not in BOUNDING_BOX_FORMATS:
        check_choice("bounding_box_format", value, BOUNDING_BOX_FORMATS)
    return name


def _value_range(argument, value, symmetric=True, minimum=None):
    """``(low, high)`` from a magnitude ``v`` (``(-v, v)`` if `symmetric`, else ``(v, v)``) or a
    pair, validated and named in errors."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        ):
            raise ValueError(
                f"`{argument}` must be a finite number or a pair (low, high). "
                f"Received: {argument}={value!r}"
            )
        low, high = float(value[0]), float(value[1])
        if low > high:
            raise ValueError(f"`{argument}` must have low <= high. Received: {argument}={value!r}")
    else:
        magnitude = _magnitude(argument, value)
        low, high = (-magnitude, magnitude) if symmetric else (magnitude, magnitude)
    if minimum is not None and low < minimum:
        raise ValueError(f"`{argument}` must be >= {minimum}. Received: {argument}={value!r}")
    return low, high


class BaseRandomDeformation(keras.layers.Layer):
    """Shared machinery of the random deformation layers.

    Subclasses implement ``random_displacement(batch_size, height, width, seed)``, returning a
    float32 field ``(batch_size, H, W, 2)`` (``batch_size`` is 1 with ``same_on_batch=True``);
    ``seed`` is a ``(2,)`` integer tensor, and `_uniform` / `_normal` derive one independent
    stream per draw from it. Each method runs on the ops of the backend its input belongs to
    (`_backend.backend_name`): the active backend's, or TensorFlow's inside a ``tf.data``
    pipeline (or any TensorFlow graph) on another backend.

    Where it runs: in `tf.data` pipelines (on TensorFlow ops, whatever the Keras backend) and
    inside models on the active backend (TensorFlow or JAX; also under XLA / `jax.jit`).

    Input shape:
        ``(B, H, W, C)`` or ``(H, W, C)`` (``(B, C, H, W)`` / ``(C, H, W)`` with
        ``channels_first``), any numeric dtype, a static ``H`` and ``W``; or a dict with
        ``"images"`` and optionally ``"segmentation_masks"`` (warped alike, nearest-sampled),
        ``"bounding_boxes"`` (Keras's ``{"boxes": (B, N, 4), "labels": (B, N)}`` in
        `bounding_box_format`, moved with the images), ``"keypoints"`` (``(B, K, 2)``, ``(x, y)``
        pixels, moved with the images) and ``"labels"`` (passed through).

    Output shape:
        The input shape (a dict stays a dict); float images in the layer's compute dtype,
        integer images (``uint8``) in their own, rounded and clipped to its range.

    Example:

    >>> issubclass(RandomThinPlateSpline, BaseRandomDeformation)
    True
    """

    default_fill_mode = "nearest"

    def __init__(
        self,
        interpolation="bilinear",
        fill_mode=None,
        fill_value=0.0,
        same_on_batch=False,
        seed=None,
        data_format=None,
        bounding_box_format=None,
        **kwargs,
    ):
        # Sampling happens in float32 whatever the policy; the output is cast to the compute dtype.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        fill_mode = self.default_fill_mode if fill_mode is None else fill_mode
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        check_choice("fill_mode", fill_mode, FILL_MODES)
        if isinstance(fill_value, bool) or not isinstance(fill_value, (int, float)):
            raise ValueError(f"`fill_value` must be a number. Received: fill_value={fill_value!r}")
        self.interpolation = interpolation
        self.fill_mode = fill_mode
        self.fill_value = float(fill_value)
        self.same_on_batch = bool(same_on_batch)
        self.data_format = standardize_data_format(data_format)
        self.bounding_box_format = _bounding_box_format(bounding_box_format)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)
        self.built = True  # no weights to build: `stateless_call` works before a first call
        self.supports_jit = True
        self._allow_non_tensor_positional_args = True

    def __call__(self, inputs, **kwargs):
        sample = keras.tree.flatten(inputs)[0]
        if isinstance(sample, keras.KerasTensor) or (
            _backend.backend_name(sample) == keras.backend.backend()
        ):
            return super().__call__(inputs, **kwargs)
        # Inside a TensorFlow graph (a tf.data pipeline) on another backend: the inputs stay
        # TensorFlow tensors, and the methods below run on TensorFlow ops (as Keras's DataLayer).
        convert_input_args = self._convert_input_args
        self._convert_input_args = False
        try:
            return super().__call__(inputs, **kwargs)
        finally:
            self._convert_input_args = convert_input_args

    def _seed_generator(self, name):
        """The layer's seed generator on backend `name` (a TensorFlow twin, created once and not
        tracked as a weight, in ``tf.data`` on another backend)."""
        if name == keras.backend.backend():
            return self.generator
        twins = self.__dict__.setdefault("_backend_generators", {})
        if name not in twins:
            import tensorflow as tf

            with tf.init_scope():  # a variable created once, outside the tf.data trace
                twins[name] = keras.random.SeedGenerator(self.seed, backend=_backend.ops(name))
        return twins[name]

    @staticmethod
    def _uniform(shape, low, high, seed, stream):
        name = _backend.backend_name(seed)
        return _backend.stateless_uniform(name, shape, low, high, seed, stream)

    @staticmethod
    def _normal(shape, seed, stream):
        return _backend.stateless_normal(_backend.backend_name(seed), shape, seed, stream)

    @staticmethod
    def _ops(sample):
        return _backend.ops(_backend.backend_name(sample))

    def check_image_size(self, height, width):
        """Raises a ValueError naming the layer's argument if it cannot warp images of this size
        (e.g. a TPS grid finer than the image), so a setting can be checked before any data
        flows; nothing to check by default.

        Example:

        >>> RandomThinPlateSpline(grid_size=5).check_image_size(4, 4)
        Traceback (most recent call last):
        ValueError: `grid_size` must be at most the image size 4 ... Received: grid_size=5
        """

    # -- the Keras image-preprocessing shape ---------------------------------------------------

    def _image_size(self, images):
        shape = tuple(images.shape)
        if len(shape) not in (3, 4):
            raise ValueError(
                f"{self.__class__.__name__} expects images of rank 4 (batch) or 3 (single "
                f"image). Received: images.shape={shape}"
            )
        spatial = shape[-3:-1] if self.data_format == "channels_last" else shape[-2:]
        if None in spatial:
            raise ValueError(
                f"{self.__class__.__name__} needs a static image height and width. "
                f"Received: images.shape={shape}"
            )
        return int(spatial[0]), int(spatial[1])

    def get_random_transformation(self, data, training=True, seed=None):
        """Draws this call's deformation, a `Transformation`: ``{"displacement": (B or 1, H, W,
        2)}`` (`RandomAffine`: ``{"matrices": (B or 1, 2, 3)}``, its field built on first read),
        or None when not training.

        Args:
            data: the images, or a dict with an ``"images"`` entry.
            training: when False, nothing is drawn.
            seed: an int or a ``(2,)`` integer tensor that overrides the layer's seed generator
                for this draw; by default the generator advances once per call.

        Returns:
            The transformation dict (a float32 field of the backend that runs), or None.

        Example:

        >>> layer = RandomThinPlateSpline(grid_size=3, max_displacement=2.0, seed=0)
        >>> field = layer.get_random_transformation(np.zeros((8, 32, 32, 3), "float32"))
        >>> tuple(field["displacement"].shape)
        (8, 32, 32, 2)
        """
        if not training:
            return None
        images = data["images"] if isinstance(data, dict) else data
        name = _backend.backend_name(images)
        B = _backend.ops(name)
        images = B.convert_to_tensor(images)
        height, width = self._image_size(images)
        if self.same_on_batch or len(images.shape) == 3:
            batch_size = 1
        else:
            batch_size = B.core.shape(images)[0]
        if seed is None:
            # One state update per call; every draw of the call derives from this seed (the
            # generator's update is the slow part under XLA, so it is not repeated per draw).
            seed = self._seed_generator(name).next()
        elif isinstance(seed, int):
            seed = B.convert_to_tensor([0, seed], B.random_seed_dtype())
        else:
            seed = B.convert_to_tensor(seed)
        return self.random_transformation(batch_size, height, width, seed)

    def random_transformation(self, batch_size, height, width, seed):
        """This draw's `Transformation`: ``{"displacement": random_displacement(...)}``;
        `RandomAffine` draws matrices instead."""
        field = self.random_displacement(batch_size, height, width, seed)
        return Transformation(displacement=field, image_size=(height, width))

    def _apply(self, images, transformation, interpolation, dtype=None):
        B = self._ops(images)
        single = len(images.shape) == 3
        if single:
            images = images[None]
        if self.data_format == "channels_first":
            images = B.numpy.transpose(images, (0, 2, 3, 1))
        # An affine draw is resampled from its matrices (`warp_affine`), without a dense field.
        affine = "matrices" in transformation
        images = (warp_affine if affine else warp)(
            images,
            transformation["matrices" if affine else "displacement"],
            interpolation=interpolation,
            fill_mode=self.fill_mode,
            fill_value=self.fill_value,
            dtype=dtype,
        )
        if self.data_format == "channels_first":
            images = B.numpy.transpose(images, (0, 3, 1, 2))
        return images[0] if single else images

    def transform_images(self, images, transformation, training=True):
        """The images warped by `transformation`: float images in the layer's compute dtype,
        integer images (``uint8`` as ``tf.data`` pipelines carry them) in their own dtype,
        rounded half to even (as ``np.round``) and clipped to the dtype's range."""
        B = self._ops(images)
        images = B.convert_to_tensor(images)
        dtype = _backend.dtype_name(images)
        if "int" in dtype:
            if training and transformation is not None:
                images = self._apply(images, transformation, self.interpolation, dtype=dtype)
            return images
        if training and transformation is not None:
            images = self._apply(images, transformation, self.interpolation)
        return B.cast(images, self.compute_dtype)

    def transform_segmentation_masks(self, segmentation_masks, transformation, training=True):
        """Masks get the images' warp, sampled at the nearest pixel (labels stay labels)."""
        segmentation_masks = self._ops(segmentation_masks).convert_to_tensor(segmentation_masks)
        if training and transformation is not None:
            segmentation_masks = self._apply(segmentation_masks, transformation, "nearest")
        return segmentation_masks

    def transform_bounding_boxes(self, bounding_boxes, transformation, training=True):
        """Boxes around the deformed outlines of the boxes, in the layer's `bounding_box_format`.

        The boxes are converted to ``xyxy`` pixels with ``keras.utils.bounding_boxes``, each
        box's outline moves to where the warped images show it, and the new box is the extent
        of the moved outline (`deform_boxes`: 33 samples per edge, one per pixel on smaller
        images, plus a refined extreme per edge and side; never larger than the deformed
        outline's extent, and short of it by at most 0.022 px, measured at the package's
        magnitudes on draws that do not fold). The new boxes are clipped to the image and
        converted back, as Keras's layers do: a box that leaves the image keeps its slot with
        zero area and label -1 (``keras.utils.bounding_boxes.clip_to_image_size``).

        Args:
            bounding_boxes: ``{"boxes": (B, N, 4) or (N, 4), "labels": (B, N) or (N,)}`` in
                `bounding_box_format` (ragged ones, from ``tf.data``, are padded as Keras pads
                them: boxes with 0, labels with -1).
            transformation: `get_random_transformation`'s dict, or None.
            training: when False, or without a transformation, the boxes are returned as they
                are.

        Returns:
            The dict with float32 ``"boxes"`` of the same shape and ``"labels"`` -1 where a box
            left the image.

        Example:

        >>> layer = RandomAffine(translation=(0.25, 0.25), bounding_box_format="xywh")
        >>> out = layer({"images": np.zeros((1, 16, 16, 1), "float32"),
        ...              "bounding_boxes": {"boxes": np.float32([[[2, 3, 4, 5], [14, 1, 2, 2]]]),
        ...                                 "labels": np.int32([[1, 2]])}})
        >>> np.asarray(out["bounding_boxes"]["boxes"]).round(4)       # 4 px right and down
        array([[[ 6.,  7.,  4.,  5.],
                [16.,  5.,  0.,  2.]]], dtype=float32)
        >>> np.asarray(out["bounding_boxes"]["labels"])              # the second one left
        array([[ 1, -1]], dtype=int32)
        """
        if self.bounding_box_format is None:
            raise ValueError(
                f"{self.__class__.__name__} received 'bounding_boxes' but no box format: pass "
                "`bounding_box_format`, e.g. bounding_box_format='xyxy'. "
                "Received: bounding_box_format=None"
            )
        bounding_boxes = self._dense_boxes(bounding_boxes)
        if not training or transformation is None:
            return bounding_boxes
        utils = keras.utils.bounding_boxes
        field = transformation["displacement"]
        height, width = int(field.shape[1]), int(field.shape[2])
        boxes = utils.convert_format(
            bounding_boxes["boxes"],
            source=self.bounding_box_format,
            target="xyxy",
            height=height,
            width=width,
        )
        moved = dict(bounding_boxes, boxes=deform_boxes(boxes, field))
        moved = utils.clip_to_image_size(
            moved, height=height, width=width, bounding_box_format="xyxy"
        )
        moved["boxes"] = utils.convert_format(
            moved["boxes"],
            source="xyxy",
            target=self.bounding_box_format,
            height=height,
            width=width,
        )
        return moved

    def _dense_boxes(self, bounding_boxes):
        """A copy of Keras's box dict with dense tensors (as Keras's ``densify_bounding_boxes``:
        ragged boxes padded with 0, their labels with -1)."""
        if not isinstance(bounding_boxes, dict) or "boxes" not in bounding_boxes:
            raise ValueError(
                "`bounding_boxes` must be a dict with 'boxes' (and 'labels'). "
                f"Received: bounding_boxes={bounding_boxes!r}"
            )
        dense = dict(bounding_boxes)
        for key, fill in (("boxes", 0.0), ("labels", -1)):
            if key in dense:
                value = dense[key]
                if hasattr(value, "to_tensor"):  # a tf.RaggedTensor
                    value = value.to_tensor(default_value=fill)
                name = _backend.backend_name(value)
                dense[key] = _backend.ops(name).convert_to_tensor(value)
        name = _backend.backend_name(dense["boxes"])
        dense["boxes"] = _backend.ops(name).cast(dense["boxes"], "float32")
        return dense

    def transform_keypoints(self, keypoints, transformation, training=True):
        """Keypoints moved to where the warped images show them.

        Coordinates are ``(x, y)`` in pixels, in the frame of Keras's boxes: the image covers
        ``[0, W] x [0, H]``, so the pixel in row ``i`` and column ``j`` has its centre at
        ``(j + 0.5, i + 0.5)`` (add 0.5 to pixel indices such as COCO's). A point ``p`` moves to
        the ``q`` where ``q - u(q) = p`` (`deform_keypoints`: damped Newton steps on the field,
        to float32 rounding, ~1e-5 px, at the package's magnitudes).

        Args:
            keypoints: ``(B, K, 2)``, or ``(K, 2)`` for a single image.
            transformation: `get_random_transformation`'s dict, or None.
            training: when False, or without a transformation, the keypoints are returned as
                they are.

        Returns:
            float32 keypoints of the same shape. One that is not in the image, before or after
            the warp, is ``(-1, -1)``: kept in its slot (never dropped), marked as Keras marks
            boxes that leave the image (label -1). Test visibility with ``keypoints[..., 0] >= 0``.

        Example:

        >>> layer = RandomAffine(translation=(0.25, 0.25))
        >>> out = layer({"images": np.zeros((1, 16, 16, 1), "float32"),
        ...              "keypoints": np.float32([[[2.5, 3.5], [14.0, 1.0]]])})
        >>> np.asarray(out["keypoints"]).round(4)
        array([[[ 6.5,  7.5],
                [-1. , -1. ]]], dtype=float32)
        """
        B = self._ops(keypoints)
        keypoints = B.cast(B.convert_to_tensor(keypoints), "float32")
        if not training or transformation is None:
            return keypoints
        return deform_keypoints(keypoints, transformation["displacement"])

    def transform_labels(self, labels, transformation, training=True):
        return labels

    def call(self, data, training=True):
        if isinstance(data, dict):
            if "images" not in data:
                raise ValueError(
                    f"{self.__class__.__name__} takes a tensor or a dict with an 'images' key. "
                    f"Received keys: {sorted(data)}"
                )
            data = dict(data)
            data["images"] = self._checked(data["images"])
            transformation = self.get_random_transformation(data, training=training)
            data["images"] = self.transform_images(data["images"], transformation, training)
            if "segmentation_masks" in data:
                data["segmentation_masks"] = self.transform_segmentation_masks(
                    data["segmentation_masks"], transformation, training
                )
            if "bounding_boxes" in data:
                boxes = self._dense_boxes(data["bounding_boxes"])
                self._check_shape("bounding_boxes['boxes']", boxes["boxes"], data["images"], 4)
                data["bounding_boxes"] = self.transform_bounding_boxes(
                    boxes, transformation, training
                )
            if "keypoints" in data:
                keypoints = self._ops(data["keypoints"]).convert_to_tensor(data["keypoints"])
                self._check_shape("keypoints", keypoints, data["images"], 2)
                data["keypoints"] = self.transform_keypoints(keypoints, transformation, training)
            if "labels" in data:
                data["labels"] = self.transform_labels(data["labels"], transformation, training)
            return data
        images = self._checked(data)
        transformation = self.get_random_transformation(images, training=training)
        return self.transform_images(images, transformation, training)

    def _check_shape(self, argument, value, images, last):
        """Raises a ValueError naming `argument` unless it is ``(B, N, last)`` for a batch of
        images, ``(N, last)`` for a single image."""
        expected = "(N, {})" if len(images.shape) == 3 else "(batch, N, {})"
        if len(value.shape) != len(images.shape) - 1 or value.shape[-1] not in (last, None):
            raise ValueError(
                f"`{argument}` must have shape {expected.format(last)} for images of shape "
                f"{tuple(images.shape)}. Received: {argument}.shape={tuple(value.shape)}"
            )

    def _checked(self, images):
        images = self._ops(images).convert_to_tensor(images)
        dtype = _backend.dtype_name(images)
        if not _backend.is_numeric(dtype):
            raise TypeError(
                f"{self.__class__.__name__} expects numeric images (float or integer). "
                f"Received: images.dtype={dtype}"
            )
        self._image_size(images)
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "interpolation": self.interpolation,
                "fill_mode": self.fill_mode,
                "fill_value": self.fill_value,
                "same_on_batch": self.same_on_batch,
                "seed": self.seed,
                "data_format": self.data_format,
                "bounding_box_format": self.bounding_box_format,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="deformstab_tf")
class RandomThinPlateSpline(BaseRandomDeformation):
    """Random thin-plate-spline warps (Ruderman et al. 2018).

    A fixed, evenly spaced ``grid_size x grid_size`` grid of control points (corners included)
    each gets a displacement drawn uniformly in ``[-max_displacement, max_displacement]`` pixels,
    independently per axis; the dense field is their TPS interpolant. The interpolation matrix is
    precomputed per image size, so a batch of warps costs one small matmul plus one resample.
    Paper settings: CIFAR-10 ``grid_size=3, max_displacement=2``; ImageNet ``5, 10``.

    Only active when ``training=True`` (the default when called directly, and inside ``fit``);
    identity in inference.

    Where it runs: in `tf.data` pipelines (on TensorFlow ops, whatever the Keras backend) and
    inside models on the active backend (TensorFlow or JAX; also under XLA / `jax.jit`).

    Args:
        grid_size: control points per side, >= 2 and at most the image size.
        max_displacement: ``C``, the largest control displacement per axis, in pixels.
        interpolation: ``"bilinear"`` or ``"nearest"``.
        fill_mode: ``"nearest"`` (default: clamp to the edge, as ``tfa.image.dense_image_warp``),
            ``"reflect"``, ``"wrap"`` or ``"constant"``.
        fill_value: the value read outside the image with ``fill_mode="constant"``.
        same_on_batch: draw one warp for the whole batch instead of one per image.
        seed: integer seed; the same seed gives the same sequence of warps.
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.
        bounding_box_format: the format of ``"bounding_boxes"`` in a dict input, one of Keras's
            (``"xyxy"``, ``"yxyx"``, ``"xywh"``, ``"center_xywh"``, ``"center_yxhw"`` and their
            ``"rel_"`` forms); needed only for boxes, as in Keras's layers.

    Input shape:
        ``(B, H, W, C)`` or ``(H, W, C)`` (``(B, C, H, W)`` / ``(C, H, W)`` with
        ``channels_first``), any numeric dtype, a static ``H`` and ``W``; or a dict with
        ``"images"`` and optionally ``"segmentation_masks"`` (warped alike, nearest-sampled),
        ``"bounding_boxes"`` (Keras's ``{"boxes": (B, N, 4), "labels": (B, N)}`` in
        `bounding_box_format`, moved with the images), ``"keypoints"`` (``(B, K, 2)``, ``(x, y)``
        pixels, moved with the images) and ``"labels"`` (passed through).

    Output shape:
        The input shape (a dict stays a dict); float images in the layer's compute dtype,
        integer images (``uint8``) in their own, rounded and clipped to its range.

    Example:

    >>> layer = RandomThinPlateSpline(grid_size=3, max_displacement=2.0, seed=0)
    >>> tuple(layer(np.zeros((8, 32, 32, 3), "float32")).shape)
    (8, 32, 32, 3)
    """

    def __init__(self, grid_size=3, max_displacement=2.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
            raise ValueError(
                f"`grid_size` must be an integer >= 2. Received: grid_size={grid_size!r}"
            )
        self.grid_size = grid_size
        self.max_displacement = _magnitude("max_displacement", max_displacement)

    def check_image_size(self, height, width):
        if self.grid_size > min(height, width):
            raise ValueError(
                f"`grid_size` must be at most the image size {min(height, width)} "
                f"(height={height}, width={width}). Received: grid_size={self.grid_size}"
            )

    def random_displacement(self, batch_size, height, width, seed):
        shape = (batch_size, self.grid_size * self.grid_size, 2)
        c = self.max_displacement
        displacements = self._uniform(shape, -c, c, seed, stream=0)
        return tps_displacement(displacements, height, width, self.grid_size)

    def get_config(self):
        config = super().get_config()
        config.update({"grid_size": self.grid_size, "max_displacement": self.max_displacement})
        return config


@keras.saving.register_keras_serializable(package="deformstab_tf")
class RandomAffine(BaseRandomDeformation):
    """Random affine warps about the image centre: rotation, scale, shear and translation.

    Each parameter is drawn per image (or once with ``same_on_batch=True``); the map is
    ``translate . rotate . shear . scale``. Unlike Keras's ``RandomRotation`` and friends the
    layer keeps XLA on (``supports_jit``). Active when ``training=True``, identity in inference.

    Where it runs: in `tf.data` pipelines (on TensorFlow ops, whatever the Keras backend) and
    inside models on the active backend (TensorFlow or JAX; also under XLA / `jax.jit`).

    Args:
        rotation: degrees; ``r`` draws from ``[-r, r]``, a pair ``(low, high)`` from that range.
            Positive is counter-clockwise.
        scale: zoom factor; ``s`` draws from ``[1 - s, 1 + s]``, a pair from that range
            (factors must stay > 0).
        shear: shear factor (``x += s_x y``, ``y += s_y x``); ``s`` draws each axis from
            ``[-s, s]`` independently, or a pair ``(low, high)``.
        translation: fraction of the image size; ``t`` draws from ``[-t, t]`` (times H for y, W
            for x), or a pair.
        anisotropic_scale: draw the y and x zoom independently instead of one factor.
        interpolation, fill_mode, fill_value, same_on_batch, seed, data_format,
            bounding_box_format: as in
            `RandomThinPlateSpline`; the default fill mode is ``"reflect"``, as in Keras.

    Input shape:
        ``(B, H, W, C)`` or ``(H, W, C)`` (``(B, C, H, W)`` / ``(C, H, W)`` with
        ``channels_first``), any numeric dtype, a static ``H`` and ``W``; or a dict with
        ``"images"`` and optionally ``"segmentation_masks"`` (warped alike, nearest-sampled),
        ``"bounding_boxes"`` (Keras's ``{"boxes": (B, N, 4), "labels": (B, N)}`` in
        `bounding_box_format`, moved with the images), ``"keypoints"`` (``(B, K, 2)``, ``(x, y)``
        pixels, moved with the images) and ``"labels"`` (passed through).

    Output shape:
        The input shape (a dict stays a dict); float images in the layer's compute dtype,
        integer images (``uint8``) in their own, rounded and clipped to its range.

    Example:

    >>> layer = RandomAffine(rotation=10, scale=0.1, translation=0.05, seed=0)
    >>> tuple(layer(np.zeros((4, 32, 32, 3), "float32")).shape)
    (4, 32, 32, 3)
    """

    default_fill_mode = "reflect"

    def __init__(
        self,
        rotation=0.0,
        scale=0.0,
        shear=0.0,
        translation=0.0,
        anisotropic_scale=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.rotation = _value_range("rotation", rotation)
        if isinstance(scale, (tuple, list)):
            self.scale = _value_range("scale", scale)
        else:
            s = _magnitude("scale", scale)
            self.scale = (1.0 - s, 1.0 + s)
        if self.scale[0] <= 0:
            raise ValueError(f"`scale` must keep zoom factors > 0. Received: scale={scale!r}")
        self.shear = _value_range("shear", shear)
        self.translation = _value_range("translation", translation)
        self.anisotropic_scale = bool(anisotropic_scale)

    def random_matrices(self, batch_size, height, width, seed):
        """Forward ``(batch_size, 2, 3)`` matrices of this draw (`affine_matrices`)."""

        def draw(value_range, stream):
            low, high = value_range
            return self._uniform((batch_size,), low, high, seed, stream)

        rotation = draw(self.rotation, 0)
        scale_y = draw(self.scale, 1)
        scale_x = draw(self.scale, 2) if self.anisotropic_scale else scale_y
        shear = (draw(self.shear, 3), draw(self.shear, 4))
        translation = (draw(self.translation, 5) * height, draw(self.translation, 6) * width)
        return affine_matrices(rotation, (scale_y, scale_x), shear, translation)

    def random_displacement(self, batch_size, height, width, seed):
        matrices = self.random_matrices(batch_size, height, width, seed)
        return affine_displacement(matrices, height, width)

    def random_transformation(self, batch_size, height, width, seed):
        matrices = self.random_matrices(batch_size, height, width, seed)
        return Transformation(matrices=matrices, image_size=(height, width))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "rotation": self.rotation,
                "scale": self.scale,
                "shear": self.shear,
                "translation": self.translation,
                "anisotropic_scale": self.anisotropic_scale,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="deformstab_tf")
class RandomDiffeomorphism(BaseRandomDeformation):
    """Random max-entropy diffeomorphisms (Petrini et al. 2021).

    Smooth random fields from a sine series with high-frequency cut-off `cutoff`; the border
    does not move. The strength is set either by the `temperature` ``T`` or, more readably, by
    the typical central `displacement` ``delta`` in pixels (``T = 4 delta^2 / (pi n^2 ln c)``
    per axis, which makes ``delta`` independent of the image size; Petrini et al.'s probes use
    ``delta = 1``, ``c = 3``). Fields are drawn per image (the authors' code shares one field
    across the batch: ``same_on_batch=True``). Active when ``training=True``, identity in
    inference.

    Where it runs: in `tf.data` pipelines (on TensorFlow ops, whatever the Keras backend) and
    inside models on the active backend (TensorFlow or JAX; also under XLA / `jax.jit`).

    Args:
        cutoff: integer ``c >= 2``; modes with ``sqrt(i^2 + j^2) < c + 0.5`` are kept.
        temperature: ``T`` or a range ``(low, high)`` drawn uniformly per image.
        displacement: ``delta`` in pixels or a range ``(low, high)``; the default is 1.0 when
            neither this nor `temperature` is given.
        interpolation, fill_mode, fill_value, same_on_batch, seed, data_format,
            bounding_box_format: as in
            `RandomThinPlateSpline`; the default fill mode clamps to the edge, as the authors'.

    Input shape:
        ``(B, H, W, C)`` or ``(H, W, C)`` (``(B, C, H, W)`` / ``(C, H, W)`` with
        ``channels_first``), any numeric dtype, a static ``H`` and ``W``; or a dict with
        ``"images"`` and optionally ``"segmentation_masks"`` (warped alike, nearest-sampled),
        ``"bounding_boxes"`` (Keras's ``{"boxes": (B, N, 4), "labels": (B, N)}`` in
        `bounding_box_format`, moved with the images), ``"keypoints"`` (``(B, K, 2)``, ``(x, y)``
        pixels, moved with the images) and ``"labels"`` (passed through).

    Output shape:
        The input shape (a dict stays a dict); float images in the layer's compute dtype,
        integer images (``uint8``) in their own, rounded and clipped to its range.

    Example:

    >>> layer = RandomDiffeomorphism(cutoff=3, displacement=1.0, seed=0)
    >>> tuple(layer(np.zeros((4, 32, 32, 3), "float32")).shape)
    (4, 32, 32, 3)
    """

    def __init__(self, cutoff=3, temperature=None, displacement=None, **kwargs):
        super().__init__(**kwargs)
        _check_cutoff(cutoff)
        if temperature is not None and displacement is not None:
            raise ValueError(
                "Give `temperature` or `displacement`, not both. Received: "
                f"temperature={temperature!r}, displacement={displacement!r}"
            )
        self.cutoff = int(cutoff)
        self.temperature = (
            None
            if temperature is None
            else _value_range("temperature", temperature, symmetric=False, minimum=0.0)
        )
        if temperature is None and displacement is None:
            displacement = 1.0
        self.displacement = (
            None
            if displacement is None
            else _value_range("displacement", displacement, symmetric=False, minimum=0.0)
        )

    def random_displacement(self, batch_size, height, width, seed):
        c = self.cutoff
        coefficients = self._normal((batch_size, 2, c, c), seed, stream=0)
        low, high = self.temperature or self.displacement
        strength = self._uniform((batch_size,), low, high, seed, stream=1)
        if self.temperature is not None:
            return diffeo_displacement(coefficients, height, width, temperature=strength)
        return diffeo_displacement(coefficients, height, width, displacement=strength)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "cutoff": self.cutoff,
                "temperature": self.temperature,
                "displacement": self.displacement,
            }
        )
        return config


# Short names of the deformation layers (flags, augmentation specs, reports) and the argument
# that sets each one's strength.
DEFORMATION_LAYERS = {
    "tps": (RandomThinPlateSpline, "max_displacement"),
    "affine": (RandomAffine, "rotation"),
    "diffeo": (RandomDiffeomorphism, "displacement"),
}


def deformation_layer(name, magnitude=None, seed=None, **kwargs):
    """A deformation layer from its short name, e.g. for a command-line flag.

    Args:
        name: `"tps"` (`RandomThinPlateSpline`), `"affine"` (`RandomAffine`) or `"diffeo"`
            (`RandomDiffeomorphism`).
        magnitude: the layer's strength argument, when given: `max_displacement` (pixels) for
            `"tps"`, `rotation` (degrees) for `"affine"`, `displacement` (typical central
            displacement in pixels) for `"diffeo"`.
        seed: the layer's seed.
        **kwargs: any other argument of the layer (`grid_size=3`, `cutoff=3`, `scale=0.1`, ...).

    Returns:
        The layer.

    Raises:
        ValueError: on an unknown `name`; the layer's own errors for bad arguments.

    Example:

    >>> tps = deformation_layer("tps", 2.0, seed=0, grid_size=3)  # Ruderman et al.'s CIFAR-10
    >>> type(tps).__name__, tps.max_displacement, tps.grid_size
    ('RandomThinPlateSpline', 2.0, 3)
    >>> diffeo = deformation_layer("diffeo", 1.0, seed=0, cutoff=3)   # Petrini et al.'s probe
    >>> type(diffeo).__name__, diffeo.displacement, diffeo.cutoff
    ('RandomDiffeomorphism', (1.0, 1.0), 3)
    """
    check_choice("name", name, tuple(DEFORMATION_LAYERS))
    layer_class, magnitude_argument = DEFORMATION_LAYERS[name]
    if magnitude is not None:
        if magnitude_argument in kwargs:
            raise ValueError(
                f"Give the {name!r} strength once: received magnitude={magnitude!r} and "
                f"{magnitude_argument}={kwargs[magnitude_argument]!r}."
            )
        kwargs[magnitude_argument] = magnitude
    return layer_class(seed=seed, **kwargs)
