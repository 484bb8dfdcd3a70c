# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""The lmms-eval venv: build/venvs/lmms-eval, made with uv.

    python -m modeling_unimoe.evaluation.venv     # makes (or brings up to date) the venv; prints its python

lmms-eval 0.7.3 cannot share the main venv: it requires `torchvision` (PyPI's wheels do not match the local CPU torch
2.13 and break transformers' image and video processors: "operator torchvision::nms does not exist") and `av<16`
(the main venv has PyAV 18), and it pins `wandb==0.25.0` and `ruff>=0.16.4`. So it gets a venv of its own:
`uv venv -p python<this Python>`, then one `uv pip install --exact` of the torch CPU wheel from /opt/wheels,
`lmms-eval==0.7.3`, transformers 5.23 (the version the exported remote code is checked against), the media packages
of the processor, bitsandbytes, and this repository in editable mode (so the venv sees the `lmms_eval.models` entry
point of pyproject.toml, which registers the `uni_moe` model, and the `modeling_unimoe` packages). Then torchvision,
torchaudio and torchcodec are uninstalled: lmms-eval imports none of them for its core, its CLI or the `uni_moe`
model, and their registry wheels do not load beside this torch. Where torch comes from a CUDA build with a matching
torchvision (a GPU machine), a plain `pip install lmms-eval==0.7.3` next to this package works as well.

A stamp file holds what was installed; while it matches, the venv is used as it is.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
VENV = REPO / "build" / "venvs" / "lmms-eval"
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
TORCH_WHEELS = Path("/opt/wheels")
TORCH_WHEEL = f"torch-2.13.0*-cp{sys.version_info.major}{sys.version_info.minor}-*.whl"
LMMS_EVAL = "lmms-eval==0.7.3"
PACKAGES = (
    "transformers==5.23.0",
    "pillow",
    "numpy",
    "safetensors",
    "soundfile",
    "soxr",
    "av",  # lmms-eval caps it below 16
    "sentencepiece",
    "protobuf",
    "bitsandbytes>=0.48",  # load_in_4bit / load_in_8bit
    "accelerate",
    "filelock<4",  # lmms-eval 0.7.3 patches filelock._api, which filelock 4 no longer has
)
REMOVE = ("torchvision", "torchaudio", "torchcodec")
STAMP = ".unimoe-lmms-eval-stamp"
UV_TIMEOUT = 1800  # seconds per uv command: a cold uv cache downloads lmms-eval's dependencies (about 2 GB installed)


class VenvError(Exception):
    """The venv could not be made; the message says why."""


def python_path() -> Path:
    return VENV / "bin" / "python"


def _uv() -> str:
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        raise VenvError(f"{uv} is missing: it comes with the dev extra (`make test` installs it; or pip install uv).")
    return str(uv)


def _torch_wheel() -> Path:
    wheels = sorted(TORCH_WHEELS.glob(TORCH_WHEEL))
    if not wheels:
        raise VenvError(
            f"No torch CPU wheel {TORCH_WHEELS / TORCH_WHEEL}: the lmms-eval venv installs torch from that file only "
            "(uv would otherwise resolve a multi-GB CUDA build from PyPI)."
        )
    return wheels[-1]


def _run(args, env) -> None:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=UV_TIMEOUT, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise VenvError(f"`{' '.join(map(str, args[1:3]))} ...` took more than {UV_TIMEOUT} s") from None
    if result.returncode:
        raise VenvError(f"`{' '.join(map(str, args))}` failed ({result.returncode}):\n{result.stderr[-3000:]}")


def ensure_venv() -> tuple[Path, float | None]:
    """The python of build/venvs/lmms-eval, and the seconds it took to make (None if its stamp was current)."""
    wheel = _torch_wheel()
    requirements = [str(wheel), LMMS_EVAL, *PACKAGES]
    # the editable install's metadata (the entry point) comes from pyproject.toml: a change there reinstalls
    project = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp_text = json.dumps(
        {"python": PYTHON, "requirements": [wheel.name, *requirements[1:]], "remove": REMOVE, "pyproject": project}
    )
    stamp = VENV / STAMP
    if stamp.is_file() and stamp.read_text() == stamp_text + "\n" and python_path().exists():
        return python_path(), None
    start = time.perf_counter()
    uv = _uv()
    env = {**os.environ, "VIRTUAL_ENV": str(VENV)}
    if not (VENV / "pyvenv.cfg").is_file():
        if VENV.exists() and any(VENV.iterdir()):
            raise VenvError(f"{VENV} exists and is not a venv: move it away (this would replace it with one).")
        _run([uv, "venv", "--quiet", "-p", f"python{PYTHON}", str(VENV)], env)
    stamp.unlink(missing_ok=True)
    # --exact: the venv holds these packages and their dependencies, nothing else
    _run([uv, "pip", "install", "--quiet", "--exact", *requirements, "-e", str(REPO)], env)
    _run([uv, "pip", "uninstall", "--quiet", *REMOVE], env)
    stamp.write_text(stamp_text + "\n")
    return python_path(), round(time.perf_counter() - start, 1)


def main() -> int:
    try:
        python, seconds = ensure_venv()
    except VenvError as error:
        print(f"lmms-eval venv: {error}", file=sys.stderr)
        return 1
    print(f"lmms-eval venv: {python}" + ("" if seconds is None else f" (made in {seconds} s)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
