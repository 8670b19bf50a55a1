"""The wheel: one top-level package, the trainers inside it, console scripts that resolve.

The wheel is built from a copy of the repository's sources with the installed setuptools (the
build requirement, in the `test` extra), installed into a scratch directory, and its console
scripts' entry points are run from another directory, where the repository is not importable.
"""

import configparser
import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"deformstab-train", "deformstab-measure", "deformstab-compare"}


def _setuptools_version():
    try:
        return tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 0)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if _setuptools_version() < (77, 0):
        pytest.skip("building the wheel needs setuptools>=77 (pip install -e '.[test]')")
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("deformstab_tf", "trainers"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (path,) = out.glob("deformstab_tf-*.whl")
    return path


def test_the_wheel_adds_only_deformstab_tf_with_the_trainers_inside(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        top_level = archive.read(f"{dist_info}/top_level.txt").decode().split()
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(f"{dist_info}/entry_points.txt").decode())
    assert {name.split("/")[0] for name in names} == {"deformstab_tf", dist_info}
    assert top_level == ["deformstab_tf"]
    for module in ("__init__", "_cli", "train", "measure", "compare"):
        assert f"deformstab_tf/trainers/{module}.py" in names
    assert "deformstab_tf/trainers/presets/cifar10_cpu.cfg" in names
    # Every package of the source tree is in the wheel (pyproject lists them by hand).
    packages = {
        str(p.parent.relative_to(ROOT)) for p in (ROOT / "deformstab_tf").rglob("__init__.py")
    }
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    scripts = dict(entry_points["console_scripts"])
    assert set(scripts) == SCRIPTS
    for name, target in scripts.items():
        assert target == f"deformstab_tf.trainers.{name.split('-')[1]}:run"


def test_the_installed_console_scripts_run_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(site), str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert not (site / "trainers").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # What a console script does: import the entry point and call it with the script's argv.
    code = (
        "import sys, importlib.metadata as md\n"
        f"(dist,) = md.distributions(path=[{str(site)!r}])\n"
        "ep = next(e for e in dist.entry_points if e.name == 'deformstab-train')\n"
        "run = ep.load()\n"
        "import deformstab_tf\n"
        "print('package:', deformstab_tf.__file__, flush=True)\n"
        "sys.argv = ['deformstab-train', '--help']\n"
        "run()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 1  # absl's exit code after --help
    assert f"package: {site / 'deformstab_tf' / '__init__.py'}" in result.stdout
    assert "deformstab_tf.trainers.train:" in result.stdout  # absl lists the trainer's flags
    assert "--dataset" in result.stdout and "--output_dir" in result.stdout


@pytest.mark.parametrize("trainer", ["train", "measure", "compare"])
def test_a_trainer_runs_as_a_script_by_its_path(trainer, tmp_path):
    # `python trainers/train.py` runs the file outside its package: a relative import fails.
    result = subprocess.run(
        [sys.executable, str(ROOT / "trainers" / f"{trainer}.py"), "--helpshort"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"{trainer}.py:" in result.stdout  # absl lists the script's own flags
