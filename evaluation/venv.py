# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""The lmms-eval venv: build/venvs/lmms-eval, made with uv.

    python -m modeling_unimoe.evaluation.venv     # makes (or brings up to date) the venv; prints its python

lmms-eval 0.7.3 cannot share the main venv: it requires `torchvision` (PyPI's wheels do not match the local CPU torch
2.13 and break transformers' image and video processors: "operator torchvision::nms does not exist") and `av<16`
(the main venv has PyAV 18), and it pins `wandb==0.25.0` and `ruff>=0.16.4`. So it gets a venv of its own
(`hub_export.venvs.ensure_venv`): the torch CPU wheel, `lmms-eval==0.7.3`, transformers 5.23 (the version the
exported remote code is checked against), the media packages of the processor, bitsandbytes, and this repository in
editable mode (so the venv sees the `lmms_eval.models` entry point of pyproject.toml, which registers the `uni_moe`
model, and the `modeling_unimoe` packages). Then torchvision, torchaudio and torchcodec are uninstalled: lmms-eval
imports none of them for its core, its CLI or the `uni_moe` model, and their registry wheels do not load beside this
torch. Where torch comes from a CUDA build with a matching torchvision (a GPU machine), a plain `pip install
lmms-eval==0.7.3` next to this package works as well.
"""

import sys
from pathlib import Path

from hub_export import venvs
from hub_export.venvs import VenvError


VENV = venvs.VENVS / "lmms-eval"
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


__all__ = ["VENV", "VenvError", "ensure_venv", "python_path"]


def python_path() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> tuple[Path, float | None]:
    """The python of build/venvs/lmms-eval, and the seconds it took to make (None if its stamp was current)."""
    return venvs.ensure_venv(
        VENV, [LMMS_EVAL, *PACKAGES], stamp=STAMP, editable=True, remove=REMOVE, timeout=UV_TIMEOUT
    )


def main() -> int:
    return venvs.report("lmms-eval venv", ensure_venv)


if __name__ == "__main__":
    sys.exit(main())
