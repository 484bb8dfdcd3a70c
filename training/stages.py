# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""What each progressive-training stage trains, and the stage-3 MoE assembly (paper section 4).

Parameters are grouped into components by name:

| component     | parameters                                                                   |
| ------------- | ---------------------------------------------------------------------------- |
| `towers`      | `model.vision_tower`, `model.speech_tower`, `model.sound_tower`              |
| `connectors`  | `model.vision_projector`, `model.speech_connector`, `model.sound_connector`  |
| `attention`   | `self_attn` of every decoder layer                                           |
| `ffn`         | dense `mlp.{gate,up,down}_proj` and every expert `mlp.experts.{e}.*`         |
| `routers`     | `mlp.gate` of the MoE layers                                                 |
| `norms`       | the decoder's RMSNorms                                                       |
| `embeddings`  | `embed_tokens`                                                               |
| `lm_head`     | the output head                                                              |
| `llm`         | all of the language model (attention, ffn, routers, norms, embeddings, lm_head) |

`towers:speech` (or `connectors:vision`, ...) names one part only. Towers and connectors can also be limited to the modalities a stage trains on (`modalities=["image", "video"]` -> the
vision tower and projector only). The stages of the paper:

    stage 1: connectors                       (towers and LLM frozen)
    stage 2: ffn + connectors, per modality   (attention frozen), one dense model per modality
    stage 3: routers fully + LoRA on attention and experts (PEFT), on the MoE built by `build_moe_model`
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import torch

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM


COMPONENTS = ("towers", "connectors", "attention", "ffn", "routers", "norms", "embeddings", "lm_head", "llm")
LLM_COMPONENTS = ("attention", "ffn", "routers", "norms", "embeddings", "lm_head")
STAGE_TRAINABLE = {1: ("connectors",), 2: ("connectors", "ffn"), 3: ("routers",)}
# modality -> the tower / connector part that serves it
MODALITY_PART = {"image": "vision", "video": "vision", "speech": "speech", "sound": "sound", "text": None}
PART_MODULES = {
    "vision": ("model.vision_tower.", "model.vision_projector."),
    "speech": ("model.speech_tower.", "model.speech_connector."),
    "sound": ("model.sound_tower.", "model.sound_connector."),
}
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_LAYER = re.compile(r"^model\.language_model\.layers\.\d+\.")


def component_of(name: str) -> tuple[str, str | None]:
    """(component, part) of a parameter name of `UniMoEForCausalLM` (part: vision / speech / sound for towers and
    connectors, else None)."""
    for part, (tower, connector) in PART_MODULES.items():
        if name.startswith(tower):
            return "towers", part
        if name.startswith(connector):
            return "connectors", part
    if name.startswith("lm_head."):
        return "lm_head", None
    if name.startswith("model.language_model.embed_tokens."):
        return "embeddings", None
    if name.startswith("model.language_model.norm."):
        return "norms", None
    match = _LAYER.match(name)
    if match:
        rest = name[match.end() :]
        if rest.startswith("self_attn."):
            return "attention", None
        if rest.startswith("mlp.gate."):
            return "routers", None
        if rest.startswith("mlp."):
            return "ffn", None
        if "layernorm" in rest:
            return "norms", None
    raise ValueError(f"Parameter {name!r} belongs to no known component of UniMoEForCausalLM.")


def _expand(trainable) -> dict[str, set[str] | None]:
    """component -> parts it is limited to (None: all). Items are components, or `towers:PART` /
    `connectors:PART` (PART: vision, speech, sound) for one part only."""
    if isinstance(trainable, str):
        trainable = [trainable]
    wanted: dict[str, set[str] | None] = {}
    for item in trainable:
        component, _, part = str(item).partition(":")
        if component not in COMPONENTS or (part and (component not in ("towers", "connectors")
                                                      or part not in PART_MODULES)):  # fmt: skip
            raise ValueError(
                f"Unknown trainable component {item!r}; expected some of {', '.join(COMPONENTS)}, or towers:PART / "
                f"connectors:PART with PART one of {', '.join(PART_MODULES)}."
            )
        for name in LLM_COMPONENTS if component == "llm" else (component,):
            if not part:
                wanted[name] = None
            elif wanted.get(name, set()) is not None:
                wanted[name] = wanted.get(name, set()) | {part}
    return wanted


def modality_parts(modalities) -> set[str] | None:
    """The tower / connector parts serving `modalities` (None: all parts)."""
    if modalities is None:
        return None
    if isinstance(modalities, str):
        modalities = [modalities]
    parts = set()
    for modality in modalities:
        if modality not in MODALITY_PART:
            raise ValueError(f"Unknown modality {modality!r}; expected some of {', '.join(MODALITY_PART)}.")
        if MODALITY_PART[modality] is not None:
            parts.add(MODALITY_PART[modality])
    return parts


def _is_trained(wanted: dict, parts: set[str] | None, component: str, part: str | None) -> bool:
    """Whether `component` (of `part`) is trained, given `_expand`'s `wanted` and `modality_parts`' `parts`."""
    return component in wanted and (
        part is None or ((parts is None or part in parts) and (wanted[component] is None or part in wanted[component]))
    )


def trained_parts(trainable, modalities=None, component: str = "towers") -> set[str]:
    """The parts (vision, speech, sound) whose `component` `set_trainable(model, trainable, modalities)` trains."""
    wanted, parts = _expand(trainable), modality_parts(modalities)
    return {part for part in PART_MODULES if _is_trained(wanted, parts, component, part)}


def set_trainable(model: torch.nn.Module, trainable, modalities=None) -> dict[str, int]:
    """Set `requires_grad` on every parameter: True exactly for the `trainable` components (towers and connectors
    only of the parts serving `modalities`, if given). Returns the number of trainable parameters per component."""
    wanted, parts = _expand(trainable), modality_parts(modalities)
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        component, part = component_of(name)
        on = _is_trained(wanted, parts, component, part)
        param.requires_grad_(on)
        if on:
            counts[component] = counts.get(component, 0) + param.numel()
    return counts


def freeze_for_stage(model, stage: int, *, extra=(), modalities=None) -> dict[str, int]:
    """The paper's freezing for `stage` (1, 2 or 3; for 3 the routers only: LoRA comes from `apply_lora`), plus the
    `extra` components (the tiny recipes add `towers`, which have no pretrained weights there)."""
    if stage not in STAGE_TRAINABLE:
        raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}.")
    return set_trainable(model, list(STAGE_TRAINABLE[stage]) + list(extra), modalities)


# ------------------------------------------------------------------------------------------------------ the models


def dense_config(config: UniMoEConfig) -> UniMoEConfig:
    """The same model with a dense FFN in every layer (stages 1 and 2)."""
    config = copy.deepcopy(config)
    config.text_config.moe_layers = []
    config.text_config.output_router_logits = False
    return config


@torch.no_grad()
def luminance_patch_init(model: UniMoEForCausalLM, channels: int) -> None:
    """Make the first `channels` output channels of the (random) CLIP patch embedding see luminance only: each takes
    the same random weights for R, G and B (scaled by 1/sqrt(3)), so a shape's outline projects the same way
    whatever its colour. The other channels keep their independent random weights, and with them the colour. For a
    tower that starts untrained and stays frozen (the tiny recipe), where every colour would otherwise need its own
    read-out of the same geometry."""
    tower = model.model.vision_tower
    if tower is None:
        raise ValueError("luminance_patch_channels needs a model with a vision tower; this one has none.")
    weight = tower.get_input_embeddings().weight  # [hidden, 3, patch, patch]
    if isinstance(channels, bool) or not isinstance(channels, int) or not 0 <= channels <= weight.shape[0]:
        raise ValueError(
            f"luminance_patch_channels must be an integer 0..{weight.shape[0]} (the CLIP hidden size), got "
            f"{channels!r}."
        )
    weight[:channels] = weight[:channels, :1].expand(-1, weight.shape[1], -1, -1) / math.sqrt(weight.shape[1])


def load_model(source, dtype=torch.float32, preset_overrides=None, luminance_patch_channels=0) -> UniMoEForCausalLM:
    """A model instance, a saved folder, or `preset:NAME` / `preset:NAME:dense` (random weights; `preset_overrides`
    are passed to `UniMoEConfig.from_preset`, `luminance_patch_channels` to `luminance_patch_init`)."""
    if isinstance(source, UniMoEForCausalLM):
        return source
    source = str(source)
    if (preset_overrides or luminance_patch_channels) and not source.startswith("preset:"):
        raise ValueError(
            f"`model.config` and `model.luminance_patch_channels` apply to a `preset:` start only (random weights); "
            f"got init {source!r}."
        )
    if source.startswith("preset:"):
        _, name, *flags = source.split(":")
        config = UniMoEConfig.from_preset(name, **(preset_overrides or {}))
        if "dense" in flags:
            config = dense_config(config)
        model = UniMoEForCausalLM(config).to(dtype)
        if luminance_patch_channels:
            luminance_patch_init(model, luminance_patch_channels)
        return model
    if not Path(source).is_dir():
        raise ValueError(f"No model folder at {source!r}; expected a saved stage output or 'preset:NAME[:dense]'.")
    return UniMoEForCausalLM.from_pretrained(source, dtype=dtype)


@torch.no_grad()
def build_moe_model(
    base,
    sources: dict,
    experts: list[str],
    *,
    moe_layers="all",
    num_experts_per_tok: int = 2,
    router_aux_loss_coef: float | None = None,
    towers_from: dict[str, str] | None = None,
    seed: int = 0,
) -> UniMoEForCausalLM:
    """Stage 3's MoE from dense checkpoints: expert `e` of every MoE layer is a copy of the FFN of `experts[e]`'s
    source at that layer (the released 8-expert model maps its 8 slots to 6 stage-2 FFNs the same way).

    Args:
        base: the dense stage-1 model (a model or a folder): attention, norms, embeddings, head and the FFNs of the
            layers that stay dense come from it; `"base"` in `experts` names its FFN.
        sources: name -> dense stage-2 model (or folder).
        experts: one source name per expert slot; `len(experts)` is the number of experts.
        moe_layers: "all", "even" or a list of layer indices.
        towers_from: part ("vision" / "speech" / "sound") -> source name whose tower and connector are taken (the
            stage-2 model of that modality trained them). Default: a source named like the part, if any.
        seed: seeds the router initialisation (normal, std = initializer_range).
    """
    base = load_model(base)
    sources = {name: load_model(model) for name, model in sources.items()}
    sources.setdefault("base", base)
    missing = sorted(set(experts) - set(sources))
    if missing:
        raise ValueError(f"experts name sources {missing} that are not given; sources: {sorted(sources)}.")
    if towers_from is None:
        towers_from = {part: part for part in PART_MODULES if part in sources}
    config = copy.deepcopy(base.config)
    text_config = config.text_config
    text_config.num_experts = len(experts)
    text_config.num_experts_per_tok = num_experts_per_tok
    text_config.moe_layers = moe_layers if isinstance(moe_layers, str) else list(moe_layers)
    if router_aux_loss_coef is not None:
        text_config.router_aux_loss_coef = router_aux_loss_coef
    text_config._validate()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = UniMoEForCausalLM(config).to(next(base.parameters()).dtype)

    state = {}
    for name, value in base.state_dict().items():
        component, part = component_of(name)
        if component == "ffn":
            continue
        if part is not None and part in towers_from:
            value = sources[towers_from[part]].state_dict()[name]
        state[name] = value
    moe = set(text_config.moe_layer_indices)
    for layer in range(text_config.num_hidden_layers):
        prefix = f"model.language_model.layers.{layer}.mlp."
        if layer not in moe:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                state[f"{prefix}{proj}.weight"] = base.state_dict()[f"{prefix}{proj}.weight"]
            continue
        for slot, source in enumerate(experts):
            source_state = sources[source].state_dict()
            for proj in ("gate_proj", "up_proj", "down_proj"):
                key = f"{prefix}{proj}.weight"
                if key not in source_state:
                    raise ValueError(f"Source {source!r} has no dense FFN {key} (is it a dense stage-2 model?).")
                state[f"{prefix}experts.{slot}.{proj}.weight"] = source_state[key]
        router = torch.empty(len(experts), text_config.hidden_size)
        state[f"{prefix}gate.weight"] = router.normal_(0.0, text_config.initializer_range, generator=generator)
    missing, unexpected = model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=False)
    missing = [key for key in missing if key != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"MoE assembly left keys unset {missing} or unknown {unexpected}.")
    model.tie_weights()
    return model


def apply_lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.05, targets=DEFAULT_LORA_TARGETS,
               train_routers: bool = True, modules_to_save=()):  # fmt: skip
    """PEFT LoRA on the language model's linear layers named in `targets` (attention q/k/v/o, dense FFNs and every
    expert's gate/up/down by default; never towers, connectors, routers or the head). Routers are trained fully
    (`modules_to_save`, so checkpoints carry them), as are the extra `modules_to_save`."""
    from peft import LoraConfig, get_peft_model

    targets = [targets] if isinstance(targets, str) else list(targets)
    pattern = (
        r"model\.language_model\.layers\.\d+\.(self_attn|mlp|mlp\.experts\.\d+)\.("
        + "|".join(map(re.escape, targets))
        + ")"
    )
    save = list(modules_to_save) + (["mlp.gate"] if train_routers else [])
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=pattern,
        modules_to_save=save or None,
        bias="none",
    )
    return get_peft_model(model, config)


__all__ = [
    "COMPONENTS",
    "DEFAULT_LORA_TARGETS",
    "STAGE_TRAINABLE",
    "apply_lora",
    "build_moe_model",
    "component_of",
    "dense_config",
    "freeze_for_stage",
    "load_model",
    "set_trainable",
    "trained_parts",
]
