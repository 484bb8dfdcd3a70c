"""Output folders of the export commands (`hub_export.output`): what is refused, with the user's files intact
afterwards, and what is replaced atomically."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hub_export import build as build_module
from hub_export import convert as convert_module
from hub_export.output import (
    MARKER,
    OutputFolderError,
    atomic_output_dir,
    check_output_dir,
    why_not_replaceable,
)
from tests.helpers import REPO, TINY_CHECKPOINT


def snapshot(root: Path) -> dict:
    """Every entry under `root` with its content (files), its target (links) or 'dir'."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            state[key] = "dir"
        else:
            state[key] = path.read_bytes()
    return state


@pytest.fixture
def user_tree(tmp_path):
    """tmp/home/projects/work with the user's files at every level; returns the deepest folder."""
    deepest = tmp_path / "home" / "projects" / "work"
    deepest.mkdir(parents=True)
    for folder in (tmp_path / "home", tmp_path / "home" / "projects", deepest):
        (folder / "notes.txt").write_text(f"the user's notes in {folder.name}")
        (folder / "data").mkdir()
        (folder / "data" / "table.csv").write_text("a,b\n1,2\n")
    return deepest


def fake_export(folder: Path, body: str = "old") -> Path:
    """A folder as an export command writes it (with the marker), holding `body` in its weights file."""
    with atomic_output_dir(folder, overwrite=True, tool="test") as tmp:
        (tmp / "config.json").write_text(json.dumps({"model_type": "unimoe"}))
        (tmp / "model.safetensors").write_text(body)
    return folder


def run_build(argv, capsys) -> tuple[int, str]:
    code = build_module.main(["--preset", "tiny", *argv])
    return code, capsys.readouterr().err


def assert_one_line_error(err: str, *parts: str):
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, (part, err)


# -- refusals: the user's files stay as they were --------------------------------------------------------------------
def test_a_user_folder_is_never_replaced(user_tree, capsys):
    before = snapshot(user_tree.parent)
    for argv in (["--out", str(user_tree), "--overwrite"], ["--out", str(user_tree)]):
        code, err = run_build(argv, capsys)
        assert code == 2
        assert_one_line_error(err, f"Refusing to replace the output folder {user_tree}", "not an export of uni-moe")
        assert "--overwrite" not in err  # the flag would not help: it is not suggested
    assert snapshot(user_tree.parent) == before
    assert sorted(p.name for p in user_tree.parent.iterdir()) == ["data", "notes.txt", "work"]  # no temporary left


@pytest.mark.parametrize(
    "spelling, reason",
    [
        (".", "it is the current working folder"),
        ("./", "it is the current working folder"),
        ("../work/.", "it is the current working folder"),
        ("..", "it is an ancestor of the current working folder"),
        ("../..", "it is an ancestor of the current working folder"),
        ("ANCESTOR", "it is an ancestor of the current working folder"),
        ("LINK", "it is the current working folder"),
        ("HOME", "it is your home folder"),
        ("REPO", "it is the root of the uni-moe repository"),
        ("/", "it is the filesystem root"),
    ],
)
def test_protected_folders_are_refused_with_overwrite(user_tree, monkeypatch, capsys, spelling, reason):
    home = user_tree.parents[1]  # tmp/home, an ancestor of the cwd too: HOME is checked first only when not one
    other_home = home.parent / "other-home"
    other_home.mkdir()
    (other_home / "diary.txt").write_text("private")
    monkeypatch.setenv("HOME", str(other_home))
    monkeypatch.chdir(user_tree)
    link = home.parent / "link-to-work"
    link.symlink_to(user_tree, target_is_directory=True)
    out = {"ANCESTOR": str(home), "LINK": str(link), "HOME": str(other_home), "REPO": str(REPO)}.get(
        spelling, spelling
    )
    before = snapshot(home.parent)
    repo_before = sorted(p.name for p in REPO.iterdir() if not p.name.startswith("."))
    code, err = run_build(["--out", out, "--overwrite"], capsys)
    assert code == 2
    assert_one_line_error(err, f"Refusing to use {out}", reason, "Name a new folder")
    assert snapshot(home.parent) == before
    assert sorted(p.name for p in REPO.iterdir() if not p.name.startswith(".")) == repo_before
    with pytest.raises(OutputFolderError, match=reason):
        check_output_dir(out, overwrite=True)


def test_a_git_checkout_is_refused_even_with_the_marker(tmp_path):
    folder = fake_export(tmp_path / "export")
    (folder / ".git").mkdir()
    before = snapshot(folder)
    with pytest.raises(OutputFolderError, match=r"it is a git checkout \(it holds \.git\)"):
        fake_export(folder, "new")
    assert snapshot(folder) == before


def test_a_file_is_refused(tmp_path):
    file = tmp_path / "model.bin"
    file.write_bytes(b"weights")
    with pytest.raises(OutputFolderError, match=r"is a file; expected a folder, or a path that does not exist yet"):
        fake_export(file)
    assert file.read_bytes() == b"weights"


def test_a_path_below_a_file_is_refused(tmp_path):
    file = tmp_path / "model.bin"
    file.write_bytes(b"weights")
    with pytest.raises(OutputFolderError, match=r"model.bin is not a folder. Choose a folder you can write to"):
        fake_export(file / "out")
    assert file.read_bytes() == b"weights"


def test_an_export_with_the_users_files_added_is_refused(tmp_path):
    folder = fake_export(tmp_path / "export")
    (folder / "my-results.txt").write_text("keep me")
    (folder / "eval").mkdir()
    before = snapshot(folder)
    with pytest.raises(OutputFolderError, match=r"it holds 2 entries that no export writes: eval/, my-results.txt"):
        fake_export(folder, "new")
    assert snapshot(folder) == before


def test_a_marker_of_another_tool_is_not_ours(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps({"tool": "someone-else", "files": [MARKER, "a.txt"]}))
    (folder / "a.txt").write_text("theirs")
    assert "not an export of uni-moe" in why_not_replaceable(folder)
    before = snapshot(folder)
    with pytest.raises(OutputFolderError, match="not an export of uni-moe"):
        fake_export(folder)
    assert snapshot(folder) == before


def test_an_existing_export_needs_overwrite(tmp_path, capsys):
    """The README's export command run twice: the second run is one line and exit status 2, no traceback."""
    folder = fake_export(tmp_path / "uni-moe-tiny-random")
    before = snapshot(folder)
    code, err = run_build(["--out", str(folder)], capsys)
    assert code == 2
    assert_one_line_error(err, f"The output folder {folder} already exists (an earlier export). Pass --overwrite")
    assert snapshot(folder) == before


def test_the_build_command_reports_a_refusal_in_one_line(tmp_path):
    folder = fake_export(tmp_path / "uni-moe-tiny-random")
    command = [sys.executable, "-m", "hub_export.build", "--preset", "tiny", "--out", str(folder), "--check"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr, "already exists (an earlier export). Pass --overwrite")


def test_the_converter_refuses_before_reading_the_release(user_tree, monkeypatch, capsys):
    monkeypatch.chdir(user_tree)
    before = snapshot(user_tree)
    argv = ["--variant", "speech-4e", "--base", "missing-base", "--finetuned", "missing-e2", "--clip", "missing-clip"]
    assert convert_module.main([*argv, "--out", ".", "--overwrite"]) == 2
    assert_one_line_error(capsys.readouterr().err, "Refusing to use . ", "current working folder")
    assert convert_module.main([*argv, "--out", "data", "--overwrite"]) == 2
    assert_one_line_error(capsys.readouterr().err, "Refusing to replace the output folder data", "no .uni-moe-export")
    assert snapshot(user_tree) == before


def test_tiny_training_refuses_before_it_trains(user_tree, monkeypatch, capsys):
    from modeling_unimoe.training import tiny

    def must_not_run(*args, **kwargs):
        raise AssertionError("the refusal must come before the data and the training")

    monkeypatch.setattr(tiny, "write_data", must_not_run)
    before = snapshot(user_tree.parent)
    assert tiny.main(["--out", str(user_tree.parent), "--work", str(user_tree.parent / "work-dir")]) == 2
    assert_one_line_error(capsys.readouterr().err, "Refusing to replace the output folder", "not an export of uni-moe")
    assert snapshot(user_tree.parent) == before


def test_tiny_training_writes_to_build_by_default(monkeypatch):
    from modeling_unimoe.training import tiny

    calls = []
    monkeypatch.setattr(tiny, "run", lambda out, *args, **kwargs: calls.append(out))
    assert tiny.main([]) == 0
    assert calls == ["build/uni-moe-tiny"]


# -- what is replaced ------------------------------------------------------------------------------------------------
def test_an_export_is_replaced_and_carries_the_marker(tmp_path):
    out = build_module.build("tiny", tmp_path / "tiny", seed=0)
    marker = json.loads((out / MARKER).read_text())
    assert marker["tool"] == "uni-moe" and marker["written_by"] == "hub_export.build"
    assert sorted(marker["files"]) == sorted(p.name for p in out.iterdir())
    first = (out / "model.safetensors").read_bytes()
    build_module.build("tiny", out, seed=1, overwrite=True)
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # neither the new nor the old folder left beside


def test_an_export_made_before_the_marker_is_recognised_by_its_files(tmp_path):
    """The checked-in checkpoint has no marker: the tiny training command may still replace it when named."""
    assert not (TINY_CHECKPOINT / MARKER).exists()
    assert why_not_replaceable(TINY_CHECKPOINT) is None
    assert check_output_dir(TINY_CHECKPOINT, overwrite=True) == TINY_CHECKPOINT.resolve()
    copy = shutil.copytree(TINY_CHECKPOINT, tmp_path / "uni-moe-tiny")
    fake_export(copy, "new")
    assert (copy / "model.safetensors").read_text() == "new" and (copy / MARKER).is_file()
    assert not (copy / "tokenizer.json").exists()  # replaced as a whole


def test_an_empty_folder_is_used_without_overwrite(tmp_path):
    (tmp_path / "empty").mkdir()
    fake_export(tmp_path / "empty", "new")
    assert (tmp_path / "empty" / "model.safetensors").read_text() == "new"


# -- failures leave the old export as it was -------------------------------------------------------------------------
def test_a_failure_while_writing_leaves_the_old_export(tmp_path):
    folder = fake_export(tmp_path / "export")
    before = snapshot(folder)
    with pytest.raises(OSError, match="disk full"):
        with atomic_output_dir(folder, overwrite=True) as tmp:
            (tmp / "model.safetensors").write_text("half-written")
            raise OSError("disk full")
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_failure_while_swapping_restores_the_old_export(tmp_path, monkeypatch):
    folder = fake_export(tmp_path / "export")
    before = snapshot(folder)
    rename = os.rename

    def fail_on_the_new_folder(src, dst):
        if ".partial-" in str(src):
            raise OSError("device busy")
        return rename(src, dst)

    monkeypatch.setattr(os, "rename", fail_on_the_new_folder)
    with pytest.raises(OSError, match="device busy"):
        fake_export(folder, "new")
    monkeypatch.undo()
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_folder_that_appears_while_writing_is_not_replaced(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(OutputFolderError, match=r"not an export of uni-moe.*The finished export was left at"):
        with atomic_output_dir(target) as tmp:
            (tmp / "config.json").write_text("{}")
            target.mkdir()
            (target / "mine.txt").write_text("written meanwhile")
    assert (target / "mine.txt").read_text() == "written meanwhile"
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]
    assert len(left) == 1 and (left[0] / "config.json").is_file()
