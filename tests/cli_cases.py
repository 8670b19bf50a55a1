"""Runs a trainer's console entry point in one process for many argument lists, so a test of
many bad flags pays TensorFlow's import once (the trainers' flags clash, so one trainer per
process).

    python -m tests.cli_cases trainers.train < cases.json

`cases.json` is a list of argument lists; the last stdout line is `RESULTS <json>`: per case,
the exit code (0 for a normal return) and what the trainer wrote to stderr.
"""

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
from unittest import mock

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cases(module_name, cases, timeout=600):
    """`[(exit code, stderr lines)]` of `module_name`'s `run()` for each argument list."""
    process = subprocess.run(
        [sys.executable, "-m", "tests.cli_cases", module_name],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULTS ")]
    assert process.returncode == 0 and lines, process.stderr[-3000:]
    return [(code, err.strip().splitlines()) for code, err in json.loads(lines[-1][8:])]


def main():
    module_name = sys.argv[1]
    module = importlib.import_module(module_name)
    results = []
    for argv in json.load(sys.stdin):
        flags.FLAGS.unparse_flags()
        stderr = io.StringIO()
        code = 0
        with (
            mock.patch.object(sys, "argv", [module_name, *argv]),
            contextlib.redirect_stderr(stderr),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            try:
                module.run()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        results.append((code, stderr.getvalue()))
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
