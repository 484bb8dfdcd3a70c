# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Run one progressive-training stage from a short YAML recipe, with transformers' Trainer.

    python -m modeling_unimoe.training.train recipes/tiny/stage1.yaml
    python -m modeling_unimoe.training.train recipes/tiny/stage3.yaml training.max_steps=20 output_dir=build/x
    accelerate launch --multi_gpu --num_processes 2 -m modeling_unimoe.training.train recipes/tiny/stage3.yaml  # 2 CPU processes (gloo) when no GPU
    accelerate launch --config_file recipes/accelerate/fsdp2.yaml --num_processes 8 -m modeling_unimoe.training.train recipes/uni-moe/stage3.yaml

A recipe (paths relative to the working directory) holds:

    stage: 1 | 2 | 3
    model: {init: preset:tiny:dense | FOLDER,          # stages 1-2; stage 3 takes `moe` instead
            config: {audio_chunk_seconds: 3},           # from_preset overrides (a preset start only)
            luminance_patch_channels: 32}               # stages.luminance_patch_init (a preset start only)
    data: {path: build/tiny/data, split: train, modalities: [image, ...], generate: {n_per_task: 200, seed: 0},
           max_per_task: 600}                           # or {task: N}: the first N records of each (listed) task
    extra_trainable: [towers]                           # on top of the stage's own (tiny towers are untrained)
    experts: {vision: [image, video], speech: {modalities: [speech], training: {num_train_epochs: 8},
              data: {max_per_task: 300}, extra_trainable: [towers]}}   # stage 2: one dense model per entry,
                                                    # trained on its data (`training` / `data` keys override)
    moe: {base: FOLDER, sources: {name: FOLDER}, experts: [name, ...], moe_layers: all, top_k: 2,
          router_aux_loss_coef: 0.01}                   # stage 3
    lora: {r: 8, alpha: 16, dropout: 0.05, targets: [q_proj, ...], modules_to_save: []}   # stage 3
    group_by_modality: true                             # batches of one modality
    cache_frozen_towers: true                           # compute frozen towers once per example
    encode_workers: 2                                   # encode the records up front in 2 processes (0: lazily)
    encode_cache: build/tiny/encoded                    # keep the encodings on disk for other stages and processes
    max_length: 2048
    output_dir: build/tiny/stage1
    training: {...}                                     # TrainingArguments fields

Overrides are `dotted.key=value` (values parsed as YAML). Each stage output is a complete Hub folder (weights,
config, processor); checkpoints go to `output_dir/checkpoint-*` and `resume_from_checkpoint=true` (or a path)
continues exactly where a run stopped. Under FSDP or DeepSpeed ZeRO-3 (the accelerate config files in
recipes/accelerate/) checkpoints are sharded, and the stage output is gathered from every process into the same
normal Hub folder.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import Trainer, TrainingArguments

from modeling_unimoe import UniMoEForCausalLM

from .collator import EncodedDataset, UniMoECollator
from .stages import apply_lora, build_moe_model, freeze_for_stage, load_model
from .tower_cache import cached_frozen_towers


# ------------------------------------------------------------------------------------------------------ recipe files


def _number(value):
    """YAML 1.1 reads `3e-3` as a string: take it as the float it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_recipe(path, overrides=()) -> dict:
    """The recipe at `path` with `dotted.key=value` overrides applied."""
    recipe = yaml.safe_load(Path(path).read_text()) or {}
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"Override {override!r} is not of the form dotted.key=value.")
        key, value = override.split("=", 1)
        target = recipe
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = _number(yaml.safe_load(value))
    if recipe.get("stage") not in (1, 2, 3):
        raise ValueError(f"Recipe {path} must set `stage: 1`, `2` or `3`; got {recipe.get('stage')!r}.")
    return recipe


# ---------------------------------------------------------------------------------------------- batching by modality


class ModalityGroupedSampler(torch.utils.data.Sampler):
    """Indices in runs of `batch_size` examples of one modality (modality-level data parallelism, the reference's
    `group_by_modality_length`): each modality's indices are shuffled and cut into batches (the last one topped up
    from the same modality), then the batches are shuffled. Deterministic in (seed, epoch)."""

    def __init__(self, modalities: list[str], batch_size: int, seed: int = 0):
        self.modalities = list(modalities)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        groups: dict[str, int] = {}
        for modality in self.modalities:
            groups[modality] = groups.get(modality, 0) + 1
        self._length = sum(math.ceil(n / batch_size) * batch_size for n in groups.values())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        groups: dict[str, list[int]] = {}
        for index, modality in enumerate(self.modalities):
            groups.setdefault(modality, []).append(index)
        batches = []
        for modality in sorted(groups):
            indices = groups[modality]
            order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
            while len(order) % self.batch_size:
                order.append(order[int(torch.randint(len(indices), (1,), generator=generator))])
            batches += [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in torch.randperm(len(batches), generator=generator).tolist():
            yield from batches[batch]


class UniMoETrainer(Trainer):
    """Trainer with optional modality-grouped batches."""

    def __init__(self, *args, group_by_modality: bool = False, **kwargs):
        self.group_by_modality = group_by_modality
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.group_by_modality and hasattr(dataset, "modalities"):
            return ModalityGroupedSampler(
                dataset.modalities, self.args.per_device_train_batch_size * max(1, self.args.world_size),
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            )  # fmt: skip
        return super()._get_train_sampler(train_dataset)


# --------------------------------------------------------------------------------------------------------- the data


def load_records(data: dict, modalities=None):
    """The recipe's training records (a `datasets.Dataset`), written first with `write_split` if `generate` is set
    and the split is missing, limited to `modalities` and to the first `max_per_task` records of each task."""
    from .collator import record_modality
    from .synthetic import load_split, write_split

    path = Path(data.get("path", "build/tiny/data"))
    split = data.get("split", "train")
    if data.get("generate") and not (path / f"{split}.json").is_file():
        generate = dict(data["generate"])
        write_split(path, split, int(generate.pop("n_per_task")), int(generate.pop("seed", 0)), **generate)
    dataset = load_split(path, split)
    all_tasks = set(dataset["task"])  # before the modality filter: one recipe's limits serve every stage-2 expert
    modalities = modalities if modalities is not None else data.get("modalities")
    if modalities is not None:
        wanted = set([modalities] if isinstance(modalities, str) else modalities)
        keep = [i for i, row in enumerate(dataset) if record_modality(row) in wanted]
        dataset = dataset.select(keep)
    limit = data.get("max_per_task")
    if limit is not None:
        tasks = dataset["task"]  # None for records without a task: they count as one task
        limits = limit if isinstance(limit, dict) else dict.fromkeys(tasks, limit)
        if not all(isinstance(n, int) and n >= 1 for n in limits.values()):
            raise ValueError(
                f"`data.max_per_task` must be a positive int or {{task: positive int}}; got {limit!r}. Example: "
                "`max_per_task: {sound_beeps: 600}`, or drop it to keep every record."
            )
        unknown = set(limits) - all_tasks
        if unknown:
            raise ValueError(
                f"`data.max_per_task` names tasks {sorted(unknown)} that {path}/{split}.json does not have; its tasks "
                f"are {sorted(t for t in all_tasks if t is not None)}. Fix the task names."
            )
        seen, keep = {}, []
        for i, task in enumerate(tasks):
            seen[task] = seen.get(task, 0) + 1
            if seen[task] <= limits.get(task, seen[task]):
                keep.append(i)
        dataset = dataset.select(keep)
    if len(dataset) == 0:
        raise ValueError(f"No training records in {path}/{split}.json for modalities {modalities}.")
    return dataset


def _processor_for(model, source):
    """The processor saved with `source`, or the tiny one for a `preset:tiny` start."""
    from modeling_unimoe.processing.export import build_processor, build_tiny_processor_tokenizer

    if isinstance(source, str) and Path(source).is_dir() and (Path(source) / "processor_config.json").is_file():
        from modeling_unimoe import UniMoEProcessor

        return UniMoEProcessor.from_pretrained(source)
    return build_processor(model.config, build_tiny_processor_tokenizer(model.config))


def gathered_model(trainer, model, merge_lora: bool = False):
    """The trained model as one plain module on the first process (None on the others), LoRA merged if
    `merge_lora`. Under FSDP or DeepSpeed ZeRO-3 each process holds a shard of every parameter: all processes must
    call this, their shards are gathered into a full state dict on the first one, which loads it into a fresh copy of
    the model built on the meta device (so the gathered weights are the only full copy in memory)."""
    from accelerate.utils import DistributedType

    accelerator = trainer.accelerator
    zero3 = accelerator.distributed_type == DistributedType.DEEPSPEED and (
        accelerator.state.deepspeed_plugin.zero_stage == 3
    )
    if accelerator.distributed_type != DistributedType.FSDP and not zero3:
        if not trainer.is_world_process_zero():
            return None
        return copy.deepcopy(model).merge_and_unload() if merge_lora else model
    state = accelerator.get_state_dict(trainer.model)  # a collective: every process takes part
    if not trainer.is_world_process_zero():
        return None
    from accelerate import init_empty_weights

    unwrapped = accelerator.unwrap_model(trainer.model)
    is_peft = hasattr(unwrapped, "peft_config")
    config = copy.deepcopy((unwrapped.get_base_model() if is_peft else unwrapped).config)
    with init_empty_weights():  # parameters on the meta device; buffers (RoPE frequencies) are computed as usual
        plain = UniMoEForCausalLM(config)
    if is_peft:
        from peft import get_peft_model

        plain = get_peft_model(plain, copy.deepcopy(unwrapped.peft_config["default"]))
    plain.load_state_dict({name: value.detach().cpu() for name, value in state.items()}, strict=True, assign=True)
    if is_peft and merge_lora:
        plain = plain.merge_and_unload()
    plain.tie_weights()
    return plain


def save_stage_output(model, processor, out_dir) -> Path:
    """A complete Hub folder: weights + config (+ modeling files), processor files and the custom pipeline."""
    from modeling_unimoe.processing.export import add_custom_pipeline, save_processor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    save_processor(model.config, processor.tokenizer, out_dir)
    add_custom_pipeline(out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------------------- training


def _training_args(recipe: dict, output_dir) -> TrainingArguments:
    settings = {
        "output_dir": str(output_dir),
        "remove_unused_columns": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 10,
        "dataloader_num_workers": 0,
        "use_cpu": not torch.cuda.is_available(),
    }
    settings.update(recipe.get("training") or {})
    settings["output_dir"] = str(output_dir)
    settings["remove_unused_columns"] = False
    return TrainingArguments(**settings)


def _train(model, processor, recipe, output_dir, modalities=None, log=print):
    args = _training_args(recipe, output_dir)
    collator = UniMoECollator(processor, max_length=recipe.get("max_length"))
    with args.main_process_first(desc="training data"):
        records = load_records(recipe.get("data") or {}, modalities)
    workers = recipe.get("encode_workers", 0)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"`encode_workers` must be an integer >= 0 (0: encode lazily), got {workers!r}.")
    dataset = EncodedDataset(records, collator, eager=workers > 0, workers=workers, store=recipe.get("encode_cache"))
    trainer = UniMoETrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        group_by_modality=bool(recipe.get("group_by_modality", False)),
    )
    resume = recipe.get("resume_from_checkpoint")
    if resume is True and not any(Path(output_dir).glob("checkpoint-*")):
        resume = None  # nothing to resume yet: start
    start = time.time()
    with cached_frozen_towers(model, enabled=bool(recipe.get("cache_frozen_towers", False))) as cached:
        if cached:
            log(f"[stage {recipe['stage']}] serving frozen {', '.join(cached)} outputs from a cache")
        result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - start
    log(f"[stage {recipe['stage']}] {output_dir}: {len(dataset)} records, {result.global_step} steps, "
        f"loss {result.training_loss:.4f}, {seconds:.1f} s")  # fmt: skip
    trainer.summary = {"records": len(dataset), "steps": result.global_step, "loss": result.training_loss,
                       "seconds": round(seconds, 1)}  # fmt: skip
    return trainer


def _write_summary(trainer, folder):
    import json

    (Path(folder) / "train_summary.json").write_text(json.dumps(trainer.summary, indent=1) + "\n")


EXPERT_KEYS = ("modalities", "training", "data", "extra_trainable")


def expert_recipe(recipe: dict, name, spec, extra: list) -> tuple[dict, list | None, list]:
    """A stage-2 expert's (recipe, modalities, extra_trainable). `spec` is its modalities, or a dict of `EXPERT_KEYS`
    whose `training` and `data` entries override the recipe's key by key."""
    if not isinstance(spec, dict):
        return recipe, spec, extra
    unknown = sorted(set(spec) - set(EXPERT_KEYS))
    if unknown:
        raise ValueError(
            f"Stage-2 expert {name!r} has unknown keys {unknown}; allowed: {list(EXPERT_KEYS)}. "
            f"Example: {{modalities: [image], training: {{num_train_epochs: 5}}, data: {{max_per_task: 300}}}}."
        )
    merged = {key: {**(recipe.get(key) or {}), **(spec.get(key) or {})} for key in ("training", "data")}
    return {**recipe, **merged}, spec.get("modalities"), spec.get("extra_trainable", extra) or []


def run_stage(recipe: dict, log=print) -> list[Path]:
    """Run the recipe's stage; returns the folders it wrote."""
    stage, out = recipe["stage"], Path(recipe.get("output_dir", f"build/stage{recipe['stage']}"))
    extra = recipe.get("extra_trainable") or []
    seed = int((recipe.get("training") or {}).get("seed", 42))
    torch.manual_seed(seed)
    written = []
    if stage in (1, 2):
        init = (recipe.get("model") or {}).get("init", "preset:tiny:dense")
        preset_overrides = (recipe.get("model") or {}).get("config")
        luminance = (recipe.get("model") or {}).get("luminance_patch_channels", 0)
        runs = {None: None} if stage == 1 else dict(recipe.get("experts") or {})
        if not runs:
            raise ValueError("A stage-2 recipe needs `experts: {name: [modalities]}` (one dense FFN per entry).")
        only = recipe.get("only")
        for name, spec in runs.items():
            if only is not None and name not in ([only] if isinstance(only, str) else only):
                continue
            run_recipe, modalities, run_extra = expert_recipe(recipe, name, spec, extra)
            torch.manual_seed(seed)
            model = load_model(init, preset_overrides=preset_overrides, luminance_patch_channels=luminance)
            if model.config.text_config.moe_layer_indices:
                raise ValueError(f"Stages 1 and 2 train a dense model; {init} has MoE layers.")
            processor = _processor_for(model, init)
            counts = freeze_for_stage(model, stage, extra=run_extra, modalities=modalities)
            log(f"[stage {stage}] {name or 'all'}: trainable {counts}")
            target = out if name is None else out / name
            trainer = _train(model, processor, run_recipe, target, modalities, log)
            trained = gathered_model(trainer, model)
            if trainer.is_world_process_zero():
                written.append(save_stage_output(trained, processor, target))
                _write_summary(trainer, target)
            trainer.accelerator.wait_for_everyone()
        return written

    moe = recipe.get("moe") or {}
    if "base" not in moe or "experts" not in moe:
        raise ValueError("A stage-3 recipe needs `moe: {base: FOLDER, sources: {...}, experts: [...]}`.")
    model = build_moe_model(
        moe["base"],
        moe.get("sources") or {},
        list(moe["experts"]),
        moe_layers=moe.get("moe_layers", "all"),
        num_experts_per_tok=int(moe.get("top_k", 2)),
        router_aux_loss_coef=moe.get("router_aux_loss_coef"),
        towers_from=moe.get("towers_from"),
        seed=seed,
    )
    processor = _processor_for(model, moe["base"])
    model.config.text_config.output_router_logits = True  # the loss carries the load-balancing term
    counts = freeze_for_stage(model, 3, extra=extra)
    lora = dict(recipe.get("lora") or {})
    model = apply_lora(
        model,
        r=int(lora.get("r", 8)),
        alpha=int(lora.get("alpha", 16)),
        dropout=float(lora.get("dropout", 0.05)),
        targets=lora.get("targets") or ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        modules_to_save=lora.get("modules_to_save") or (),
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"[stage 3] experts {list(moe['experts'])}, trainable {trainable} (routers {counts.get('routers', 0)} + LoRA)")
    trainer = _train(model, processor, recipe, out, log=log)
    merged = gathered_model(trainer, model, merge_lora=True)
    if trainer.is_world_process_zero():
        merged.config.text_config.output_router_logits = False
        written.append(save_stage_output(merged, processor, out))
        _write_summary(trainer, out)
    trainer.accelerator.wait_for_everyone()
    return written


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    recipe = load_recipe(argv[0], argv[1:])
    for folder in run_stage(recipe):
        print(f"Wrote {folder}")


if __name__ == "__main__":
    main()
