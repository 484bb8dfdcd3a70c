"""Helpers shared by the hub_export commands: atomic output folders."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder next to `out`; move it to `out` only when the block finishes without error.

    A failed run leaves nothing at `out` (and an existing `out` untouched).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"The output folder {out} already exists. Pass --overwrite to replace it, or pick another."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
