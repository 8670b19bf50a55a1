"""The machine a benchmark ran on, recorded in every benchmark's JSON."""

import os
import platform


def machine_info():
    """Platform, CPU count and the TensorFlow / Keras versions, as a JSON-ready dict."""
    import keras
    import tensorflow as tf

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
