"""The wheel builds without setuptools warnings and carries the package data (the speech assets of the synthetic
tasks, the chat template)."""

import shutil
import subprocess
import sys
import zipfile

from tests.helpers import REPO


SOURCES = (
    "pyproject.toml",
    "README.md",
    "modeling_unimoe",
    "processing",
    "training",
    "evaluation",
    "hub_export",
    "serving",
)
BUILD = "from setuptools import build_meta; print(build_meta.build_wheel('dist'))"


def test_the_wheel_builds_without_warnings_and_ships_the_assets(tmp_path):
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, tmp_path / name)
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", BUILD], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "Warning" not in output and "absent from the `packages`" not in output, output[-5000:]
    wheel = tmp_path / "dist" / result.stdout.strip().splitlines()[-1]
    names = set(zipfile.ZipFile(wheel).namelist())
    speech = sorted(p.name for p in (REPO / "training" / "assets" / "speech").iterdir())
    assert {f"modeling_unimoe/training/assets/speech/{name}" for name in speech} <= names
    assert "modeling_unimoe/processing/chat_template.jinja" in names
    assert {"hub_export/output.py", "modeling_unimoe/training/tiny.py"} <= names
