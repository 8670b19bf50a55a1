"""Plain numpy reference implementations shared by the tests."""

import numpy as np


def numpy_padded_shift(image, dy, dx, fill_mode):
    """Shift one (H, W, C) image by padding with numpy's own modes and cropping."""
    pad = max(abs(dy), abs(dx), 1) * 3
    mode = {"wrap": "wrap", "constant": "constant", "nearest": "edge", "reflect": "symmetric"}
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode=mode[fill_mode])
    h, w = image.shape[:2]
    return padded[pad - dy : pad - dy + h, pad - dx : pad - dx + w]
