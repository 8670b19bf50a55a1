"""Argument checks shared by the whole package: each error names the argument and the value."""

import keras
import numpy as np

DATA_FORMATS = ("channels_last", "channels_first")


def check_choice(argument, value, choices):
    """Raises a ValueError naming `argument`, the received `value` and the valid `choices`."""
    if value not in choices:
        raise ValueError(
            f"Invalid `{argument}`: received {argument}={value!r}. "
            f"Valid choices: {', '.join(repr(c) for c in choices)}."
        )


def check_positive_int(argument, value):
    """Raises a ValueError naming `argument` unless `value` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{argument}` must be a positive integer; received {argument}={value!r}.")


def check_bool(argument, value):
    """Raises a TypeError naming `argument` unless `value` is a bool (or a NumPy bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{argument}` must be True or False; received {argument}={value!r}.")


def standardize_data_format(data_format):
    """`data_format`, or Keras's configured default when None; anything else is an error."""
    if data_format is None:
        return keras.config.image_data_format()
    check_choice("data_format", data_format, DATA_FORMATS)
    return data_format


def check_non_negative(argument, value):
    """Raises a ValueError naming `argument` unless `value` is a finite real number >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not 0 <= value < np.inf  # also rejects NaN
    ):
        raise ValueError(
            f"`{argument}` must be a finite number >= 0; received {argument}={value!r}."
        )
