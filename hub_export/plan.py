"""The plan of a conversion: the target config, and for every target tensor the source it comes from.

`plan_release` is the one way in, shared by the converter and `--verify`: it gathers the release's files, builds the
`UniMoEConfig` (the LLaVA-style config plus the CLIP / Whisper / BEATs / Q-Former tower configs), lists the target
tensors of that config, and replays the original load order over every source key: a later file overwrites an earlier
value (last writer wins), a LoRA factor pair becomes a `Delta` of the weight present at merge time, and every source
key is counted as used, overwritten, dropped (with the reason) or reported as a problem in the `Accounting`. No tensor
data is read, only keys, shapes and dtypes; `hub_export.write` computes the tensors.
"""

import copy
import inspect
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import mapping
from .errors import ConversionError
from .mapping import VARIANTS, Variant
from .sources import Sources, gather_sources, read_json


VOCAB_KEYS = ("model.language_model.embed_tokens.weight", "lm_head.weight")
NUM_PLACEHOLDERS = 3
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- the plan -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    """One source tensor: file label + key inside the file."""

    file: str
    key: str


@dataclass
class Delta:
    """A LoRA update W += scale * B @ A (B: [out, r], A: [r, in])."""

    a: Ref
    b: Ref
    scale: float
    origin: str
    transpose: bool = False  # PEFT fan_in_fan_out (Conv1D-style weights)


@dataclass
class TargetPlan:
    key: str
    shape: tuple
    value: Ref | None = None
    deltas: list = field(default_factory=list)
    superseded: list = field(default_factory=list)

    @property
    def pads_vocab(self) -> bool:
        return self.key in VOCAB_KEYS


@dataclass
class Accounting:
    used: int = 0
    superseded: int = 0
    dropped: dict = field(default_factory=lambda: defaultdict(list))  # reason -> ["file: key"]
    unexpected: list = field(default_factory=list)
    misshaped: list = field(default_factory=list)
    other: list = field(default_factory=list)

    def error_message(self, targets: dict) -> str | None:
        missing = [t.key for t in targets.values() if t.value is None]
        if not (missing or self.unexpected or self.misshaped or self.other):
            return None
        lines = ["The checkpoints do not convert cleanly:"]

        def section(title, items, hint):
            if items:
                lines.append(
                    f"- {title} ({len(items)}): " + "; ".join(items[:12]) + (" ..." if len(items) > 12 else "")
                )
                lines.append(f"  {hint}")

        section(
            "missing: target tensors no source provides",
            missing,
            "Expected every weight of the converted model to come from the checkpoints; check that all files of the "
            "release were downloaded and that --variant matches them.",
        )
        section(
            "unexpected: source tensors neither used nor on the drop list",
            self.unexpected,
            "Received keys the original loader has no place for; check --variant, or that each folder is the one "
            "its flag names.",
        )
        section(
            "mis-shaped: source tensors whose shape differs from the target",
            self.misshaped,
            "Expected the shapes of the model the config describes; check that the config and weights belong to "
            "the same release.",
        )
        section("other problems", self.other, "See each item for what was expected.")
        return "\n".join(lines)


@dataclass
class ReleasePlan:
    """A release read and planned: its source files (open until `close`), the target config, the shape of every
    target tensor, each target's recipe and the accounting of every source tensor. Usable as a context manager that
    closes the source files."""

    variant: Variant
    sources: Sources
    config: object
    shapes: dict
    targets: dict
    accounting: Accounting

    def close(self):
        self.sources.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def resolve_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ConversionError(
            f"Unknown variant {name!r}. Expected one of {sorted(VARIANTS)} (speech-4e: Uni-MoE-speech-e2, audio-4e: "
            "Uni-MoE-audio-e2, speech-v1.5: Uni-MoE-speech-v1.5, 8e: Uni-MoE-8e-e2)."
        )
    return VARIANTS[name]


def plan_release(variant: Variant, base, finetuned, clip, whisper=None, beats=None, experts=None) -> ReleasePlan:
    """Gather the release's files, build the target config and plan every target tensor in the original load order.
    Raises ConversionError when a file is missing or the config does not describe a Uni-MoE model; problems of single
    tensors are collected in the plan's accounting (`accounting.error_message(targets)`)."""
    src = gather_sources(variant, base, finetuned, clip, whisper, beats, experts)
    try:
        stage_keys = {label: mapping.normalize_file_keys(src.files[label].keys()) for _, label in src.stages}
        beats_cfg = next((f.extra.get("cfg") for f in src.files.values() if f.label.startswith("beats/")), None)
        config = build_config(variant, src, stage_keys, Path(clip), whisper, beats_cfg)
        shapes = target_shapes(config)
        targets, acc = plan_conversion(variant, src, config, shapes, stage_keys)
        finalize(targets, acc)
    except BaseException:
        src.close()
        raise
    return ReleasePlan(variant, src, config, shapes, targets, acc)


def resolve_dtype(name: str, src: Sources, targets: dict) -> torch.dtype:
    """The output dtype: `name`, or for "auto" the dtype of the source's embedding matrix."""
    if name != "auto":
        if name not in DTYPES:
            raise ConversionError(f"--dtype must be one of {['auto', *DTYPES]}, got {name!r}.")
        return DTYPES[name]
    embed = targets["model.language_model.embed_tokens.weight"].value
    return src.files[embed.file].dtype(embed.key)


# -- the target config ----------------------------------------------------------------------------------------------
_CLIP_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "projection_dim",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
    "initializer_range",
    "initializer_factor",
)
_WHISPER_KEYS = (
    "vocab_size",
    "num_mel_bins",
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "activation_function",
    "max_source_positions",
    "max_target_positions",
    "scale_embedding",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "decoder_start_token_id",
)


def _tower_config(folder: Path, flag: str, keys, model_type: str, nested: str | None = None) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(f"{flag} {folder} has no config.json; expected a transformers-format checkpoint folder.")
    raw = read_json(path)
    if nested and isinstance(raw.get(nested), dict):
        raw = raw[nested]
    return {"model_type": model_type, **{k: raw[k] for k in keys if k in raw}}


def _last_shape(src: Sources, stage_keys: dict, key: str):
    """Shape of the last (in load order) source of a normalised key, or None."""
    shape = None
    for _, label in src.stages:
        original = stage_keys[label].get(key)
        if original is not None:
            shape = src.files[label].shape(original)
    return shape


def _qformer_config(src: Sources, stage_keys: dict) -> dict:
    prefix = "model.mm_audio_aligner.qformer.qformer."
    keys = {}
    for _, label in src.stages:
        for norm, original in stage_keys[label].items():
            if norm.startswith(prefix):
                keys[norm[len(prefix) :]] = src.files[label].shape(original)
    if "layernorm.weight" not in keys:
        raise ConversionError(
            "No Q-Former weights (model.mm_audio_aligner.qformer.qformer.*) in the base or fine-tuned checkpoints; "
            "expected them for the audio variant. Check --variant and the folders."
        )
    layers = sorted({int(m[1]) for k in keys if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    cross = [i for i in layers if f"encoder.layer.{i}.crossattention.attention.key.weight" in keys]
    frequency = cross[1] - cross[0] if len(cross) > 1 else max(len(layers), 1)
    config = {
        "model_type": "blip_2_qformer",
        "hidden_size": keys["layernorm.weight"][0],
        "num_hidden_layers": len(layers),
        "intermediate_size": keys["encoder.layer.0.intermediate_query.dense.weight"][0],
        "cross_attention_frequency": frequency,
    }
    if cross:
        config["encoder_hidden_size"] = keys[f"encoder.layer.{cross[0]}.crossattention.attention.key.weight"][1]
    return config  # heads: the original's Blip2Config() default (12), not recoverable from shapes


def build_config(variant: Variant, src: Sources, stage_keys: dict, clip: Path, whisper, beats_cfg: dict | None):
    from modeling_unimoe import UniMoEBEATsConfig, UniMoEConfig
    from modeling_unimoe.configuration_unimoe import PRESETS

    cfg = src.model_config
    where = src.model_config_path

    def need(name):
        if name not in cfg:
            raise ConversionError(f"{where} has no `{name}`; expected the LLaVA-style config released with the model.")
        return cfg[name]

    if cfg.get("rope_scaling"):
        raise ConversionError(f"{where} sets rope_scaling={cfg['rope_scaling']}; the released models use none.")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{where} has hidden_act={cfg['hidden_act']!r}; expected 'silu' (LLaMA).")
    for name, expected in (("mm_projector_type", "mlp2x_gelu"), ("mm_vision_select_feature", "patch")):
        if cfg.get(name, expected) != expected:
            raise ConversionError(f"{where} has {name}={cfg[name]!r}; this package implements only {expected!r}.")
    if cfg.get("audio_projector_type", "linear") != "linear":
        raise ConversionError(f"{where} has audio_projector_type={cfg['audio_projector_type']!r}; expected 'linear'.")
    experts = cfg.get("num_experts", variant.num_experts)
    if experts != variant.num_experts:
        raise ConversionError(
            f"--variant {variant.name} has {variant.num_experts} experts but {where} says num_experts={experts}. "
            f"Pick the variant that matches the checkpoint ({[v.name for v in VARIANTS.values() if v.num_experts == experts]})."
        )

    vocab = need("vocab_size")
    preset = copy.deepcopy(PRESETS[variant.preset])
    heads = need("num_attention_heads")
    preset["text_config"].update(
        vocab_size=vocab + NUM_PLACEHOLDERS,
        hidden_size=need("hidden_size"),
        intermediate_size=need("intermediate_size"),
        num_hidden_layers=need("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=cfg.get("num_key_value_heads") or heads,
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.get("rope_theta", 10000.0))},
        pad_token_id=cfg.get("pad_token_id") if cfg.get("pad_token_id") is not None else 0,
        bos_token_id=cfg.get("bos_token_id", 1),
        eos_token_id=cfg.get("eos_token_id", 2),
        num_experts=variant.num_experts,
        num_experts_per_tok=cfg.get("num_experts_per_tok", 2),
        moe_layers=variant.moe_layers,
    )
    preset["vision_config"] = _tower_config(clip, "--clip", _CLIP_KEYS, "clip_vision_model", nested="vision_config")
    preset["vision_feature_layer"] = cfg.get("mm_vision_select_layer", -2)
    preset["image_token_id"], preset["video_token_id"] = vocab, vocab + 2
    if variant.audio == "speech":
        preset["speech_config"] = _tower_config(Path(whisper), "--whisper", _WHISPER_KEYS, "whisper")
        preset["speech_token_id"] = vocab + 1
        shape = _last_shape(src, stage_keys, "model.query_tokens")
        if shape is None:
            raise ConversionError(
                "No speech query tokens (model.query_tokens) in the checkpoints; expected them in "
                "mm_audio_aligner.bin. Check --variant and --finetuned."
            )
        preset["num_speech_query_tokens"] = shape[1]
    else:
        if beats_cfg is None:
            raise ConversionError("The BEATs checkpoint has no 'cfg' entry; expected {'cfg': ..., 'model': ...}.")
        if beats_cfg.get("finetuned_model"):
            raise ConversionError(
                "The BEATs checkpoint is a fine-tuned classifier (cfg.finetuned_model=True): with it the original "
                "returns class probabilities instead of features. Pass the pre-trained BEATs_iter3_plus_AS2M.pt."
            )
        fields = set(inspect.signature(UniMoEBEATsConfig.__init__).parameters) - {"self", "kwargs"}
        preset["sound_config"] = {k: v for k, v in beats_cfg.items() if k in fields}
        preset["sound_qformer_config"] = _qformer_config(src, stage_keys)
        preset["sound_token_id"] = vocab + 1
        shape = _last_shape(src, stage_keys, "model.mm_audio_aligner.query_tokens")
        if shape is None:
            raise ConversionError("No sound query tokens (model.mm_audio_aligner.query_tokens) in the checkpoints.")
        preset["num_sound_query_tokens"] = shape[1]
    try:
        return UniMoEConfig(**preset)
    except (ValueError, TypeError) as error:
        raise ConversionError(f"The checkpoint's config does not make a valid UniMoEConfig: {error}") from None


def target_shapes(config) -> dict[str, tuple]:
    from modeling_unimoe import UniMoEForCausalLM

    with torch.device("meta"):
        model = UniMoEForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# -- planning -------------------------------------------------------------------------------------------------------
def plan_conversion(variant: Variant, src: Sources, config, shapes: dict, stage_keys: dict) -> tuple[dict, Accounting]:
    acc = Accounting()
    targets = {k: TargetPlan(k, s) for k, s in shapes.items()}
    vision_prefix = (
        "model.vision_tower.vision_model."
        if any(k.startswith("model.vision_tower.vision_model.") for k in shapes)
        else "model.vision_tower."
    )
    text_vocab = config.get_text_config().vocab_size - NUM_PLACEHOLDERS

    def source_shape_ok(target: TargetPlan, shape) -> bool:
        expected = target.shape
        if target.pads_vocab:
            expected = (text_vocab, *target.shape[1:])
        return tuple(shape) == tuple(expected)

    def set_value(target_key: str, ref: Ref):
        target = targets.get(target_key)
        if target is None:
            acc.unexpected.append(f"{ref.file}: {ref.key} (would be {target_key}, which this model does not have)")
            return
        shape = src.files[ref.file].shape(ref.key)
        if not source_shape_ok(target, shape):
            acc.misshaped.append(
                f"{ref.file}: {ref.key} is {list(shape)}, expected {list(target.shape)} for {target_key}"
            )
            return
        if target.value is not None:
            target.superseded.append(target.value)
        target.superseded.extend(d.a for d in target.deltas)
        target.superseded.extend(d.b for d in target.deltas)
        target.deltas = []
        target.value = ref

    def map_and_set(stage: str, label: str, norm: str, original: str):
        m = mapping.match_key(norm, variant.name, stage, shapes, vision_prefix)
        if m is None:
            acc.unexpected.append(f"{label}: {original}")
        elif m.target is None:
            acc.dropped[m.reason].append(f"{label}: {original}")
        else:
            set_value(m.target, Ref(label, original))

    expert_done = set()
    for stage, label in src.stages:
        keys = stage_keys[label]
        if stage == "adapter":
            plan_adapter(variant, src, label, targets, acc, shapes, vision_prefix)
        elif stage in ("expert_lora", "expert_ffn"):
            if label not in expert_done and stage == "expert_lora":
                g = next(g for g, e2, _ in src.expert_files if e2 == label)
                ffn = next(f for gg, _, f in src.expert_files if gg == g)
                plan_experts(variant, src, g, label, ffn, targets, acc, set_value)
                expert_done.add(label)
        else:
            for norm, original in keys.items():
                map_and_set(stage, label, norm, original)
    return targets, acc


def plan_adapter(variant, src: Sources, label, targets, acc: Accounting, shapes, vision_prefix):
    cfg = src.adapter_config
    if cfg.get("peft_type", "LORA") != "LORA":
        acc.other.append(f"adapter_config.json has peft_type={cfg.get('peft_type')!r}; expected 'LORA'.")
        return
    for name in ("use_rslora", "use_dora"):
        if cfg.get(name):
            acc.other.append(f"adapter_config.json sets {name}=true; the released adapters (PEFT 0.4) do not.")
    for name in ("rank_pattern", "alpha_pattern", "modules_to_save"):
        if cfg.get(name):
            acc.other.append(
                f"adapter_config.json sets {name}={cfg[name]!r}; the released adapters (PEFT 0.4) do not."
            )
    r, alpha = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    scale = alpha / r
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
    file = src.files[label]
    pairs = defaultdict(dict)
    for key in file.keys():
        parsed = mapping.parse_lora_key(key)
        if parsed is None:
            acc.unexpected.append(f"{label}: {key} (not a LoRA factor)")
            continue
        module, ab = parsed
        pairs[module][ab] = key
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            present = next(iter(ab.values()))
            acc.other.append(f"{label}: {present} has no matching lora_{'B' if 'A' in ab else 'A'} factor")
            continue
        a, b = Ref(label, ab["A"]), Ref(label, ab["B"])
        if not mapping.peft_targets_module(module, cfg.get("target_modules")):
            acc.dropped[
                "LoRA factors of a module not in adapter_config.json's target_modules: PEFT never loads them"
            ].extend([f"{label}: {a.key}", f"{label}: {b.key}"])
            continue
        m = mapping.match_key(module + ".weight", variant.name, "adapter", shapes, vision_prefix)
        if m is None:
            acc.unexpected.extend([f"{label}: {a.key}", f"{label}: {b.key}"])
            continue
        if m.target is None:
            acc.dropped[f"LoRA on a dropped weight: {m.reason}"].extend([f"{label}: {a.key}", f"{label}: {b.key}"])
            continue
        target = targets.get(m.target)
        if target is None or target.value is None:
            acc.other.append(
                f"{label}: LoRA for {module} merges into {m.target}, which no earlier file provides (the original "
                "merges into the weight present at merge time)"
            )
            continue
        a_shape, b_shape = file.shape(a.key), file.shape(b.key)
        out_features, in_features = src.files[target.value.file].shape(target.value.key)
        if fan_in_fan_out:
            out_features, in_features = in_features, out_features
        if a_shape != (r, in_features) or b_shape != (out_features, r):
            acc.misshaped.append(
                f"{label}: LoRA of {module} has A {list(a_shape)} and B {list(b_shape)}, expected A [{r}, {in_features}] "
                f"and B [{out_features}, {r}] (r={r} from adapter_config.json)"
            )
            continue
        target.deltas.append(Delta(a, b, scale, "PEFT adapter", transpose=fan_in_fan_out))


def plan_experts(variant, src: Sources, g: int, e2_label: str, ffn_label: str, targets, acc: Accounting, set_value):
    """8e: expert g = stage-2 FFN (ori, wins) over the e2 file's copy; the e2 file's built-in LoRA is applied at
    run time by the original (never merged), so it is merged last, after every other source."""
    cfg = src.model_config
    r, alpha = cfg.get("lora_r", 8), cfg.get("lora_alpha", 16)
    lm = "model.language_model.layers"
    locals_seen = set()
    factors = defaultdict(dict)
    for label in (e2_label, ffn_label):  # e2 first, then the stage-2 FFN overrides (state_dict.update(ori))
        for key in src.files[label].keys():
            parsed = mapping.parse_expert_key(key)
            if parsed is None:
                acc.unexpected.append(f"{label}: {key} (not an expert projection of the form model.layers.L...*_proj)")
                continue
            layer, proj, ab, local = parsed
            if local is not None and label == e2_label:
                locals_seen.add(local)
            target = f"{lm}.{layer}.mlp.experts.{g}.{proj}_proj.weight"
            if ab is None:
                set_value(target, Ref(label, key))
            elif label == ffn_label:
                acc.unexpected.append(f"{label}: {key} (stage-2 FFN files hold no LoRA factors)")
            else:
                factors[target][ab] = key
    if len(locals_seen) > 1:
        acc.other.append(
            f"{e2_label} holds rank-local experts {sorted(locals_seen)}; the original reads one expert per file "
            "(file number = global expert) and would mix them. Expected one expert per file."
        )
    for target_key, ab in factors.items():
        if set(ab) != {"A", "B"}:
            acc.other.append(f"{e2_label}: {next(iter(ab.values()))} has no matching LoRA factor")
            continue
        target = targets.get(target_key)
        if target is None or target.value is None:
            continue  # reported as missing / unexpected by set_value
        file = src.files[e2_label]
        a, b = Ref(e2_label, ab["A"]), Ref(e2_label, ab["B"])
        out_features, in_features = target.shape
        if file.shape(a.key) != (r, in_features) or file.shape(b.key) != (out_features, r):
            acc.misshaped.append(
                f"{e2_label}: built-in LoRA of {target_key} has A {list(file.shape(a.key))} and B "
                f"{list(file.shape(b.key))}, expected A [{r}, {in_features}] and B [{out_features}, {r}] "
                f"(lora_r={r} from the model config)"
            )
            continue
        target.runtime_deltas = getattr(target, "runtime_deltas", []) + [
            Delta(a, b, alpha / r, f"built-in expert LoRA (alpha/r = {alpha}/{r})")
        ]


def finalize(targets: dict, acc: Accounting):
    """Apply runtime deltas (8e built-in expert LoRA) after every load step, then count used / superseded."""
    for target in targets.values():
        target.deltas.extend(getattr(target, "runtime_deltas", []))
        if target.value is not None:
            acc.used += 1 + 2 * len(target.deltas)
            acc.superseded += len(target.superseded)
