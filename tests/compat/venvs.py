"""One venv per transformers version of `MATRIX`, made with uv: build/venvs/tf-<version>.

    python -m tests.compat.venvs      # makes (or brings up to date) the venv of every version but this venv's

Each venv gets `uv venv -p python<this venv's Python>`, then `uv pip install --exact` of the torch CPU wheel from
/opt/wheels, transformers==<version> and `PACKAGES` (uv's cache makes it take seconds). A stamp file in the venv holds
what was installed: while it matches, the venv is used as it is; when the package list (or the Python) changes, the
venv is brought back in line. The version this venv (the main .venv) has gets no venv of its own.

uv is the main venv's (the dev extra); it must never resolve torch from PyPI (a multi-GB CUDA build): torch is the
wheel file.
"""

import json
import os
import re
import subprocess
import sys
import time
from importlib.metadata import version as installed_version
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
VENVS = REPO / "build" / "venvs"

MATRIX = ("4.57.6", "5.0.0", "5.19.0", "5.23.0", "5.25.0")
MAIN = installed_version("transformers")  # this venv's: the reference the others are compared with

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # the venvs' Python is this venv's
TORCH_WHEELS = Path("/opt/wheels")
TORCH_WHEEL = f"torch-2.13.0*-cp{sys.version_info.major}{sys.version_info.minor}-*.whl"
# accelerate: transformers' bitsandbytes quantizer refuses to load without it (4.57 to 5.25)
PACKAGES = tuple("pillow numpy safetensors soundfile soxr av sentencepiece protobuf bitsandbytes accelerate".split())
STAMP = ".unimoe-compat-stamp"
UV_TIMEOUT = 600  # seconds, per uv command (a cold uv cache downloads every package once)


class VenvError(Exception):
    """A venv could not be made; the message says why."""


def version_key(version: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _uv() -> str:
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        raise VenvError(f"{uv} is missing: it comes with the dev extra (`make test` installs it; or pip install uv).")
    return str(uv)


def torch_wheel() -> Path:
    wheels = sorted(TORCH_WHEELS.glob(TORCH_WHEEL))
    if not wheels:
        raise VenvError(
            f"No torch CPU wheel {TORCH_WHEELS / TORCH_WHEEL}: the version venvs install torch from that file only "
            "(uv would otherwise resolve a multi-GB CUDA build from PyPI)."
        )
    return wheels[-1]


def _uv_run(args, **kwargs) -> None:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=UV_TIMEOUT, **kwargs)
    except subprocess.TimeoutExpired:
        raise VenvError(f"`{' '.join(args[1:3])} ...` took more than {UV_TIMEOUT} s") from None
    if result.returncode:
        raise VenvError(f"`{' '.join(map(str, args))}` failed ({result.returncode}):\n{result.stderr[-3000:]}")


def _venv_python_version(venv: Path) -> str | None:
    """The Python version (e.g. "3.11") of a venv, from its pyvenv.cfg; None without one."""
    cfg = venv / "pyvenv.cfg"
    if not (venv / "bin" / "python").exists() or not cfg.is_file():
        return None
    found = re.search(r"^version(?:_info)?\s*=\s*(\d+\.\d+)", cfg.read_text(), re.MULTILINE)
    return found and found.group(1)


def ensure_venv(version: str) -> tuple[Path, float | None]:
    """The python of build/venvs/tf-<version>, and the seconds it took to make (None if its stamp was current)."""
    venv = VENVS / f"tf-{version}"
    wheel = torch_wheel()
    requirements = [str(wheel), f"transformers=={version}", *PACKAGES]
    stamp_text = json.dumps({"python": PYTHON, "requirements": [wheel.name, *requirements[1:]]}) + "\n"
    stamp = venv / STAMP
    if stamp.is_file() and stamp.read_text() == stamp_text and _venv_python_version(venv) == PYTHON:
        return venv / "bin" / "python", None
    start = time.perf_counter()
    uv = _uv()
    if _venv_python_version(venv) != PYTHON:
        if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").is_file():
            raise VenvError(f"{venv} exists and is not a venv: move it away (this would replace it with one).")
        _uv_run([uv, "venv", "--quiet", "--clear", "-p", f"python{PYTHON}", str(venv)])
    stamp.unlink(missing_ok=True)
    # --exact: the venv holds these packages and their dependencies, nothing else (an existing venv is updated in
    # place, so a process using it keeps working)
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    _uv_run([uv, "pip", "install", "--quiet", "--exact", *requirements], env=env)
    stamp.write_text(stamp_text)
    return venv / "bin" / "python", round(time.perf_counter() - start, 1)


def main() -> int:
    for version in MATRIX:
        if version == MAIN:
            print(f"transformers {version}: the main venv's")
            continue
        try:
            python, seconds = ensure_venv(version)
        except VenvError as error:
            print(f"transformers {version}: {error}", file=sys.stderr)
            return 1
        print(
            f"transformers {version}: {python.parent.parent}" + ("" if seconds is None else f" (made in {seconds} s)")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
