"""Output folders of the export commands (`hub_export.build`, `hub_export.convert`, `training.tiny`).

`atomic_output_dir(out, overwrite)` writes a folder atomically and never deletes anything that is not an export of
ours:

- the content is written into a new sibling folder (`.NAME.partial-*`) and moved to `out` only when complete; an
  existing `out` is moved aside (`.NAME.old-*`) and deleted only after the new folder is in place, so a failure at
  any point leaves the old folder as it was;
- every folder it writes carries `MARKER`, a small JSON file that names the command and the files it wrote;
- an existing `out` is replaced only with `overwrite=True` (`--overwrite`), and only when it is an export of ours:
  it carries `MARKER`, or (a folder written before the marker existed) it has a config.json of model_type `unimoe`
  and the Hub code files; and in both cases it holds nothing but the files an export writes. An existing empty
  folder is used as it is;
- the filesystem root, the home folder, the current working folder and the repository root, any ancestor of these
  three, and any git checkout are refused whatever their spelling (relative paths and symlinks are resolved first).

A refusal raises `OutputFolderError` (a `ValueError`) whose one-line message names the folder, the reason and the
fix; the commands print it as `error: ...` and exit with status 2. `check_output_dir` runs the same checks without
writing, for commands that should refuse before hours of work rather than after.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path

from modeling_unimoe.processing.export import PROCESSOR_HUB_FILES


MARKER = ".uni-moe-export.json"
MARKER_TOOL = "uni-moe"
REPO_ROOT = Path(__file__).resolve().parents[1]
# the model's Hub code (modeling_unimoe/): `modeling_unimoe.py` and the siblings it imports, which transformers copies
# into a folder the model is saved to
HUB_CODE_FILES = ("configuration_beats.py", "configuration_unimoe.py", "modeling_beats.py", "modeling_unimoe.py")
# the top-level files an export of ours writes (hub_export.build, hub_export.convert, the training export)
EXPORT_FILES = frozenset(
    {
        MARKER,
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        *HUB_CODE_FILES,
        *PROCESSOR_HUB_FILES,
        "pipeline_unimoe.py",
        "processor_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.jinja",
        "chat_template.json",
        "README.md",
        "train_summary.json",
    }
)
WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors")
MODEL_TYPE = "unimoe"


class OutputFolderError(ValueError):
    """An output folder that must not be written or replaced; the message says which, why, and what to do."""


def _shown(out, target: Path) -> str:
    """`out` as the user spelled it, with the resolved path where they differ."""
    return str(out) if Path(out) == target else f"{out} (= {target})"


def _protected(target: Path) -> str | None:
    """Why `target` (resolved) may never be an output folder, or None."""
    if target == Path(target.anchor):
        return "the filesystem root"
    places = []
    with contextlib.suppress(OSError):
        places.append(("the current working folder", Path.cwd().resolve()))
    with contextlib.suppress(RuntimeError, KeyError, OSError):
        places.append(("your home folder", Path.home().resolve()))
    places.append(("the root of the uni-moe repository", REPO_ROOT))
    for name, place in places:
        if target == place:
            return name
        if target in place.parents:
            return f"an ancestor of {name} {place}"
    if (target / ".git").exists():
        return "a git checkout (it holds .git)"
    return None


def _marker(folder: Path) -> dict | None:
    """The folder's marker, or None when it has none (or one this package did not write)."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == MARKER_TOOL else None


def _model_type(folder: Path):
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def why_not_replaceable(folder: Path) -> str | None:
    """None when `folder` (an existing folder) is an export of ours that may be replaced; otherwise the reason."""
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    if not entries:
        return None
    marker = _marker(folder)
    if marker is None:
        missing = [name for name in ("config.json", *HUB_CODE_FILES) if not (folder / name).is_file()]
        if missing or _model_type(folder) != MODEL_TYPE:
            return (
                f"it is not an export of uni-moe (no {MARKER}, and no config.json of model_type {MODEL_TYPE!r} with "
                f"{' and '.join(HUB_CODE_FILES)})"
            )
    written = set(marker.get("files", [])) if marker else set()
    unknown = [
        p.name + ("/" if p.is_dir() else "")
        for p in entries
        if p.name not in written
        and (p.is_symlink() or not p.is_file() or not (p.name in EXPORT_FILES or WEIGHT_FILE.fullmatch(p.name)))
    ]
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        return f"it holds {len(unknown)} entr{'y' if len(unknown) == 1 else 'ies'} that no export writes: {shown}"
    return None


def check_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise OutputFolderError unless `out` may be written (created, or replaced with `overwrite`); returns it
    resolved. Writes nothing."""
    target = Path(out).resolve()
    reason = _protected(target)
    if reason:
        raise OutputFolderError(
            f"Refusing to use {_shown(out, target)} as the output folder: it is {reason}, and an export replaces the "
            f"whole folder. Name a new folder for the export instead, e.g. --out build/my-export."
        )
    if target.exists() and not target.is_dir():
        raise OutputFolderError(
            f"The output path {_shown(out, target)} is a file; expected a folder, or a path that does not exist yet. "
            "Choose another output folder."
        )
    try:
        occupied = target.is_dir() and any(target.iterdir())
        reason = why_not_replaceable(target) if occupied else None
    except OSError as error:
        raise OutputFolderError(
            f"Cannot read the output folder {_shown(out, target)} to check what it holds: {error}. Choose another "
            "output folder."
        ) from None
    if reason:
        raise OutputFolderError(
            f"Refusing to replace the output folder {_shown(out, target)}: {reason}. Only a folder written by "
            "uni-moe's export commands is ever replaced. Choose another output folder, or move your files out of "
            "this one first."
        )
    if occupied and not overwrite:
        raise OutputFolderError(
            f"The output folder {_shown(out, target)} already exists (an earlier export). Pass --overwrite "
            "(overwrite=True in Python) to replace it, or choose another output folder."
        )
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputFolderError(
            f"Cannot create the output folder {_shown(out, target)}: {parent} is "
            f"{'not a folder' if not parent.is_dir() else 'not writable'}. Choose a folder you can write to."
        )
    return target


def _new_sibling(target: Path, kind: str, create: bool) -> Path:
    for _ in range(100):
        path = target.with_name(f".{target.name}.{kind}-{secrets.token_hex(4)}")
        if create:
            try:
                path.mkdir()  # the mode follows the umask, as for any folder the user creates
            except FileExistsError:
                continue
            return path
        if not path.exists() and not path.is_symlink():
            return path
    raise OutputFolderError(f"Could not find a free temporary name next to {target}; clean up {target.parent}.")


def _swap(tmp: Path, target: Path) -> None:
    """Put `tmp` at `target`; an existing `target` is moved aside first and deleted only once `tmp` is in place."""
    if not target.exists():
        try:
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return
    old = _new_sibling(target, "old", create=False)
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException as error:
        try:
            os.rename(old, target)
        except OSError as restore_error:
            raise OutputFolderError(
                f"Could not put the new export in place ({error}) nor move the previous folder back "
                f"({restore_error}): the previous folder is at {old} and the new export at {tmp}. Rename one of "
                f"them to {target} yourself."
            ) from error
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False, tool: str = "uni-moe"):
    """Yield a new empty folder next to `out`; when the block finishes without error, write the marker (naming
    `tool` and the files written) and move the folder to `out`, replacing an earlier export there.

    Refuses (OutputFolderError, before the block runs and again before the swap) what `check_output_dir` refuses. A
    failure inside the block removes the new folder and leaves `out` untouched.
    """
    target = check_output_dir(out, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_sibling(target, "partial", create=True)
    except OSError as error:
        raise OutputFolderError(
            f"Cannot create a folder next to the output folder {out}: {error}. Choose a folder you can write to."
        ) from None
    try:
        yield tmp
        files = sorted(p.name for p in tmp.iterdir())
        marker = {"tool": MARKER_TOOL, "written_by": tool, "files": [MARKER, *files]}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        check_output_dir(target, overwrite)  # the folder may have changed while the export was written
    except OutputFolderError as error:
        raise OutputFolderError(f"{error} The finished export was left at {tmp}.") from None
    _swap(tmp, target)
