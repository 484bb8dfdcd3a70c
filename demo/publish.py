# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Publish Uni-MoE-Tiny to the Hugging Face Hub, and optionally this folder as a Gradio Space that serves it.

    python demo/publish.py --dry-run                          # what would go where; touches no network
    python demo/publish.py                                    # checkpoints/uni-moe-tiny -> uni-moe/uni-moe-tiny
    python demo/publish.py --repo-id you/uni-moe-tiny --space you/uni-moe-demo

The model repository gets the Hub folder as it is (config, weights, processor and tokenizer files, chat template and
the remote code the config's auto_map and custom_pipelines name). `--space` also creates (or updates) a Gradio Space
with the files `stage_space` lays out (this folder's modules, requirements.txt and README.md, and the package's
routing analysis at its package path, `modeling_unimoe/training/routing.py`, so that the demo imports it by the same
name there as here), and sets its variables UNIMOE_DEMO_MODEL (the model repository) and UNIMOE_DEMO_REVISION (the
commit just uploaded, so the Space runs the remote code it was published with). Needs a token with write access:
`hf auth login`, or HF_TOKEN.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from app import HUB_MODEL, MODEL_VARIABLE, REVISION_VARIABLE

from modeling_unimoe.training import routing


HERE = Path(__file__).resolve().parent
DEFAULT_FOLDER = HERE.parent / "checkpoints" / "uni-moe-tiny"
DEMO_FILES = ("README.md", "requirements.txt", "app.py", "ui.py", "chat.py", "media.py", "backends.py")
# the Space's files: path in the Space -> file here
SPACE_FILES = {
    **{name: HERE / name for name in DEMO_FILES},
    "modeling_unimoe/training/routing.py": Path(routing.__file__),
}
# files of a model folder that are not part of the model (evaluation output, caches)
SKIPPED_PARTS = ("eval", "__pycache__", ".git", ".cache")


class PublishError(ValueError):
    """The folder or the arguments cannot be published as they are."""


def model_files(folder) -> list[str]:
    """The files of a Uni-MoE Hub folder to upload (relative paths), after checking that it loads on its own:
    config.json, safetensors weights, the processor and tokenizer files, and every code file the configs name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{str(folder)!r} is not a folder. Pass --folder with an exported Hub folder.")
    files = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not set(path.relative_to(folder).parts) & set(SKIPPED_PARTS)
    )
    missing = [name for name in ("config.json", "processor_config.json", "tokenizer.json") if name not in files]
    if not any(name.endswith(".safetensors") for name in files):
        missing.append("*.safetensors (the weights)")
    code = set()
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        if name in files:
            config = json.loads((folder / name).read_text())
            code.update(f"{ref.split('--')[-1].rsplit('.', 1)[0]}.py" for ref in _auto_map_refs(config))
            for pipeline in (config.get("custom_pipelines") or {}).values():
                if isinstance(pipeline.get("impl"), str):
                    code.add(f"{pipeline['impl'].rsplit('.', 1)[0]}.py")
    missing += sorted(name for name in code if name not in files)
    if missing:
        raise PublishError(
            f"{folder} is not a complete Uni-MoE Hub folder: missing {', '.join(missing)}. Export it again (python -m "
            "hub_export.build, or the training export) and publish that folder."
        )
    return files


def _auto_map_refs(config: dict) -> list[str]:
    refs = []
    for value in (config.get("auto_map") or {}).values():
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(ref, str):
                refs.append(ref)
    return refs


def stage_space(folder) -> Path:
    """Lay out the Space's files (`SPACE_FILES`) in `folder`, a new or empty folder; returns it."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise PublishError(f"{folder} is not empty; the Space is laid out in a new or empty folder.")
    _check_space_files()
    for name, source in SPACE_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / name)
    return folder


def _check_space_files() -> None:
    missing = [str(source) for source in SPACE_FILES.values() if not source.is_file()]
    if missing:
        raise PublishError(f"The Space needs {', '.join(missing)}, which is missing. Restore it from the repository.")


def _check_repo_id(repo_id: str, flag: str) -> None:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise PublishError(f"{flag} is {repo_id!r}; expected a Hub repository id such as you/uni-moe-tiny.")


def publish(folder=DEFAULT_FOLDER, repo_id: str = HUB_MODEL, space: str | None = None, private: bool = False,
            dry_run: bool = False, api=None, log=print) -> dict:  # fmt: skip
    """Upload `folder` to the model repository `repo_id` (and this demo to the Space `space`). Returns what was done:
    {"repo_id", "files", "revision" (the model commit; None in a dry run), "space", "space_files"}."""
    _check_repo_id(repo_id, "--repo-id")
    if space is not None:
        _check_repo_id(space, "--space")
        _check_space_files()
    files = model_files(folder)
    result = {"repo_id": repo_id, "files": files, "revision": None, "space": space, "space_files": list(SPACE_FILES)}
    if dry_run:
        log(f"Would upload {len(files)} files of {folder} to the model repository {repo_id}: {', '.join(files)}")
        if space is not None:
            log(
                f"Would upload {', '.join(SPACE_FILES)} to the Space {space} and set its variables {MODEL_VARIABLE}="
                f"{repo_id} and {REVISION_VARIABLE}=<the model commit>."
            )
        return result
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        allow_patterns=files,
        commit_message="Upload Uni-MoE-Tiny (demo/publish.py)",
    )
    result["revision"] = commit.oid
    log(f"Uploaded {len(files)} files to {repo_id} at commit {commit.oid}: {commit.commit_url}")
    if space is not None:
        api.create_repo(space, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="unimoe-space-") as staged:
            api.upload_folder(
                repo_id=space,
                repo_type="space",
                folder_path=str(stage_space(staged)),
                delete_patterns=["*.py"],  # modules of an earlier demo that this one no longer has
                commit_message="Uni-MoE demo (demo/publish.py)",
            )
        api.add_space_variable(space, MODEL_VARIABLE, repo_id)
        api.add_space_variable(space, REVISION_VARIABLE, commit.oid)
        log(f"Space {space}: uploaded {', '.join(SPACE_FILES)}; set {MODEL_VARIABLE} and {REVISION_VARIABLE}.")
    else:
        log(f"Pin it on a Space with the variables {MODEL_VARIABLE}={repo_id} and {REVISION_VARIABLE}={commit.oid}.")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--folder", default=str(DEFAULT_FOLDER), help="the Hub folder (default: checkpoints/uni-moe-tiny)"
    )
    parser.add_argument(
        "--repo-id", default=HUB_MODEL, help=f"model repository (default: {HUB_MODEL}, the demo's default)"
    )
    parser.add_argument("--space", help="also publish this folder as the Gradio Space SPACE (owner/name)")
    parser.add_argument("--private", action="store_true", help="create the repositories as private")
    parser.add_argument("--dry-run", action="store_true", help="check the folder and print the plan; upload nothing")
    args = parser.parse_args(argv)
    try:
        publish(args.folder, args.repo_id, args.space, args.private, args.dry_run)
    except PublishError as error:
        print(f"publish.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
