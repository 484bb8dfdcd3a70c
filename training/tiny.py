# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE-Tiny: the three progressive stages for the `tiny` preset on CPU, then a Hub folder.

    python -m modeling_unimoe.training.tiny                      # -> build/uni-moe-tiny/
    python -m modeling_unimoe.training.tiny --evaluate           # then the test-split accuracy table
    python -m modeling_unimoe.training.tiny --distribution wide --work build/tiny-wide --out build/uni-moe-tiny-wide
    python -m modeling_unimoe.training.tiny --distribution wide --work build/tiny-wide --out checkpoints/uni-moe-tiny
                                                                 # the checked-in model, replaced

Writes the synthetic data once (seeded) under `build/tiny/data` (`TRAIN_PER_TASK`: the vision, sound and speech
experts get more examples than stages 1 and 3 read), runs recipes/tiny/stage{1,2,3}.yaml (stage outputs
under `build/tiny/`), and exports the merged stage-3 model with its processor and pipeline to `--out` (default
`build/uni-moe-tiny`), as `hub_export.build` writes a folder: an existing `--out` is replaced only when it is an
export of ours (`hub_export.output`), which is checked before training starts. Prints the time of each stage.

The tiny model has no pretrained weights at all: its CLIP, Whisper and BEATs towers and its LLM start random. The tiny
recipes therefore also train the LLM in stage 1 and the speech and sound towers with their experts in stage 2 (on the
wide data the sound tower stays random and frozen: `WIDE_OVERRIDES`), where the paper keeps pretrained parts frozen; the
vision tower stays at its random weights (training it from scratch here made the image features worse, and costs more
than the 15 minutes allow), with half of its patch-embedding channels tied across R, G and B
(`stages.luminance_patch_init`) so that a shape's outline gives the same features in every colour. Frozen towers'
outputs are served from a cache. Audio is cut into 3 s chunks (`audio_chunk_seconds`, 30 s as released) so the audio
towers can be trained on a CPU. Stage 2's experts are independent and run `--workers` at a time (default: one per core),
one thread each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from hub_export.output import OutputFolderError, atomic_output_dir, check_output_dir

from .synthetic import DISTRIBUTIONS, MODALITY, TASKS, write_split
from .train import load_recipe, run_stage


RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"
# training examples per task: per modality, or per task where a task is named (stage 2 trains the vision, speech and
# sound experts on all of them; stages 1 and 3 read fewer: `data.max_per_task` in their recipes)
TRAIN_PER_TASK = {"image": 600, "image_shape": 2400, "image_count": 2400, "video": 1200, "text": 600, "speech": 1200,
                  "sound": 600, "sound_beeps": 2400}  # fmt: skip
# `--distribution wide` (synthetic.WIDE): its wider ranges need more examples than the standard ones (with the standard
# amounts, video direction and tone pitch stayed at chance; twice the shapes, counts, beeps and digits gained 5 points)
WIDE_TRAIN_PER_TASK = {"video": 2400, "sound_pitch": 1200, "image_shape": 4800, "image_count": 4800, "sound_beeps": 4800,
                       "speech": 2400}  # fmt: skip
# On the wide data (benchmarks/RESULTS.md): stage 1 reads 2,400 shapes, counts and videos and trains at lr 3e-4 (at
# 1e-3 it left tones and videos near chance on two seeds of three); the vision expert trains 6 epochs; the sound expert
# keeps its random BEATs tower frozen (served from the cache: from the same stage-1 model it then counts 44% of the
# beeps and names 94% of the tones, against 34% and 52% with the tower trained, in 187 s instead of 394 s)
WIDE_OVERRIDES = (
    "stage1.training.learning_rate=3e-4",
    "stage1.data.max_per_task.image_shape=2400",
    "stage1.data.max_per_task.image_count=2400",
    "stage1.data.max_per_task.video_direction=2400",
    "stage2.experts.vision.training.num_train_epochs=6",
    "stage2.experts.vision.data.max_per_task.video_direction=2400",
    "stage2.experts.sound.data.max_per_task.sound_pitch=1200",
    "stage2.experts.sound.extra_trainable=[]",
)
TEST_PER_TASK = 50
DEFAULT_OUT = "build/uni-moe-tiny"  # the checked-in model, checkpoints/uni-moe-tiny, is replaced only when named


def _write_task(data: Path, task: str, size: int, seed: int, distribution: str) -> list[dict]:
    """One task's training examples under `data/task/`, its records with paths relative to `data`."""
    part = data / task
    write_split(part, "train", size, seed, tasks=[task], distribution=distribution)
    records = json.loads((part / "train.json").read_text())
    for record in records:
        for key in ("image", "video", "voice"):
            if key in record:
                record[key] = f"{task}/{record[key]}"
    return records


def write_data(data: Path, seed: int = 0, train_per_task=None, test_per_task: int = TEST_PER_TASK, workers: int = 1,
               log=print, distribution: str = "standard"):  # fmt: skip
    """build/tiny/data/{train,test}.json (+ media) of `distribution` (named in `data/distribution.txt`), written once:
    each task in its own folder (tasks have their own sizes), `workers` tasks at a time, merged into one JSON with
    paths relative to `data`. A folder written for another distribution is refused."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"Unknown distribution {distribution!r}; expected one of {', '.join(DISTRIBUTIONS)}.")
    train_per_task = {**TRAIN_PER_TASK, **(train_per_task or {})}
    data = Path(data)
    marker = data / "distribution.txt"
    if (data / "train.json").is_file() or (data / "test.json").is_file():
        found = marker.read_text().strip() if marker.is_file() else "standard"
        if found != distribution:
            raise ValueError(
                f"{data} holds data of the {found!r} distribution, but {distribution!r} was asked for. Pass another "
                f"--work folder, or delete {data} to write it again."
            )
    data.mkdir(parents=True, exist_ok=True)
    marker.write_text(distribution + "\n")
    if not (data / "train.json").is_file():
        start = time.time()
        sizes = {task: train_per_task.get(task, train_per_task[MODALITY[task]]) for task in TASKS}
        order = sorted(TASKS, key=lambda task: -sizes[task])  # the largest first
        # forked, not spawned: a fresh worker would spend ~10 s importing torch; nothing has run threads here yet
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {task: pool.submit(_write_task, data, task, sizes[task], seed, distribution) for task in order}
            parts = {task: future.result() for task, future in futures.items()}
        records = [record for task in TASKS for record in parts[task]]
        (data / "train.json").write_text(json.dumps(records, indent=1) + "\n")
        log(f"[data] train: {len(records)} records in {time.time() - start:.1f} s")
    if not (data / "test.json").is_file():
        start = time.time()
        write_split(data, "test", test_per_task, seed, distribution=distribution)
        log(f"[data] test: {test_per_task} per task in {time.time() - start:.1f} s")
    return data


def stage_recipes(work: Path, recipes: Path = RECIPES, overrides=()) -> list[dict]:
    """The three tiny recipes, with paths moved under `work` and `stageN.key=value` overrides applied."""
    data = str(work / "data")
    out = []
    for stage in (1, 2, 3):
        mine = [o.split(".", 1)[1] for o in overrides if o.startswith(f"stage{stage}.")]
        recipe = load_recipe(recipes / f"stage{stage}.yaml", mine)
        recipe["data"] = {**recipe.get("data", {}), "path": data}
        recipe["data"].pop("generate", None)
        recipe["output_dir"] = str(work / f"stage{stage}")
        if "encode_cache" in recipe:
            recipe["encode_cache"] = str(work / "encoded")
        if stage == 2:
            recipe["model"] = {"init": str(work / "stage1")}
        if stage == 3:
            experts = recipe["moe"]["sources"]
            recipe["moe"]["base"] = str(work / "stage1")
            recipe["moe"]["sources"] = {name: str(work / "stage2" / name) for name in experts}
        out.append(recipe)
    return out


def run_experts_in_parallel(recipe: dict, workers: int, log=print) -> None:
    """Stage 2's experts are independent dense models: train them in `workers` processes at once, one CPU thread each
    (a tiny model's ops are too small to gain from more threads), in the recipe's order (list the longest first).
    Each writes its log to `output_dir/NAME.log`."""
    out = Path(recipe["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    recipe_file = out / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    pending, running = list(recipe["experts"]), {}
    while pending or running:
        while pending and len(running) < workers:
            name = pending.pop(0)
            log_file = open(out / f"{name}.log", "w")  # noqa: SIM115 (closed when the process ends)
            command = [sys.executable, "-m", "modeling_unimoe.training.train", str(recipe_file), f"only={name}"]
            running[name] = (subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env), log_file)
            log(f"[stage 2] {name}: started (log {out / f'{name}.log'})")
        time.sleep(1)
        for name, (process, log_file) in list(running.items()):
            if process.poll() is None:
                continue
            log_file.close()
            del running[name]
            if process.returncode != 0:
                for other, _ in running.values():
                    other.kill()
                tail = (out / f"{name}.log").read_text()[-3000:]
                raise RuntimeError(f"Stage 2 expert {name!r} failed (exit {process.returncode}):\n{tail}")
            summary = json.loads((out / name / "train_summary.json").read_text())
            log(f"[stage 2] {name}: {summary['steps']} steps, loss {summary['loss']:.4f}, {summary['seconds']} s")


def export(stage3: Path, out: Path) -> Path:
    """Copy the stage-3 folder (without its checkpoints) to `out`, atomically; an existing `out` is replaced only
    when it is an export of ours (`hub_export.output.OutputFolderError` otherwise)."""
    with atomic_output_dir(out, overwrite=True, tool="modeling_unimoe.training.tiny") as tmp:
        for path in Path(stage3).iterdir():
            if path.is_file():
                shutil.copy2(path, tmp / path.name)
    return out


def distribution_settings(distribution: str, overrides=()) -> tuple[dict | None, tuple]:
    """The training amounts per task (`write_data`'s `train_per_task`) and the recipe overrides of a distribution:
    `wide` adds `WIDE_TRAIN_PER_TASK` and `WIDE_OVERRIDES` (before `overrides`, so those win)."""
    if distribution == "wide":
        return WIDE_TRAIN_PER_TASK, (*WIDE_OVERRIDES, *overrides)
    return None, tuple(overrides)


def run(out=DEFAULT_OUT, work="build/tiny", seed=0, overrides=(), evaluate=False, workers=None, log=print,
        distribution="standard") -> dict:  # fmt: skip
    work, out = Path(work), Path(out)
    check_output_dir(out, overwrite=True)  # refuse a folder that is not ours now, not after the training
    workers = workers or os.cpu_count() or 1
    train_per_task, overrides = distribution_settings(distribution, overrides)
    times = {}
    start = time.time()
    write_data(work / "data", seed, train_per_task, workers=workers, log=log, distribution=distribution)
    times["data"] = time.time() - start
    for recipe in stage_recipes(work, overrides=overrides):
        begin = time.time()
        if recipe["stage"] in (2, 3):
            shutil.rmtree(recipe["output_dir"], ignore_errors=True)  # fresh checkpoints: no stale resume
        if recipe["stage"] == 2 and workers > 1:
            run_experts_in_parallel(recipe, workers, log=log)
        else:
            run_stage(recipe, log=log)
        name = f"stage{recipe['stage']}"
        times[name] = time.time() - begin
        log(f"[tiny] {name} took {times[name]:.1f} s")
    export(work / "stage3", out)
    times["total"] = time.time() - start
    log("[tiny] " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; exported {out}")
    (work / "times.json").write_text(json.dumps(times, indent=1) + "\n")
    result = {"times": times, "folder": str(out)}
    if evaluate:
        from .evaluate import evaluate as run_eval

        result["eval"] = run_eval(out, work / "data", "test", out=work / "eval", routing=True, log=log)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"the exported Hub folder (default {DEFAULT_OUT}; an earlier export there is replaced; "
        "--out checkpoints/uni-moe-tiny replaces the checked-in model)",
    )
    parser.add_argument("--work", default="build/tiny", help="data and stage outputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluate", action="store_true", help="evaluate the exported folder on the test split")
    parser.add_argument("--workers", type=int, default=None, help="stage-2 experts trained at once (default: cores)")
    parser.add_argument(
        "--distribution",
        default="standard",
        choices=DISTRIBUTIONS,
        help="what the training and test media are drawn from (synthetic.STANDARD, or the wider synthetic.WIDE, whose "
        "data folder takes about 3.1 GB, and the encodings the stages keep of it, WORK/encoded, about 2.8 GB)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="stageN.dotted.key=value, e.g. stage1.training.num_train_epochs=3"
    )
    args = parser.parse_args(argv)
    try:
        run(
            args.out, args.work, args.seed, args.overrides, args.evaluate, args.workers, distribution=args.distribution
        )
    except OutputFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
