"""Plain numpy reference implementations shared by the tests."""

import numpy as np


def numpy_padded_shift(image, dy, dx, fill_mode):
    """Shift one (H, W, C) image by padding with numpy's own modes and cropping."""
    pad = max(abs(dy), abs(dx), 1) * 3
    mode = {"wrap": "wrap", "constant": "constant", "nearest": "edge", "reflect": "symmetric"}
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode=mode[fill_mode])
    h, w = image.shape[:2]
    return padded[pad - dy : pad - dy + h, pad - dx : pad - dx + w]


# A tiny synthetic training run (16x16 images, 3 classes, a two-block VGG) for trainer tests.
TINY_RUN = {
    "synthetic_classes": 3,
    "synthetic_samples": 96,
    "synthetic_image_size": 16,
    "model": "vgg",
    "blocks": [[4], [8]],
    "epochs": 2,
    "batch_size": 32,
    "probe_size": 8,
    "learning_rate": 0.05,
}
