# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE in lmms-eval: the `uni_moe` model and the offline `unimoe_synthetic` tasks.

- `lmms_eval_model.UniMoE`: the lmms-eval model (`--model uni_moe`), registered through the `lmms_eval.models` entry
  point of pyproject.toml (`lmms_eval_plugin.manifests`).
- `tasks/unimoe_synthetic/`: lmms-eval task YAMLs over the synthetic suite's test split (`--include_path`, see
  `TASKS_DIR`), written locally by `training.synthetic` the first time the tasks are loaded.
- `venv`: builds build/venvs/lmms-eval (lmms-eval cannot share the main venv).

    python -m modeling_unimoe.evaluation.venv
    build/venvs/lmms-eval/bin/lmms-eval --model uni_moe --model_args pretrained=checkpoints/uni-moe-tiny \\
        --tasks unimoe_synthetic --include_path evaluation/tasks --batch_size 16 --output_path build/lmms-eval
"""

from pathlib import Path


TASKS_DIR = Path(__file__).resolve().parent / "tasks"
