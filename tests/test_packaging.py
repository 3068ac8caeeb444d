"""The wheel: it holds every module of ppl_vae and the model zoo, which an installed
ppl_vae finds through importlib.resources."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ppl_vae import config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from a copy of the sources (a build/ left in the tree by an earlier
    build cannot leak into it), without network: setuptools of this environment."""
    # Looked up, not imported (setuptools patches distutils); setuptools before 70.1 builds
    # wheels only with the wheel package.
    installed = {}
    for needed in ("pip", "setuptools", "wheel"):
        try:
            installed[needed] = importlib.metadata.version(needed)
        except importlib.metadata.PackageNotFoundError:
            pass
    setuptools = tuple(int(part) for part in installed.get("setuptools", "0.0").split(".")[:2])
    if "pip" not in installed or setuptools < (70, 1) and "wheel" not in installed:
        pytest.skip("building the wheel needs pip and setuptools >= 70.1 (or the wheel package)")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("ppl_vae", "models"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp / "dist")],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    (path,) = (tmp / "dist").glob("ppl_vae-*.whl")
    return path


def test_the_wheel_holds_the_model_zoo_and_every_module(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        zoo = sorted((ROOT / "models").glob("*.toml"))
        assert zoo
        assert [p.name for p in zoo if f"ppl_vae/models/{p.name}" not in names] == []
        assert whl.read("ppl_vae/models/vae.toml") == (ROOT / "models" / "vae.toml").read_bytes()
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ppl_vae").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sorted(modules - names) == []


@pytest.mark.slow
def test_an_installed_ppl_vae_finds_its_zoo(wheel, tmp_path):
    """Installed from the wheel (not editable) and run from an unrelated folder, the zoo is
    the wheel's ppl_vae/models, not a models/ beside it."""
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                                "--no-index", "--target", str(target), str(wheel)],
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    code = ("from ppl_vae.config import MODELS_DIR, find_model_file, load_config; "
            "print(MODELS_DIR); print(find_model_file('vae')); print(load_config('iwae')['name'])")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert run.returncode == 0, run.stderr
    zoo = target / "ppl_vae" / "models"
    assert run.stdout.split("\n")[:3] == [str(zoo), str(zoo / "vae.toml"), "iwae"]


def test_a_source_checkout_reads_models_at_the_top(monkeypatch, tmp_path):
    assert config.MODELS_DIR == ROOT / "models"
    (tmp_path / "models").mkdir()
    monkeypatch.setattr(config.resources, "files", lambda package: tmp_path)
    assert config._models_dir() == tmp_path / "models"
