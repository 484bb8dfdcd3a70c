"""training/evaluate.py writes under build/ (of the current directory) unless told, never into the evaluated
folder, and its routing report and plot still come out."""

import json
from pathlib import Path

import pytest

from modeling_unimoe.training.evaluate import default_out, evaluate, main


REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "checkpoints" / "uni-moe-tiny"

pytestmark = pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason=f"no embedded checkpoint at {MODEL}")


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_default_output_is_under_build_not_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(MODEL)
    report = evaluate(MODEL, tmp_path / "data", "test", n_per_task=2, routing=True, tasks=("image_color",),
                      log=lambda *_: None)  # fmt: skip
    out = tmp_path / "build" / "eval" / "uni-moe-tiny"
    assert default_out(MODEL) == Path("build/eval/uni-moe-tiny")
    assert json.loads((out / "eval.json").read_text())["per_task"]["image_color"]["n"] == 2
    routes = json.loads((out / "routing.json").read_text())
    assert set(routes["share"]) == {"image"} and routes["moe_layers"] == report["routing"]["moe_layers"]
    assert (out / "routing.png").read_bytes()[:4] == b"\x89PNG"
    assert _snapshot(MODEL) == before, "the evaluated folder was written to"


def test_out_flag_is_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main([str(MODEL), "--data", str(tmp_path / "data"), "--n-per-task", "1", "--out", str(tmp_path / "mine")])
    assert (tmp_path / "mine" / "eval.json").is_file()
    assert not (tmp_path / "build").exists()
