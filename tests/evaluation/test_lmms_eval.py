"""lmms-eval (evaluation/): the `uni_moe` model on the offline `unimoe_synthetic` tasks gives `training.evaluate`'s
predictions example for example, and its per-task accuracy.

lmms-eval cannot share the main venv (its torchvision and av<16), so the run goes through its own venv
(build/venvs/lmms-eval, `python -m modeling_unimoe.evaluation.venv`); the slow test is skipped without it. The fast
tests read the task YAMLs and the entry point without lmms-eval.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from modeling_unimoe.training.synthetic import MODALITY, TASKS
from tests.helpers import REPO, TINY_CHECKPOINT


TASKS_DIR = REPO / "evaluation" / "tasks"
SYNTHETIC_DIR = TASKS_DIR / "unimoe_synthetic"
LMMS_EVAL = REPO / "build" / "venvs" / "lmms-eval" / "bin" / "lmms-eval"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class _TaskYamlLoader(yaml.SafeLoader):
    """Reads lmms-eval YAMLs without importing their `!function` targets (kept as strings)."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: "!function " + loader.construct_scalar(node))


def _read_yaml(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_TaskYamlLoader)


# --- fast: the task files and the entry point ----------------------------------------------------------------------


def test_one_task_yaml_per_synthetic_task_and_a_group_of_them_all():
    group = _read_yaml(SYNTHETIC_DIR / "unimoe_synthetic.yaml")
    assert group["group"] == "unimoe_synthetic"
    assert group["task"] == [f"unimoe_synthetic_{task}" for task in TASKS]
    template = _read_yaml(SYNTHETIC_DIR / "_default_template_yaml")
    assert template["dataset_path"] == "json" and template["output_type"] == "generate_until"
    assert template["generation_kwargs"]["max_new_tokens"] == 6  # training.evaluate's
    module = "modeling_unimoe.evaluation.synthetic_tasks"
    for key in ("doc_to_visual", "doc_to_text", "process_results"):
        assert template[key] == f"!function {module}.{key}"
    for task in TASKS:
        config = _read_yaml(SYNTHETIC_DIR / f"unimoe_synthetic_{task}.yaml")
        assert config == {
            "task": f"unimoe_synthetic_{task}",
            "include": "_default_template_yaml",
            "dataset_kwargs": {"data_files": {"test": f"data/{task}.jsonl"}},
        }


def test_the_entry_point_names_the_model_class():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["lmms_eval.models"]["uni_moe"]
    assert target == "modeling_unimoe.evaluation.lmms_eval_plugin:manifests"
    from modeling_unimoe.evaluation import lmms_eval_plugin

    module, name = lmms_eval_plugin.CLASS_PATH.rsplit(".", 1)
    assert module == "modeling_unimoe.evaluation.lmms_eval_model"
    assert f"\nclass {name}(lmms):" in (REPO / "evaluation" / "lmms_eval_model.py").read_text()


def test_the_local_dataset_is_the_test_split_training_evaluate_reads(tmp_path):
    from modeling_unimoe.evaluation.synthetic_tasks import N_PER_TASK, doc_to_visual, ensure_data, process_results

    data = ensure_data(tmp_path / "data")
    split = json.loads((data / "test.json").read_text())
    assert len(split) == N_PER_TASK * len(TASKS)
    for task in TASKS:
        docs = [json.loads(line) for line in (data / f"{task}.jsonl").read_text().splitlines()]
        records = [record for record in split if record["task"] == task]
        assert [doc["id"] for doc in docs] == [record["id"] for record in records]
        assert [doc["answer"] for doc in docs] == [record["conversations"][1]["value"] for record in records]
        assert {doc["modality"] for doc in docs} == {MODALITY[task]}
        assert process_results(docs[0], [docs[0]["answer"].upper() + "."]) == {"accuracy": 1.0}
        assert process_results(docs[0], ["no"]) == {"accuracy": 0.0}
    speech = json.loads((data / "speech_digit.jsonl").read_text().splitlines()[0])
    assert speech["audio_kind"] == "speech" and speech["media"].endswith(".wav")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("modeling_unimoe.evaluation.synthetic_tasks.DATA_DIR", data)
        (audio,) = doc_to_visual(speech)
    assert audio["audio_kind"] == "speech" and audio["array"].dtype.name == "float32" and audio["sampling_rate"] > 0


# --- slow: the lmms-eval run ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not LMMS_EVAL.exists(),
    reason=f"no lmms-eval venv at {LMMS_EVAL.parent.parent}: make it with `make lmms-eval-venv` (about 2 GB)",
)
def test_lmms_eval_matches_training_evaluate_example_for_example(tmp_path):
    from modeling_unimoe.training.evaluate import evaluate

    out = tmp_path / "lmms-eval"
    command = [
        str(LMMS_EVAL),
        "--model", "uni_moe",
        "--model_args", f"pretrained={TINY_CHECKPOINT}",
        "--tasks", "unimoe_synthetic",
        "--include_path", str(TASKS_DIR),
        "--batch_size", "16",
        "--log_samples",
        "--output_path", str(out),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=tmp_path, env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=1500
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    (results_json,) = out.rglob("*_results.json")
    results = json.loads(results_json.read_text())

    data = SYNTHETIC_DIR / "data"  # written by the lmms-eval run when it loaded the tasks
    reference = evaluate(
        TINY_CHECKPOINT, data=data, split="test", out=tmp_path / "evaluate", batch_size=16, log=lambda *a: None
    )
    expected = {row["id"]: row["prediction"] for row in reference["predictions"]}

    for task in TASKS:
        name = f"unimoe_synthetic_{task}"
        docs = [json.loads(line) for line in (data / f"{task}.jsonl").read_text().splitlines()]
        (samples_file,) = out.rglob(f"*_samples_{name}.jsonl")
        samples = sorted(
            (json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"]
        )
        assert [s["doc_id"] for s in samples] == list(range(len(docs)))
        predictions = {docs[s["doc_id"]]["id"]: s["filtered_resps"] for s in samples}
        predictions = {key: value[0] if isinstance(value, list) else value for key, value in predictions.items()}
        assert predictions == {doc["id"]: expected[doc["id"]] for doc in docs}, task
        assert results["results"][name]["accuracy,none"] == pytest.approx(reference["per_task"][task]["accuracy"])
    group = results["results"]["unimoe_synthetic"]["accuracy,none"]
    assert group == pytest.approx(reference["mean_task_accuracy"])
    print(f"lmms-eval unimoe_synthetic: mean task accuracy {group:.3f} (training.evaluate: same)", file=sys.stderr)
