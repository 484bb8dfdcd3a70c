# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""The paper's dense-vs-MoE comparison at tiny scale: per-modality accuracy and the best-worst modality spread.

    python -m modeling_unimoe.training.compare                  # -> build/tiny/compare.json + markdown tables
    python -m modeling_unimoe.training.compare --distribution wide --work build/tiny-wide --moe build/uni-moe-tiny-wide

Progressive MoE: the three tiny stages (`training.tiny`; reused from `--work` when they are there). Dense: the same
stage-1 model, then one dense run on the same mixed training data with the stage-2 trainable set (FFN, connectors, the
towers the experts train) plus attention, at stage 2's batch size, for as many examples as stages 2 and 3 took
together. Both are exported as folders and scored by `training.evaluate` on the test and the shifted split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hub_export.output import OutputFolderError

from .evaluate import MODALITIES, evaluate
from .stages import trained_parts
from .synthetic import DISTRIBUTIONS
from .tiny import distribution_settings, export, run, stage_recipes, write_data
from .train import expert_recipe, run_stage


def _steps(folder) -> int:
    return int(json.loads((Path(folder) / "train_summary.json").read_text())["steps"])


def trained_towers(stage2: dict) -> list[str]:
    """`towers:PART` for each tower that one of the stage-2 recipe's experts trains."""
    parts = set()
    for name, spec in stage2["experts"].items():
        _, modalities, extra = expert_recipe(stage2, name, spec, stage2.get("extra_trainable") or [])
        parts |= trained_parts(extra, modalities)
    return [f"towers:{part}" for part in sorted(parts)]


def dense_recipe(work: Path, steps: int, stage2: dict) -> dict:
    """One dense run from the stage-1 model: `stage2`'s settings, trainable set (FFN, connectors) and trained towers,
    plus attention, on all of the training data for `steps` steps."""
    recipe = {key: value for key, value in stage2.items() if key not in ("experts", "only")}
    recipe["model"] = {"init": str(work / "stage1")}
    recipe["data"] = {"path": str(work / "data"), "split": "train"}
    recipe["experts"] = {"dense": ["image", "video", "speech", "sound", "text"]}
    recipe["extra_trainable"] = [*trained_towers(stage2), "attention"]
    recipe["output_dir"] = str(work / "dense")
    recipe["training"] = {**recipe["training"], "max_steps": steps}
    return recipe


def compare(work="build/tiny", moe_folder="checkpoints/uni-moe-tiny", out=None, log=print,
            distribution="standard") -> dict:  # fmt: skip
    work, moe_folder = Path(work), Path(moe_folder)
    train_per_task, overrides = distribution_settings(distribution)
    stages = stage_recipes(work, overrides=overrides)
    stage2_dirs = [work / "stage2" / name for name in stages[1]["experts"]]
    have = all((d / "train_summary.json").is_file() for d in [work / "stage1", *stage2_dirs, work / "stage3"])
    if not have or not (moe_folder / "config.json").is_file():
        run(moe_folder, work, log=log, distribution=distribution)
    write_data(work / "data", train_per_task=train_per_task, log=log, distribution=distribution)
    batch = [recipe["training"]["per_device_train_batch_size"] for recipe in stages[1:]]
    steps = sum(_steps(d) for d in stage2_dirs) + _steps(work / "stage3") * batch[1] // batch[0]
    log(f"[compare] dense run: {steps} steps of {batch[0]} (the examples of stages 2 and 3 of the MoE)")
    run_stage(dense_recipe(work, steps, stages[1]), log=log)
    dense_folder = export(work / "dense" / "dense", work / "dense-export")

    results = {"steps_after_stage1": steps}
    header = "| model | " + " | ".join(MODALITIES) + " | mean (per task) | spread (best - worst) |"
    tables = []
    for split in ("test", "shifted"):
        lines = [f"{split} split:", "", header, "| --- |" + " ---: |" * (len(MODALITIES) + 2)]
        for name, folder in (("dense", dense_folder), ("moe", moe_folder)):
            report = evaluate(folder, work / "data", split, out=work / f"eval-{name}-{split}",
                              routing=name == "moe" and split == "test", log=log)  # fmt: skip
            row = results.setdefault(split, {})[name] = {
                "folder": str(folder),
                "per_modality": {m: e["accuracy"] for m, e in report["per_modality"].items()},
                "per_task": {t: e["accuracy"] for t, e in report["per_task"].items()},
                "mean_task_accuracy": report["mean_task_accuracy"],
                "modality_spread": report["modality_spread"],
            }
            cells = [f"{100 * row['per_modality'].get(m, float('nan')):.1f}%" for m in MODALITIES]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * row['mean_task_accuracy']:.1f}% | "
                         f"{100 * row['modality_spread']:.1f} pts |")  # fmt: skip
        tables.append("\n".join(lines))
    results["table"] = "\n\n".join(tables)
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
    parser.add_argument("--distribution", default="standard", choices=DISTRIBUTIONS,
                        help="the training data's distribution (as training.tiny's)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        compare(args.work, args.moe, args.out, distribution=args.distribution)
    except OutputFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
