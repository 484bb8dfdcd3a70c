"""Convert a released Uni-MoE v1 checkpoint (base + fine-tuned [+ 8e experts] + encoder checkpoints) into a Hub folder.

The original assembles its model at load time (Uni_MoE_*/model/all_builder.py): base weights, then
non_lora_trainables.bin, then the PEFT LoRA adapter merged in, then mm_audio_aligner.bin, then mlp_gates.bin, and
finally the CLIP / Whisper / BEATs towers reloaded from their own files. The 8-expert model adds its experts (stage-2
FFNs + built-in LoRA, one file per global expert) right after the base, loads the towers before non_lora_trainables
and its routers before the merge. This converter replays that order tensor by tensor (last writer wins, LoRA merged as
W += alpha / r * B @ A into the weight present at merge time), checks that every source tensor is used, overwritten
in that order or explicitly dropped, that every target tensor is filled with the right shape, and only then streams
the result into sharded safetensors inside a temporary folder that is moved into place when complete.

Example:
    python -m hub_export.convert --variant speech-4e \\
        --base checkpoints/Uni-MoE-speech-base --finetuned checkpoints/Uni-MoE-speech-e2 \\
        --clip checkpoints/clip-vit-large-patch14-336 --whisper checkpoints/whisper-small \\
        --out build/uni-moe-speech-4e --max-shard-size 5GB --verify
"""

import argparse
import copy
import gc
import inspect
import json
import re
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import mapping
from ._tensors import ConversionError, ShardedSafetensorsWriter, TensorFile, parse_size
from .mapping import EXPERT_FILES_8E, VARIANTS, Variant
from .output import OutputFolderError, atomic_output_dir, check_output_dir
from .processor_files import find_tokenizer_dir, save_processor_files


REPO_ROOT = Path(__file__).resolve().parents[1]
HUB_CODE_FILES = ("configuration_unimoe.py", "modeling_unimoe.py")
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
class Sources:
    """Every file of the conversion, by label, in load order, with the stage (file kind) of each."""

    files: dict = field(default_factory=dict)  # label -> TensorFile
    stages: list = field(default_factory=list)  # [(stage, label)]
    model_config: dict = field(default_factory=dict)
    model_config_path: Path | None = None
    adapter_config: dict | None = None
    expert_files: list = field(default_factory=list)  # 8e: [(global expert, e2 label, stage-2 FFN label)]

    def add(self, stage: str, path: Path, label: str, **kwargs) -> str:
        if label not in self.files:
            self.files[label] = TensorFile(path, label, **kwargs)
        self.stages.append((stage, label))
        return label

    def close(self):
        for f in self.files.values():
            f.close()


# -- gathering the files --------------------------------------------------------------------------------------------
def _require_dir(path, flag: str, what: str) -> Path:
    if path is None:
        raise ConversionError(f"{flag} is required: pass the folder of {what}.")
    path = Path(path)
    if not path.is_dir():
        raise ConversionError(f"{flag} {path} is not a folder. Expected the downloaded folder of {what}.")
    return path


def _require_file(folder: Path, name: str, flag: str, what: str) -> Path:
    path = folder / name
    if not path.is_file():
        present = sorted(p.name for p in folder.iterdir())
        raise ConversionError(
            f"{flag} {folder} has no {name} ({what}). Received a folder with: {present[:20]}. Download the missing "
            "file from the release, or point the flag at the right folder."
        )
    return path


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not valid JSON ({error}). Download it again.") from None


def base_shards(base: Path) -> list[Path]:
    """The base checkpoint's `pytorch_model-0000X-of-0000N.bin` files, all of them or an error naming the missing."""
    index = base / "pytorch_model.bin.index.json"
    if index.is_file():
        names = sorted(set(_read_json(index).get("weight_map", {}).values()))
    else:
        names = sorted(p.name for p in base.glob("pytorch_model*.bin"))
        counts = {int(m[2]) for n in names if (m := re.fullmatch(r"pytorch_model-(\d+)-of-(\d+)\.bin", n))}
        if len(counts) == 1:
            total = counts.pop()
            names = sorted(set(names) | {f"pytorch_model-{i:05d}-of-{total:05d}.bin" for i in range(1, total + 1)})
    if not names:
        raise ConversionError(
            f"--base {base} has no weights: expected pytorch_model-0000X-of-0000N.bin shards (with "
            "pytorch_model.bin.index.json) or pytorch_model.bin. Point --base at the downloaded base checkpoint."
        )
    missing = [n for n in names if not (base / n).is_file()]
    if missing:
        raise ConversionError(
            f"--base {base} is incomplete: missing shard(s) {missing} of the {len(names)} the checkpoint lists. "
            "Download the missing file(s) again."
        )
    return [base / n for n in names]


def gather_sources(variant: Variant, base, finetuned, clip, whisper, beats=None, experts=None) -> Sources:
    base = _require_dir(base, "--base", "the base checkpoint")
    finetuned = _require_dir(finetuned, "--finetuned", "the fine-tuned (e2) checkpoint")
    clip = _require_dir(clip, "--clip", "CLIP ViT-L/14-336 in transformers' format")
    src = Sources()
    try:
        _gather(src, variant, base, finetuned, clip, whisper, beats, experts)
    except BaseException:
        src.close()
        raise
    return src


def _gather(src: Sources, variant, base, finetuned, clip, whisper, beats, experts):
    if variant.deepspeed_moe:
        # their README: "replace the content of config.json with 8config.json" in the shared speech base
        cfg_path = base / "8config.json" if (base / "8config.json").is_file() else finetuned / "config.json"
    else:
        cfg_path = _require_file(finetuned, "config.json", "--finetuned", "the model config")
    src.model_config_path = cfg_path
    src.model_config = _read_json(_require_file(cfg_path.parent, cfg_path.name, "--base/--finetuned", "config"))

    adapter_cfg = _require_file(finetuned, "adapter_config.json", "--finetuned", "the PEFT LoRA adapter config")
    src.adapter_config = _read_json(adapter_cfg)
    adapter_weights = finetuned / "adapter_model.bin"
    if not adapter_weights.is_file() and (finetuned / "adapter_model.safetensors").is_file():
        adapter_weights = finetuned / "adapter_model.safetensors"
    if not adapter_weights.is_file():
        _require_file(finetuned, "adapter_model.bin", "--finetuned", "the PEFT LoRA adapter weights")

    shards = base_shards(base)
    non_lora = _require_file(finetuned, "non_lora_trainables.bin", "--finetuned", "the non-LoRA trained weights")
    aligner = _require_file(finetuned, "mm_audio_aligner.bin", "--finetuned", "the audio connector")
    gates = finetuned / "mlp_gates.bin"

    def add_base():
        for shard in shards:
            src.add("base", shard, f"base/{shard.name}")

    def add_towers():
        add_tower_file(src, "clip", clip, "--clip", "CLIP")
        if variant.audio == "speech":
            add_tower_file(src, "whisper", _require_dir(whisper, "--whisper", "whisper-small"), "--whisper", "Whisper")
        else:
            if beats is None:
                raise ConversionError(
                    "--beats is required for the audio variant: pass the BEATs checkpoint file (BEATs_iter3_plus_AS2M.pt)."
                )
            src.add("beats", Path(beats), f"beats/{Path(beats).name}", subdict="model")

    if not variant.deepspeed_moe:
        add_base()
        src.add("non_lora_trainables", non_lora, "finetuned/non_lora_trainables.bin")
        src.add("adapter", adapter_weights, f"finetuned/{adapter_weights.name}")
        src.add("mm_audio_aligner", aligner, "finetuned/mm_audio_aligner.bin")
        if gates.is_file():
            src.add("mlp_gates", gates, "finetuned/mlp_gates.bin")
        add_towers()
        return

    experts = _require_dir(experts, "--experts", "the 8e stage-2 expert FFNs (Uni-MoE-8e-Experts)")
    add_base()
    for g in range(variant.num_experts):
        e2 = _require_file(finetuned, f"{g}_mlp_experts.bin", "--finetuned", f"expert {g} with its built-in LoRA")
        ffn = _require_file(experts, f"{EXPERT_FILES_8E[g]}.bin", "--experts", f"the stage-2 FFN of expert {g}")
        e2_label = src.add("expert_lora", e2, f"finetuned/{e2.name}")
        ffn_label = src.add("expert_ffn", ffn, f"experts/{ffn.name}")
        src.expert_files.append((g, e2_label, ffn_label))
    add_towers()
    src.add("non_lora_trainables", non_lora, "finetuned/non_lora_trainables.bin")
    if gates.is_file():
        src.add("mlp_gates", gates, "finetuned/mlp_gates.bin")
    if (finetuned / "fm_adapter.bin").is_file():
        src.add("fm_adapter", finetuned / "fm_adapter.bin", "finetuned/fm_adapter.bin")
    src.add("adapter", adapter_weights, f"finetuned/{adapter_weights.name}")
    src.add("mm_audio_aligner", aligner, "finetuned/mm_audio_aligner.bin")


def add_tower_file(src: Sources, stage: str, folder: Path, flag: str, what: str):
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            src.add(stage, folder / name, f"{stage}/{name}")
            return
    index = [folder / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")]
    for idx in index:
        if idx.is_file():
            for name in sorted(set(_read_json(idx)["weight_map"].values())):
                path = folder / name
                if not path.is_file():
                    raise ConversionError(f"{flag} {folder} is incomplete: {name} (listed in {idx.name}) is missing.")
                src.add(stage, path, f"{stage}/{name}")
            return
    raise ConversionError(
        f"{flag} {folder} has no {what} weights: expected model.safetensors or pytorch_model.bin (transformers' "
        "format, as downloaded from the Hub)."
    )


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
    raw = _read_json(path)
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
    from modeling_unimoe import UniMoEConfig
    from modeling_unimoe.configuration_unimoe import PRESETS, UniMoEBEATsConfig

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
        preset["audio_token_id"] = vocab + 1
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
        preset["audio_config"] = {k: v for k, v in beats_cfg.items() if k in fields}
        preset["audio_qformer_config"] = _qformer_config(src, stage_keys)
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
def plan_conversion(variant: Variant, src: Sources, config, shapes: dict) -> tuple[dict, Accounting]:
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

    stage_keys = {}
    for _, label in src.stages:
        stage_keys[label] = mapping.normalize_file_keys(src.files[label].keys())

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
    return targets, acc, stage_keys


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


# -- writing --------------------------------------------------------------------------------------------------------
def materialize(target: TargetPlan, files: dict, dtype: torch.dtype) -> torch.Tensor:
    """The final tensor of one target: value, plus every LoRA delta, plus the placeholder rows of the vocabulary."""
    tensor = files[target.value.file].get(target.value.key)
    if target.deltas or target.pads_vocab:
        tensor = tensor.to(torch.float32)
        for delta in target.deltas:
            a = files[delta.a.file].get(delta.a.key).to(torch.float32)
            b = files[delta.b.file].get(delta.b.key).to(torch.float32)
            update = b @ a  # [out, r] @ [r, in]
            tensor = tensor + (update.t() if delta.transpose else update) * delta.scale
        if target.pads_vocab:
            # placeholder rows: the mean of the vocabulary (never read as embeddings; suppressed in generation)
            tensor = torch.cat([tensor, tensor.mean(0, keepdim=True).expand(NUM_PLACEHOLDERS, -1)])
    if tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor


def write_weights(folder: Path, targets: dict, src: Sources, dtype: torch.dtype, max_shard_bytes: int, progress=True):
    """Stream every target into sharded safetensors, grouped by the file its value comes from (in load order) so
    that each source file is released as soon as nothing more needs it."""
    file_order = {label: i for i, (_, label) in enumerate(src.stages)}
    ordered = sorted(targets.values(), key=lambda t: (file_order[t.value.file], t.key))
    refs = defaultdict(int)
    for t in ordered:
        for label in {t.value.file, *(d.a.file for d in t.deltas), *(d.b.file for d in t.deltas)}:
            refs[label] += 1
    for label in src.files:  # files nothing is read from can go now
        if refs[label] == 0:
            src.files[label].close()
    entries = [
        (t.key, t.shape, dtype if _is_float(src, t) else src.files[t.value.file].dtype(t.value.key)) for t in ordered
    ]
    writer = ShardedSafetensorsWriter(folder, entries, max_shard_bytes)
    bar = tqdm(total=writer.total_size, unit="B", unit_scale=True, desc="Writing weights", disable=not progress)
    for t in ordered:
        tensor = materialize(t, src.files, dtype)
        writer.write(t.key, tensor)
        bar.update(tensor.numel() * tensor.element_size())
        del tensor
        for label in {t.value.file, *(d.a.file for d in t.deltas), *(d.b.file for d in t.deltas)}:
            refs[label] -= 1
            if refs[label] == 0:
                src.files[label].close()
                gc.collect()
    writer.close()
    bar.close()
    return writer


def _is_float(src: Sources, t: TargetPlan) -> bool:
    return src.files[t.value.file].dtype(t.value.key).is_floating_point


# -- the rest of the Hub folder -------------------------------------------------------------------------------------
MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

Uni-MoE ([arXiv 2405.11273](https://arxiv.org/abs/2405.11273)): a LLaMA-2-7B / Vicuna language model whose
feed-forward blocks are a mixture of experts, with CLIP (images, video), {{ audio_desc }} towers. This folder is the
released **{{ variant }}** checkpoint ({{ description }}) converted to a single transformers model:
the LoRA adapters are merged, the towers are included and every weight loads with `from_pretrained`.

```python
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("{{ repo_id }}", trust_remote_code=True)
```

## Conversion

Converted with `python -m hub_export.convert --variant {{ variant }}` from{% for name, repo in sources %}
{{ name }} `{{ repo }}`{% if not loop.last %},{% endif %}{% endfor %}, plus the encoder checkpoints the original loads at
run time. The converter replays the original load order (base weights, non-LoRA trainables, LoRA merge
`W += alpha / r * B @ A`, audio connector, routers last{% if deepspeed %}; expert FFNs and their built-in LoRA
before the merge{% endif %}) and checks that every source tensor is used or deliberately dropped.

- Weights: {{ dtype }}, {{ num_params }} parameters.
- Placeholder tokens `<image>`, `<audio>`, `<video>` are added to the vocabulary (ids {{ placeholder_ids }}); the
  original spliced negative ids instead. Their embedding and output rows are the vocabulary mean and they are never
  generated (`suppress_tokens`).
- Generation defaults follow the original inference script: sampling at temperature 0.2, up to
  {{ max_new_tokens }} new tokens.

## Differences from the original

- Model: none; the converter's `--verify` compares logits with the original load order (fp32, about 3e-6).
- Preprocessing: the processor reproduces the original's (per-piece prompt tokenization around placeholders,
  480,001-sample speech pieces, sound chunks padded with their last sample, python-soxr resampling at high quality),
  except that a sound longer than 20 chunks is refused unless `truncate_sound=True` (the original keeps the first 20
  chunks without a word) and video frames are decoded directly (the original round-trips them through JPEG).{% if deepspeed %}
- Routing: deterministic top-2. The original's DeepSpeed gate samples the second expert with Gumbel noise
  (`top2_2nd_expert_sampling`, also at inference), so its answers vary between runs; with that sampling off its
  routing equals this model's.{% endif %}

## License

{{ license_note }}
"""

LICENSE_NOTE = (
    "As released by the authors: the checkpoints are intended and licensed for research use only and are restricted "
    "to uses that follow the license agreements of LLaMA and Vicuna (Uni-MoE README, 'Usage and License Notices')."
)


def write_model_card(
    folder: Path, variant: Variant, config, dtype, num_params: int, repo_id: str | None, license: str
):
    from huggingface_hub import ModelCard, ModelCardData

    hub = variant.hub_ids
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="any-to-any",
        license=license,
        license_name="uni-moe-research-only" if license == "other" else None,
        license_link="https://github.com/HITsz-TMG/UMOE-Scaling-Unified-Multimodal-LLMs"
        if license == "other"
        else None,
        base_model=[hub[k] for k in ("base", "experts", "finetuned") if k in hub],
        tags=["moe", "mixture-of-experts", "multimodal", "custom_code", "uni-moe", "llava", "vision", "audio", "video"]
        + (["speech"] if variant.audio == "speech" else ["sound"]),
    )
    ids = [config.image_token_id, config.audio_token_id or config.sound_token_id, config.video_token_id]
    card = ModelCard.from_template(
        card_data,
        template_str=MODEL_CARD_TEMPLATE,
        title=f"Uni-MoE {variant.name} (transformers)",
        variant=variant.name,
        description=variant.description,
        audio_desc="Whisper (speech)" if variant.audio == "speech" else "BEATs (sound events)",
        repo_id=repo_id or f"<org>/uni-moe-{variant.name}",
        sources=[(k, v) for k, v in hub.items()],
        deepspeed=variant.deepspeed_moe,
        dtype=str(dtype).replace("torch.", ""),
        num_params=f"{num_params / 1e9:.2f} B" if num_params > 1e8 else f"{num_params:,}",
        placeholder_ids=", ".join(str(i) for i in ids),
        max_new_tokens=variant.max_new_tokens,
        license_note=LICENSE_NOTE,
    )
    card.save(folder / "README.md")


def write_config_and_code(folder: Path, config, dtype: torch.dtype, variant: Variant):
    from transformers import GenerationConfig

    from modeling_unimoe.modeling_unimoe import AUTO_MAP

    config = copy.deepcopy(config)
    config.auto_map = dict(AUTO_MAP)
    config.architectures = ["UniMoEForCausalLM"]
    config.dtype = dtype
    config.save_pretrained(folder)
    for name in HUB_CODE_FILES:
        shutil.copyfile(REPO_ROOT / "modeling_unimoe" / name, folder / name)
    text = config.get_text_config()
    placeholders = [
        i
        for i in (config.image_token_id, config.video_token_id, config.audio_token_id, config.sound_token_id)
        if i is not None
    ]
    GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        do_sample=True,
        temperature=0.2,
        max_new_tokens=variant.max_new_tokens,
        suppress_tokens=placeholders,
    ).save_pretrained(folder)


# -- entry points ---------------------------------------------------------------------------------------------------
@dataclass
class ConversionResult:
    out: Path
    config: object
    accounting: Accounting
    num_tensors: int
    total_bytes: int
    source_bytes: int
    seconds: float


def resolve_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ConversionError(
            f"Unknown variant {name!r}. Expected one of {sorted(VARIANTS)} (speech-4e: Uni-MoE-speech-e2, audio-4e: "
            "Uni-MoE-audio-e2, speech-v1.5: Uni-MoE-speech-v1.5, 8e: Uni-MoE-8e-e2)."
        )
    return VARIANTS[name]


def convert(
    variant: str,
    base,
    finetuned,
    clip,
    out,
    whisper=None,
    beats=None,
    experts=None,
    dtype: str = "auto",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    progress: bool = True,
    repo_id: str | None = None,
    license: str = "other",
    log=print,
) -> ConversionResult:
    """Convert one release into a Hub folder at `out` (written atomically). Raises ConversionError on bad input."""
    start = time.perf_counter()
    spec = resolve_variant(variant)
    max_shard_bytes = parse_size(max_shard_size)
    out = Path(out)
    check_output_dir(out, overwrite)  # OutputFolderError before any work
    src = gather_sources(spec, base, finetuned, clip, whisper, beats, experts)
    try:
        stage_keys = {label: mapping.normalize_file_keys(src.files[label].keys()) for _, label in src.stages}
        beats_cfg = next((f.extra.get("cfg") for f in src.files.values() if f.label.startswith("beats/")), None)
        config = build_config(spec, src, stage_keys, Path(clip), whisper, beats_cfg)
        shapes = target_shapes(config)
        targets, acc, _ = plan_conversion(spec, src, config, shapes)
        finalize(targets, acc)
        message = acc.error_message(targets)
        if message:
            raise ConversionError(message)
        out_dtype = resolve_dtype(dtype, src, targets)
        tokenizer_dir = find_tokenizer_dir(Path(base), Path(finetuned))
        source_bytes = sum(f.path.stat().st_size for f in src.files.values())
        log(
            f"Plan for {spec.name}: {len(targets)} target tensors; {acc.used} source tensors used, {acc.superseded} "
            f"overwritten in the original load order, {sum(map(len, acc.dropped.values()))} dropped:"
        )
        for reason, keys in acc.dropped.items():
            log(f"  - dropped {len(keys)} ({reason}), e.g. {keys[0]}")
        with atomic_output_dir(out, overwrite=overwrite, tool="hub_export.convert") as tmp:
            writer = write_weights(tmp, targets, src, out_dtype, max_shard_bytes, progress)
            write_config_and_code(tmp, config, out_dtype, spec)
            save_processor_files(config, tokenizer_dir, tmp)
            num_params = sum(_numel(s) for s in shapes.values())
            write_model_card(tmp, spec, config, out_dtype, num_params, repo_id, license)
    finally:
        src.close()
    seconds = time.perf_counter() - start
    log(f"Wrote {out} ({len(writer.names)} shard(s), {writer.total_size / 1e6:.1f} MB) in {seconds:.1f} s")
    return ConversionResult(out, config, acc, len(targets), writer.total_size, source_bytes, seconds)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def resolve_dtype(name: str, src: Sources, targets: dict) -> torch.dtype:
    if name != "auto":
        if name not in DTYPES:
            raise ConversionError(f"--dtype must be one of {['auto', *DTYPES]}, got {name!r}.")
        return DTYPES[name]
    embed = targets["model.language_model.embed_tokens.weight"].value
    return src.files[embed.file].dtype(embed.key)


def push_folder(folder, repo_id: str, endpoint: str | None = None, token: str | None = None, private: bool = False):
    """Upload a converted folder with huggingface_hub (create_repo + upload_folder)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(endpoint=endpoint, token=token)
    where = endpoint or api.endpoint
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model")
    except OfflineModeIsEnabled:
        raise ConversionError(
            f"Cannot push to {repo_id}: the Hub is disabled (HF_HUB_OFFLINE=1). The converted folder {folder} is "
            f"complete; upload it later with `hf upload {repo_id} {folder}` or re-run with --push when online."
        ) from None
    except HfHubHTTPError as error:
        raise ConversionError(
            f"The Hub at {where} refused the upload to {repo_id}: {str(error).splitlines()[0]}. Check the repo id and "
            f"that your token (HF_TOKEN or `hf auth login`) may write to it. The folder {folder} is complete."
        ) from None
    except Exception as error:  # network failures surface as httpx / OS errors
        if _is_connection_error(error):
            raise ConversionError(
                f"Could not reach the Hub at {where} to push {repo_id} ({type(error).__name__}: {error}). Received no "
                f"answer; expected a reachable endpoint. The converted folder {folder} is complete: upload it later "
                f"with `hf upload {repo_id} {folder}` or re-run with --push when online."
            ) from None
        raise


def _is_connection_error(error: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(error)}
    return bool(
        names & {"ConnectError", "ConnectionError", "ConnectTimeout", "ConnectionRefusedError", "gaierror"}
    ) or any(isinstance(e, (ConnectionError, OSError)) for e in _chain(error))


def _chain(error):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert a released Uni-MoE v1 checkpoint into a Hub-ready transformers folder.",
        epilog=__doc__[__doc__.index("Example:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variant", required=True, help=f"one of {sorted(VARIANTS)}")
    parser.add_argument("--base", required=True, help="base checkpoint folder (e.g. Uni-MoE-speech-base)")
    parser.add_argument("--finetuned", required=True, help="fine-tuned folder (e.g. Uni-MoE-speech-e2)")
    parser.add_argument("--experts", help="8e only: the stage-2 expert FFNs folder (Uni-MoE-8e-Experts)")
    parser.add_argument("--clip", required=True, help="clip-vit-large-patch14-336 folder (transformers format)")
    parser.add_argument("--whisper", help="whisper-small folder (transformers format); speech variants")
    parser.add_argument("--beats", help="BEATs_iter3_plus_AS2M.pt; audio variant")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16 or float16")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB or 500MB")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder written by an export command"
    )
    parser.add_argument("--license", default="other", help="model card license id (default: other, research only)")
    parser.add_argument("--push", metavar="ORG/NAME", help="then upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the pushed repo as private")
    parser.add_argument(
        "--verify", action="store_true", help="then compare logits of the converted folder with the source"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = convert(
            args.variant,
            args.base,
            args.finetuned,
            args.clip,
            args.out,
            whisper=args.whisper,
            beats=args.beats,
            experts=args.experts,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            repo_id=args.push,
            license=args.license,
        )
        if args.verify:
            from .verify import verify

            verify(
                result.out, args.variant, args.base, args.finetuned, args.clip, args.whisper, args.beats, args.experts
            )
        if args.push:
            info = push_folder(result.out, args.push, private=args.private)
            print(f"Pushed {result.out} to {args.push}: {info}")
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OutputFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
