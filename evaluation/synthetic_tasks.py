# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""The functions of the offline lmms-eval tasks `unimoe_synthetic_<task>` (tasks/unimoe_synthetic/*.yaml), and the
local dataset they read.

The dataset is the synthetic suite's test split (`training.synthetic.write_split(DATA_DIR, "test", N_PER_TASK,
SEED)`: the examples `training.evaluate` scores by default), written into tasks/unimoe_synthetic/data/ the first
time the tasks are loaded (a few seconds; nothing is downloaded), plus one JSON-lines file per task that the YAMLs
name as their `data_files`: id, task, modality, media (a path relative to DATA_DIR, or null), audio_kind, question,
answer. `python -m modeling_unimoe.evaluation.synthetic_tasks` writes it ahead of time.

A task's score is `accuracy`: the exact match of the normalised answer (`training.synthetic.is_correct`), the
metric of `training.evaluate`.
"""

import json
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from ..training.synthetic import MODALITY, TASKS, is_correct, write_split
from . import TASKS_DIR


DATA_DIR = TASKS_DIR / "unimoe_synthetic" / "data"
SPLIT = "test"
N_PER_TASK = 50  # training.evaluate's default
SEED = 0
_DONE = ".complete"  # written last: a folder without it is (re)written


def _task_records(split_json: Path) -> dict[str, list[dict]]:
    records: dict[str, list[dict]] = {task: [] for task in TASKS}
    for record in json.loads(split_json.read_text()):
        media = record.get("image") or record.get("video") or record.get("voice")
        question = record["conversations"][0]["value"]
        for placeholder in ("<image>\n", "<video>\n", "<audio>\n"):
            question = question.replace(placeholder, "")
        records[record["task"]].append(
            {
                "id": record["id"],
                "task": record["task"],
                "modality": MODALITY[record["task"]],
                "media": media,
                "audio_kind": record.get("audio_kind"),
                "question": question.strip(),
                "answer": record["conversations"][1]["value"],
            }
        )
    return records


def ensure_data(data_dir: Path = DATA_DIR) -> Path:
    """Write the local dataset into `data_dir` unless it is there already; returns `data_dir`."""
    data_dir = Path(data_dir)
    if (data_dir / _DONE).is_file():
        return data_dir
    if data_dir.exists():  # this function writes the folder whole (marker included) or not at all
        raise RuntimeError(
            f"{data_dir} exists but was not written by the unimoe_synthetic tasks (it has no {_DONE}); it is left as "
            "it is. Move it away, and the tasks write their dataset there on the next run."
        )
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".data-", dir=data_dir.parent))
    except OSError as error:
        raise RuntimeError(
            f"The unimoe_synthetic tasks keep their local dataset in {data_dir}, which cannot be written ({error}). "
            "Use an editable install (pip install -e .), or copy the tasks folder somewhere writable and pass that "
            "folder to lmms-eval as --include_path."
        ) from None
    try:
        split_json = write_split(staging, SPLIT, N_PER_TASK, SEED)
        for task, records in _task_records(split_json).items():
            lines = "".join(json.dumps(record) + "\n" for record in records)
            (staging / f"{task}.jsonl").write_text(lines)
        (staging / _DONE).write_text(json.dumps({"split": SPLIT, "n_per_task": N_PER_TASK, "seed": SEED}) + "\n")
        staging.rename(data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return data_dir


def doc_to_visual(doc) -> list:
    """The example's media as lmms-eval models take them: a PIL image, a video path, or an audio dict
    (`{"array", "sampling_rate", "audio_kind"}`, the file's samples as float32 at its own rate)."""
    if doc["media"] is None:
        return []
    path = DATA_DIR / doc["media"]
    if doc["modality"] == "image":
        with Image.open(path) as image:
            return [image.convert("RGB")]
    if doc["modality"] == "video":
        return [str(path)]
    import soundfile

    wave, rate = soundfile.read(path, dtype="float32", always_2d=False)
    return [{"path": str(path), "array": wave, "sampling_rate": rate, "audio_kind": doc["audio_kind"]}]


def doc_to_text(doc, lmms_eval_specific_kwargs=None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def process_results(doc, results) -> dict:
    return {"accuracy": float(is_correct(results[0], doc["answer"]))}


ensure_data()  # lmms-eval imports this module when it loads the tasks, before it reads their data_files


if __name__ == "__main__":
    print(f"unimoe_synthetic data: {ensure_data()}")
