# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""What each kind of shift costs an exported model: the shifted split taken apart, one parameter group at a time.

    python -m modeling_unimoe.training.shift_study checkpoints/uni-moe-tiny --tasks sound_beeps image_shape
    python -m modeling_unimoe.training.shift_study checkpoints/uni-moe-tiny --n-per-task 100 --out build/shift-study
    python -m modeling_unimoe.training.shift_study checkpoints/uni-moe-tiny --tasks sound_pitch --pairs

For each `synthetic.SHIFT_GROUPS` group that changes one of `--tasks`, writes a shifted split whose media draw that
group's parameters from `SHIFTED` and every other parameter from `WIDE` (`synthetic.shifted_ranges`), under
`OUT/data/<group>/`, and scores the model on it. Two rows frame them: `none` (every parameter from WIDE, on the shifted
split's examples) and `all` (the shifted split itself). All rows use the same seeds, so a row's difference from `none`
is what that shift alone costs. `--pairs` adds a row for each pair of groups that change the same task (`a+b`, scored
on the tasks both change): shifts that cost little alone may cost much together. Writes `OUT/shift_study.json` (every
row's `accuracy_report`) and prints a markdown table of accuracies with each row's change from `none`. Each row's split
is written anew (the same files each time).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from tqdm.auto import tqdm

from .evaluate import accuracy_report, load_folder, predict
from .synthetic import SHIFT_GROUPS, TASKS, load_split, write_split


SHIFTABLE_TASKS = tuple(task for task in TASKS if any(task in changed for _, changed in SHIFT_GROUPS.values()))


def study_rows(tasks, pairs: bool = False) -> dict:
    """Row name -> (the `shift` of its split, the tasks it scores): `none` and `all` score every one of `tasks`, each
    group between them the ones it changes; with `pairs`, also each pair of groups (`a+b`) the ones both change."""
    unknown = [task for task in tasks if task not in SHIFTABLE_TASKS]
    if unknown or not tasks:
        raise ValueError(
            f"A shift study scores tasks with media; got {list(tasks)!r}, of which {unknown!r} have none or are "
            f"unknown. Choose among {', '.join(SHIFTABLE_TASKS)}."
        )
    tasks = tuple(task for task in SHIFTABLE_TASKS if task in tasks)
    rows = {"none": ((), tasks)}
    for group, (_, changed) in SHIFT_GROUPS.items():
        scored = tuple(task for task in tasks if task in changed)
        if scored:
            rows[group] = ((group,), scored)
    if pairs:
        for first, second in itertools.combinations(list(rows)[1:], 2):
            scored = tuple(task for task in rows[first][1] if task in rows[second][1])
            if scored:
                rows[f"{first}+{second}"] = ((first, second), scored)
    rows["all"] = (None, tasks)
    return rows


def study_table(rows: dict, tasks) -> str:
    """Markdown: a row per study row, a column per task: accuracy in %, then its change from `none` in points (empty
    where the row does not change the task)."""
    lines = ["| shifted | " + " | ".join(tasks) + " |", "| --- |" + " ---: |" * len(tasks)]
    base = rows["none"]["per_task"]
    for name, report in rows.items():
        cells = []
        for task in tasks:
            if task not in report["per_task"]:
                cells.append("")
                continue
            accuracy = 100 * report["per_task"][task]["accuracy"]
            change = accuracy - 100 * base[task]["accuracy"]
            cells.append(f"{accuracy:.0f}" if name == "none" else f"{accuracy:.0f} ({change:+.0f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shift_study(folder, tasks=SHIFTABLE_TASKS, n_per_task=50, seed=0, out="build/shift-study", batch_size=16,
                log=print, pairs=False) -> dict:  # fmt: skip
    """The study of `folder` (see the module's docstring); returns what it writes to `OUT/shift_study.json`."""
    plan = study_rows(tasks, pairs)
    out = Path(out)
    model, processor = load_folder(folder)
    rows = {}
    for name, (shift, scored) in tqdm(plan.items(), desc="shift study", unit="split"):
        write_split(out / "data" / name, "shifted", n_per_task, seed, tasks=scored, shift=shift)
        records = load_split(out / "data" / name, "shifted")
        predictions = predict(model, processor, records, batch_size=batch_size)
        rows[name] = {"shift": shift, **accuracy_report(records, predictions)}
    out.mkdir(parents=True, exist_ok=True)
    report = {"folder": str(folder), "n_per_task": n_per_task, "seed": seed, "rows": rows}
    (out / "shift_study.json").write_text(json.dumps(report, indent=1) + "\n")
    log(study_table(rows, plan["none"][1]))
    log(f"Wrote {out / 'shift_study.json'}")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="an exported Hub folder (config.json, weights, processor files)")
    parser.add_argument("--tasks", nargs="+", choices=SHIFTABLE_TASKS, default=list(SHIFTABLE_TASKS),
                        help="the tasks to score (those with media)")  # fmt: skip
    parser.add_argument("--n-per-task", type=int, default=50, help="examples per task in each split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the examples (the same for every row)")
    parser.add_argument("--out", default="build/shift-study", help="output folder (splits under OUT/data/)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pairs", action="store_true", help="also each pair of groups that change the same task")
    args = parser.parse_args(argv)
    shift_study(args.folder, args.tasks, args.n_per_task, args.seed, args.out, args.batch_size, pairs=args.pairs)


if __name__ == "__main__":
    main()
