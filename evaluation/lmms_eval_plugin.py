# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""The `lmms_eval.models` entry point: lmms-eval (0.7) loads the manifests of this group when `lmms_eval.models` is
imported, so `--model uni_moe` resolves to `modeling_unimoe.evaluation.lmms_eval_model.UniMoE`. This module stays
light (no torch): lmms-eval imports it on every run, whatever the model."""

MODEL_ID = "uni_moe"
CLASS_PATH = "modeling_unimoe.evaluation.lmms_eval_model.UniMoE"


def manifests():
    """The model manifests of this package (lmms-eval calls this through the entry point)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)]
