"""One venv per transformers version of `MATRIX`, made with uv: build/venvs/tf-<version>.

    python -m tests.compat.venvs      # makes (or brings up to date) the venv of every version but this venv's

Each venv gets the torch CPU wheel, transformers==<version> and `PACKAGES` (`hub_export.venvs.ensure_venv`; uv's
cache makes it take seconds). The version this venv (the main .venv) has gets no venv of its own.
"""

import re
import sys
from importlib.metadata import version as installed_version
from pathlib import Path

from hub_export import venvs
from hub_export.venvs import VenvError


MATRIX = ("4.57.6", "5.0.0", "5.19.0", "5.23.0", "5.25.0")
MAIN = installed_version("transformers")  # this venv's: the reference the others are compared with
# accelerate: transformers' bitsandbytes quantizer refuses to load without it (4.57 to 5.25)
PACKAGES = tuple("pillow numpy safetensors soundfile soxr av sentencepiece protobuf bitsandbytes accelerate".split())
STAMP = ".unimoe-compat-stamp"

__all__ = ["MAIN", "MATRIX", "VenvError", "ensure_venv", "version_key"]


def version_key(version: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def ensure_venv(version: str) -> tuple[Path, float | None]:
    """The python of build/venvs/tf-<version>, and the seconds it took to make (None if its stamp was current)."""
    return venvs.ensure_venv(venvs.VENVS / f"tf-{version}", [f"transformers=={version}", *PACKAGES], stamp=STAMP)


def main() -> int:
    for version in MATRIX:
        if version == MAIN:
            print(f"transformers {version}: the main venv's")
        elif venvs.report(f"transformers {version}", lambda version=version: ensure_venv(version)):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
