# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""The paper's dense-vs-MoE comparison at tiny scale: per-modality accuracy and the best-worst modality spread.

    python -m modeling_unimoe.training.compare                  # -> build/tiny/compare.json + a markdown table

Progressive MoE: the three tiny stages (`training.tiny`; reused from `--work` when they are there). Dense: the same
stage-1 model, then one dense run on the same mixed training data with the stage-2 trainable set (FFN, connectors,
vision tower) plus attention, at stage 2's batch size, for as many examples as stages 2 and 3 took together.
Both are exported as folders and scored by `training.evaluate` on the test split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hub_export.output import OutputFolderError

from .evaluate import MODALITIES, evaluate
from .tiny import RECIPES, export, run, stage_recipes, write_data
from .train import load_recipe, run_stage


def _steps(folder) -> int:
    return int(json.loads((Path(folder) / "train_summary.json").read_text())["steps"])


def dense_recipe(work: Path, steps: int, recipes: Path = RECIPES) -> dict:
    recipe = load_recipe(recipes / "stage2.yaml")
    recipe["model"] = {"init": str(work / "stage1")}
    recipe["data"] = {"path": str(work / "data"), "split": "train"}
    recipe["experts"] = {"dense": ["image", "video", "speech", "sound", "text"]}
    recipe["extra_trainable"] = list(recipe.get("extra_trainable") or []) + ["attention"]
    recipe["output_dir"] = str(work / "dense")
    recipe["training"] = {**recipe["training"], "max_steps": steps}
    return recipe


def compare(work="build/tiny", moe_folder="checkpoints/uni-moe-tiny", out=None, log=print) -> dict:
    work, moe_folder = Path(work), Path(moe_folder)
    stages = stage_recipes(work)
    stage2_dirs = [work / "stage2" / name for name in stages[1]["experts"]]
    have = all((d / "train_summary.json").is_file() for d in [work / "stage1", *stage2_dirs, work / "stage3"])
    if not have or not (moe_folder / "config.json").is_file():
        run(moe_folder, work, log=log)
    write_data(work / "data", log=log)
    batch = [recipe["training"]["per_device_train_batch_size"] for recipe in stages[1:]]
    steps = sum(_steps(d) for d in stage2_dirs) + _steps(work / "stage3") * batch[1] // batch[0]
    log(f"[compare] dense run: {steps} steps of {batch[0]} (the examples of stages 2 and 3 of the MoE)")
    run_stage(dense_recipe(work, steps), log=log)
    dense_folder = export(work / "dense" / "dense", work / "dense-export")

    results = {}
    for name, folder in (("dense", dense_folder), ("moe", moe_folder)):
        report = evaluate(folder, work / "data", "test", out=work / f"eval-{name}", routing=name == "moe", log=log)
        results[name] = {
            "folder": str(folder),
            "per_modality": {m: e["accuracy"] for m, e in report["per_modality"].items()},
            "per_task": {t: e["accuracy"] for t, e in report["per_task"].items()},
            "mean_task_accuracy": report["mean_task_accuracy"],
            "modality_spread": report["modality_spread"],
        }
    results["steps_after_stage1"] = steps
    lines = ["| model | " + " | ".join(MODALITIES) + " | spread (best - worst) |", "| --- |" + " ---: |" * 6]
    for name in ("dense", "moe"):
        row = results[name]
        cells = [f"{100 * row['per_modality'].get(m, float('nan')):.1f}%" for m in MODALITIES]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * row['modality_spread']:.1f} pts |")
    results["table"] = "\n".join(lines)
    out = Path(out) if out else work / "compare.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    log(results["table"])
    log(f"Wrote {out}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="build/tiny")
    parser.add_argument("--moe", default="checkpoints/uni-moe-tiny", help="the progressive MoE folder")
    parser.add_argument("--out", default=None, help="JSON path (default WORK/compare.json)")
    args = parser.parse_args(argv)
    try:
        compare(args.work, args.moe, args.out)
    except OutputFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
