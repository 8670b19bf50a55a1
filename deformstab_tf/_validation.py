"""Argument checks shared by the whole package: each error names the argument and the value."""

import os
import tempfile

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


def check_non_negative_int(argument, value):
    """Raises a ValueError naming `argument` unless `value` is an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(
            f"`{argument}` must be a non-negative integer; received {argument}={value!r}."
        )


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


def check_range(argument, value, low, high):
    """Raises a ValueError naming `argument` unless `value` is a real number in `[low, high]`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not low <= value <= high  # also rejects NaN
    ):
        raise ValueError(
            f"`{argument}` must be a number in [{low:g}, {high:g}]; received {argument}={value!r}."
        )


def check_bool(argument, value):
    """Raises a TypeError naming `argument` unless `value` is a bool (a string such as
    `"no"` would otherwise count as true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{argument}` must be True or False; received {argument}={value!r}.")


def check_seed(argument, value, allow_none=False, limit=2**32):
    """Raises a ValueError naming `argument` unless `value` is an integer in `[0, limit)` (by
    default the seeds NumPy, TensorFlow and Keras all accept), or None when `allow_none`."""
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not 0 <= value < limit
    ):
        bound = {2**32: "2**32", 2**63: "2**63"}.get(limit, str(limit))
        raise ValueError(
            f"`{argument}` must be an integer in [0, {bound})"
            + (" or None" if allow_none else "")
            + f"; received {argument}={value!r}."
        )


def check_names(argument, value, allow_empty=True):
    """A tuple of strings from one string or a list/tuple of strings.

    One string is one name (never split into characters); anything else is a TypeError naming
    `argument`, and an empty selection a ValueError unless `allow_empty`.

    Example:

    >>> check_names("measures", "sensitivity")
    ('sensitivity',)
    """
    if isinstance(value, str):
        names = (value,)
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        names = tuple(value)
    else:
        raise TypeError(
            f"`{argument}` must be a string or a list of strings; received {argument}={value!r}."
        )
    if not names and not allow_empty:
        raise ValueError(
            f"`{argument}` must name at least one item; received {argument}={value!r}."
        )
    return names


def check_callable(argument, value, hint=""):
    """Raises a TypeError naming `argument` unless `value` is callable; `hint` says what to
    pass instead."""
    if not callable(value):
        raise TypeError(
            f"`{argument}` must be callable; received {argument}={value!r}."
            + (f" {hint}" if hint else "")
        )


def check_model(argument, value):
    """Raises a TypeError naming `argument` unless `value` is a `keras.Model`."""
    if not isinstance(value, keras.Model):
        raise TypeError(
            f"`{argument}` must be a keras.Model; received {argument}={value!r}"
            + (
                " (load a saved model with keras.models.load_model)."
                if isinstance(value, str)
                else "."
            )
        )


def check_output_directory(argument, path):
    """Raises a ValueError naming `argument` unless `path` is, or can be created as, a writable
    directory. Checked by creating (and removing) an empty directory in its nearest existing
    ancestor, so nothing is left behind; call it before any slow work.

    Returns:
        The absolute path.
    """
    try:
        path = os.path.abspath(os.fspath(path))
    except TypeError:
        raise TypeError(
            f"`{argument}` must be a path (str or os.PathLike); received {argument}={path!r}."
        ) from None
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`{argument}` is an existing file, not a directory: {argument}={path!r}.")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(
            f"`{argument}` cannot be created: {existing!r} is a file. Received {argument}={path!r}."
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".deformstab_check_", dir=existing))
    except OSError as error:
        raise ValueError(
            f"`{argument}` is not writable ({error.strerror} in {existing!r}); received "
            f"{argument}={path!r}."
        ) from None
    return path
