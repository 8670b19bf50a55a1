"""What the trainers share: running `main` under absl with one-line errors.

absl prints a traceback for any exception, and the whole usage text for a bad flag value or an
`app.UsageError`. A bad setting (`ValueError` / `TypeError` from the package, which names the
argument and the value), a missing or unreadable file (`OSError`), a flag absl cannot parse or a
usage error is the user's to fix, so it ends the process with ONE line on stderr (`error: ...`)
and exit code 1. `--help` keeps absl's full text. Set `DEFORMSTAB_TRACEBACK=1` to see the
traceback of a package error instead.
"""

import os
import re
import sys

from absl import app, flags


def run_main(main):
    """`absl.app.run(main)`, turning user errors into one-line messages and exit code 1."""

    def guarded(argv):
        try:
            return main(argv)
        except app.UsageError as error:
            _exit_with_one_line(f"{error} (see --help)", error.exitcode)
        except (ValueError, TypeError, OSError) as error:
            if os.environ.get("DEFORMSTAB_TRACEBACK"):
                raise
            _exit_with_one_line(error)

    main_module = sys.modules.get("__main__")
    trainer = sys.modules[main.__module__]
    if main_module is not trainer:
        # A console script (`deformstab-train`): absl's --help describes the main module and
        # lists the flags registered under `sys.argv[0]`; point both at the trainer module.
        sys.argv[0] = main.__module__
        main_module.__doc__ = trainer.__doc__
    app.run(guarded, flags_parser=_parse_flags)


def _parse_flags(argv):
    """absl's flag parsing, with a value it rejects as one line (its default prints the usage)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _exit_with_one_line(f"{error} (see --help)")


_ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")
# Keras's call wrapper around a layer's error: the layer, the message, then the arguments.
_KERAS_CALL = re.compile(
    r"\s*Exception encountered when calling (?P<layer>\S+?)\.call\(\)\.\s*(?P<message>.*?)"
    r"\s*Arguments received by .*",
    re.DOTALL,
)


def one_line(message):
    """`message` as one plain line: no terminal colour codes, Keras's call wrapper reduced to
    the layer and its message.

    Example:

    >>> one_line("Exception encountered when calling Foo.call(). bad Arguments received by ...")
    'Foo: bad'
    """
    text = _ANSI_CODES.sub("", str(message))
    match = _KERAS_CALL.fullmatch(text)
    if match:
        text = f"{match['layer']}: {match['message']}"
    return " ".join(text.split())


def _exit_with_one_line(message, code=1):
    print("error: " + one_line(message), file=sys.stderr)
    sys.exit(code)
