"""training/evaluate.py writes under build/ (of the current directory) unless told, never into the evaluated
folder, and its routing report (training/routing.py) and plot still come out."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from modeling_unimoe.training.evaluate import (
    accuracy_report,
    default_out,
    evaluate,
    main,
    markdown_table,
    wilson_interval,
)
from tests.helpers import TINY_CHECKPOINT, needs_tiny_checkpoint


pytestmark = needs_tiny_checkpoint


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_default_output_is_under_build_not_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(TINY_CHECKPOINT)
    report = evaluate(TINY_CHECKPOINT, tmp_path / "data", "test", n_per_task=2, routing=True, tasks=("image_color",),
                      log=lambda *_: None)  # fmt: skip
    out = tmp_path / "build" / "eval" / "uni-moe-tiny"
    assert default_out(TINY_CHECKPOINT) == Path("build/eval/uni-moe-tiny")
    assert json.loads((out / "eval.json").read_text())["per_task"]["image_color"]["n"] == 2
    routes = json.loads((out / "routing.json").read_text())
    # each token counts as its own modality: the image placeholders as image, the question as text
    assert set(routes["share"]) == {"image", "text"} and routes["moe_layers"] == report["routing"]["moe_layers"]
    assert routes["examples_per_modality"] == {"image": 2} and routes["prompts"] == 2
    assert routes["tokens"]["image"] > routes["tokens"]["text"] > 0
    for share in routes["share"]["image"].values():
        assert abs(sum(share) - 1) < 1e-5 and len(share) == routes["num_experts"]
    assert (out / "routing.png").read_bytes()[:4] == b"\x89PNG"
    assert _snapshot(TINY_CHECKPOINT) == before, "the evaluated folder was written to"


def test_wilson_interval_matches_published_values():
    """Newcombe (1998), Statistics in Medicine 17, 857-872, Table I, method 3 (score interval without continuity
    correction)."""
    published = {
        (81, 263): (0.2553, 0.3662),
        (15, 148): (0.0624, 0.1605),
        (0, 20): (0.0, 0.1611),
        (1, 29): (0.0061, 0.1718),
    }
    for (correct, n), expected in published.items():
        assert tuple(round(bound, 4) for bound in wilson_interval(correct, n)) == expected
    with pytest.raises(ValueError, match="An interval needs at least one example; got n=0."):
        wilson_interval(0, 0)


def test_report_and_table_give_each_tasks_interval():
    records = [{"task": "image_color", "answer": "red"}] * 50 + [{"task": "text_add", "answer": "four"}] * 50
    predictions = ["red"] * 45 + ["blue"] * 5 + ["four"] * 50
    report = accuracy_report(records, predictions)
    color = report["per_task"]["image_color"]
    assert (color["correct"], color["n"], color["accuracy"]) == (45, 50, 0.9)
    assert [round(bound, 4) for bound in color["interval_95"]] == [0.7864, 0.9565]
    assert report["per_task"]["text_add"]["interval_95"][1] == 1.0
    table = markdown_table(report).splitlines()
    assert table[0] == "| task | modality | accuracy | 95% interval | n |"
    assert table[2] == "| image_color | image | 90.0% | 79-96% | 50 |"
    assert table[3] == "| text_add | text | 100.0% | 93-100% | 50 |"
    assert table[4] == "| **mean** | | 95.0% | | |"


def test_out_flag_is_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        [str(TINY_CHECKPOINT), "--data", str(tmp_path / "data"), "--n-per-task", "1", "--out", str(tmp_path / "mine")]
    )
    assert (tmp_path / "mine" / "eval.json").is_file()
    assert not (tmp_path / "build").exists()


def test_seed_and_distribution_flags_write_that_split(tmp_path):
    from modeling_unimoe.training.synthetic import write_split

    main([str(TINY_CHECKPOINT), "--data", str(tmp_path / "data"), "--n-per-task", "1", "--seed", "3",
          "--distribution", "wide", "--out", str(tmp_path / "out")])  # fmt: skip
    written = (tmp_path / "data" / "test.json").read_text()
    assert written == write_split(tmp_path / "wide", "test", 1, 3, distribution="wide").read_text()
    assert written != write_split(tmp_path / "standard", "test", 1, 3).read_text()
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert sum(entry["n"] for entry in report["per_task"].values()) == 8
    lines = []  # an existing split is read as it is, and the log says so
    evaluate(TINY_CHECKPOINT, tmp_path / "data", "test", tmp_path / "again", n_per_task=2, seed=5, tasks=("text_add",),
             log=lines.append)  # fmt: skip
    assert lines[0] == (
        f"Reading the test split already in {tmp_path / 'data'} (--n-per-task, --seed, --distribution and --shift "
        "apply to a new one)"
    )
    assert json.loads((tmp_path / "again" / "eval.json").read_text())["per_task"]["text_add"]["n"] == 1


def test_routing_report_counts_each_tokens_modality_and_refuses_batches(tiny_model):
    """training/routing.py: each token counts as its own modality (a placeholder id as its medium, the rest as text),
    the prefix left out; every layer's shares sum to 1; batches of more than one prompt are refused."""
    import torch

    from modeling_unimoe.training.routing import plot_routing, routing_report

    # a stand-in processor whose "image" id is an ordinary token to the model: routing reads only these attributes
    processor = SimpleNamespace(image_token_id=7, video_token_id=None, audio_token_id=None, sound_token_id=None,
                                audio_paths={})  # fmt: skip
    prompt = {"input_ids": torch.tensor([[1, 7, 7, 9, 10, 11]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    report = routing_report(tiny_model, processor, [prompt, prompt], prefix_length=1)
    text_config = tiny_model.config.get_text_config()
    assert report["tokens"] == {"image": 4, "text": 6} and report["prompts"] == 2
    assert (
        report["moe_layers"] == list(text_config.moe_layer_indices)
        and report["top_k"] == text_config.num_experts_per_tok
    )
    for modality in ("image", "text"):
        for share in report["share"][modality].values():
            assert len(share) == text_config.num_experts and abs(sum(share) - 1) < 1e-5
    image = plot_routing(report)
    assert image.mode == "RGB" and image.width > 100
    batch = {key: value.repeat(2, 1) for key, value in prompt.items()}
    with pytest.raises(ValueError, match="Prompt 0 holds a batch of 2; expected a batch of one"):
        routing_report(tiny_model, processor, [batch])
    with pytest.raises(ValueError, match="got no prompts"):
        routing_report(tiny_model, processor, [])
