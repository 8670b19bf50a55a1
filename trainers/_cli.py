"""What the trainers share: running `main` under absl with one-line errors.

absl prints a traceback for any exception. A bad setting (`ValueError` / `TypeError` from the
package, which names the argument and the value) or a missing or unreadable file (`OSError`) is
the user's to fix, so it ends the process with one line on stderr and exit code 1; usage errors
(`app.UsageError`) keep absl's own handling (the message and a pointer to `--help`, exit code 1).
Set `DEFORMSTAB_TRACEBACK=1` to see the full traceback instead.
"""

import os
import sys

from absl import app


def run_main(main):
    """`absl.app.run(main)`, turning user errors into one-line messages and exit code 1."""

    def guarded(argv):
        try:
            return main(argv)
        except app.UsageError:
            raise
        except (ValueError, TypeError, OSError) as error:
            if os.environ.get("DEFORMSTAB_TRACEBACK"):
                raise
            message = " ".join(str(error).split())  # one line
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)

    main_module = sys.modules.get("__main__")
    trainer = sys.modules[main.__module__]
    if main_module is not trainer:
        # A console script (`deformstab-train`): absl's --help describes the main module and
        # lists the flags registered under `sys.argv[0]`; point both at the trainer module.
        sys.argv[0] = main.__module__
        main_module.__doc__ = trainer.__doc__
    app.run(guarded)
