# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Venvs beside the main one, made with uv under build/venvs/: one per transformers version (tests/compat/venvs.py),
vLLM's (serving/venv.py) and lmms-eval's (evaluation/venv.py).

`ensure_venv(venv, packages, stamp=...)` makes the venv with `uv venv -p python<this venv's Python>` (again, with
`--clear`, when its Python differs), then runs one `uv pip install --exact` of the torch CPU wheel from /opt/wheels
and `packages` (plus this repository in editable mode with `editable=True`), and `uv pip uninstall` of `remove`. A
stamp file in the venv holds what was installed: while it matches, the venv is used as it is; when the packages, the
Python (or, for an editable install, pyproject.toml) change, the venv is brought back in line, in place.

uv is the main venv's (the dev extra); it must never resolve torch from PyPI (a multi-GB CUDA build): torch is the
wheel file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
VENVS = REPO / "build" / "venvs"
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # the venvs' Python is this venv's
TORCH_WHEELS = Path("/opt/wheels")
TORCH_WHEEL = f"torch-2.13.0*-cp{sys.version_info.major}{sys.version_info.minor}-*.whl"


class VenvError(Exception):
    """A venv could not be made; the message says why."""


def uv() -> str:
    """The main venv's uv."""
    found = Path(sys.executable).parent / "uv"
    if not found.exists():
        raise VenvError(
            f"{found} is missing: it comes with the dev extra (`make test` installs it; or pip install uv)."
        )
    return str(found)


def torch_wheel() -> Path:
    """The torch CPU wheel of /opt/wheels for this Python (the newest of several)."""
    wheels = sorted(TORCH_WHEELS.glob(TORCH_WHEEL))
    if not wheels:
        raise VenvError(
            f"No torch CPU wheel {TORCH_WHEELS / TORCH_WHEEL}: the venvs under build/venvs install torch from that "
            "file only (uv would otherwise resolve a multi-GB CUDA build from PyPI). Put the wheel there."
        )
    return wheels[-1]


def run_uv(args, venv: Path, timeout: int) -> None:
    """One uv command for `venv` (run in the repository); raises VenvError with its stderr when it fails."""
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise VenvError(f"`{' '.join(map(str, args[1:3]))} ...` took more than {timeout} s") from None
    if result.returncode:
        raise VenvError(f"`{' '.join(map(str, args))}` failed ({result.returncode}):\n{result.stderr[-3000:]}")


def venv_python_version(venv: Path) -> str | None:
    """The Python version (e.g. "3.11") of a venv, from its pyvenv.cfg; None without one."""
    cfg = venv / "pyvenv.cfg"
    if not (venv / "bin" / "python").exists() or not cfg.is_file():
        return None
    found = re.search(r"^version(?:_info)?\s*=\s*(\d+\.\d+)", cfg.read_text(), re.MULTILINE)
    return found and found.group(1)


def ensure_venv(
    venv: Path,
    packages,
    *,
    stamp: str,
    editable: bool = False,
    remove=(),
    stamp_fields: dict | None = None,
    timeout: int = 600,
    before_install: Callable[[Path], None] | None = None,
    after_install: Callable[[Path], None] | None = None,
) -> tuple[Path, float | None]:
    """The python of `venv`, and the seconds it took to make (None when its stamp was current).

    `packages`: requirements after the torch wheel; `stamp`: the stamp file's name; `editable`: also this repository
    in editable mode (its pyproject.toml is in the stamp); `remove`: packages uninstalled afterwards;
    `stamp_fields`: more facts the stamp holds (a change remakes the venv); `before_install` / `after_install`: steps
    of the caller's own, given the venv, around the install; `timeout`: seconds per uv command."""
    wheel = torch_wheel()
    requirements = [str(wheel), *packages]
    fields = {"python": PYTHON, "requirements": [wheel.name, *packages]}
    if remove:
        fields["remove"] = list(remove)
    fields.update(stamp_fields or {})
    if editable:  # the editable install's metadata (its entry points) comes from pyproject.toml
        fields["pyproject"] = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp_text = json.dumps(fields) + "\n"
    stamp_file = venv / stamp
    python = venv / "bin" / "python"
    if stamp_file.is_file() and stamp_file.read_text() == stamp_text and venv_python_version(venv) == PYTHON:
        return python, None
    start = time.perf_counter()
    command = uv()
    if venv_python_version(venv) != PYTHON:
        if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").is_file():
            raise VenvError(f"{venv} exists and is not a venv: move it away (this would replace it with one).")
        run_uv([command, "venv", "--quiet", "--clear", "-p", f"python{PYTHON}", str(venv)], venv, timeout)
    stamp_file.unlink(missing_ok=True)
    if before_install is not None:
        before_install(venv)
    # --exact: the venv holds these packages and their dependencies, nothing else (an existing venv is updated in
    # place, so a process using it keeps working)
    run_uv(
        [command, "pip", "install", "--quiet", "--exact", *requirements, *(["-e", str(REPO)] * editable)],
        venv,
        timeout,
    )
    if remove:
        run_uv([command, "pip", "uninstall", "--quiet", *remove], venv, timeout)
    if after_install is not None:
        after_install(venv)
    stamp_file.write_text(stamp_text)
    return python, round(time.perf_counter() - start, 1)


def report(label: str, ensure: Callable[[], tuple[Path, float | None]]) -> int:
    """Run `ensure` and print one line, `label: the venv's python (made in N s)`, or the error on stderr; the exit
    status (0 or 1) of a command."""
    try:
        python, seconds = ensure()
    except VenvError as error:
        print(f"{label}: {error}", file=sys.stderr)
        return 1
    print(f"{label}: {python}" + ("" if seconds is None else f" (made in {seconds} s)"))
    return 0
