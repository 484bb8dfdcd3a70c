"""Key mapping from the released Uni-MoE v1 checkpoints (LLaVA-style keys) to this package's state dict.

Every source key is normalised the way the original loader does (strip `base_model.`, then one `model.` of a doubled
`model.model.`), then matched against `RULES` in order. A rule either maps the key to a target key (a regex
replacement) or drops it with the reason the original never uses it. A key that matches no rule is *unexpected*:
the converter stops and lists it.

Facts behind the rules (HITsz-TMG/UMOE-Scaling-Unified-Multimodal-LLMs):
- `Uni_MoE_*/model/all_builder.py`: load order base -> non_lora_trainables -> PEFT merge -> mm_audio_aligner.bin ->
  mlp_gates.bin; non_lora_trainables key normalisation; towers reloaded from their own files last (`delay_load`).
- `Uni_MoE_8e/.../all_builder.py` (`load_all_pretrained_model_dp`, used by `inference_new.py`): base -> experts
  (`{g}_mlp_experts.bin` updated by the stage-2 FFN `mlp_*.bin`, key = layer index + projection name) -> towers ->
  non_lora_trainables -> mlp_gates -> PEFT merge -> mm_audio_aligner.
- `Uni_MoE_speech_dp/model/moe/modeling_llama.py`: interval variants have MoE in even layers, dense odd layers.
"""

import re
from dataclasses import dataclass, field


# -- variants -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One released Uni-MoE v1 model: which preset it converts to and how its checkpoints are laid out."""

    name: str
    preset: str
    num_experts: int
    moe_layers: str  # "all" or "even" (interval variants: odd layers keep a dense MLP)
    audio: str  # "speech" (Whisper encoder + decoder connector) or "sound" (BEATs + Q-Former)
    deepspeed_moe: bool  # 8e: DeepSpeed-MoE keys, experts in separate files, built-in expert LoRA
    hub_ids: dict = field(default_factory=dict)  # release repos, for the model card's base_model
    max_new_tokens: int = 1024  # the original inference script's generation length

    @property
    def description(self) -> str:
        modality = "speech (Whisper)" if self.audio == "speech" else "sound events (BEATs + Q-Former)"
        layers = "every layer" if self.moe_layers == "all" else "even layers (odd layers dense)"
        return f"{self.num_experts} experts in {layers}; image, video, {modality}"


VARIANTS = {
    "speech-4e": Variant(
        "speech-4e",
        "uni-moe-speech-4e",
        4,
        "all",
        "speech",
        False,
        {"base": "Uni-MoE/Uni-MoE-speech-base", "finetuned": "Uni-MoE/Uni-MoE-speech-e2"},
    ),
    "audio-4e": Variant(
        "audio-4e",
        "uni-moe-audio-4e",
        4,
        "even",
        "sound",
        False,
        {"base": "Uni-MoE/Uni-MoE-audio-base", "finetuned": "Uni-MoE/Uni-MoE-audio-e2"},
    ),
    "speech-v1.5": Variant(
        "speech-v1.5",
        "uni-moe-speech-v1.5",
        4,
        "even",
        "speech",
        False,
        {"base": "Uni-MoE/Uni-MoE-speech-base-interval", "finetuned": "Uni-MoE/Uni-MoE-speech-v1.5"},
    ),
    "8e": Variant(
        "8e",
        "uni-moe-8e",
        8,
        "all",
        "speech",
        True,
        {
            "base": "Uni-MoE/Uni-MoE-speech-base",
            "finetuned": "Uni-MoE/Uni-MoE-8e-e2",
            "experts": "Uni-MoE/Uni-MoE-8e-Experts",
        },
        max_new_tokens=2048,
    ),
}

# 8e: global expert slot -> stage-2 FFN file in the experts folder (`ori_expert_list` of the original loader)
EXPERT_FILES_8E = (
    "mlp_audiocap",
    "mlp_basev",
    "mlp_base",
    "mlp_base1",
    "mlp_base4",
    "mlp_base7",
    "mlp_base",
    "mlp_base7",
)


def normalize_key(key: str, doubled_model: bool) -> str:
    """The original loader's key clean-up: strip `base_model.`, then (when any key of the file starts with
    `model.model.`) one leading `model.`."""
    if key.startswith("base_model."):
        key = key[len("base_model.") :]
    if doubled_model and key.startswith("model."):
        key = key[len("model.") :]
    return key


def normalize_file_keys(keys) -> dict[str, str]:
    """{normalised key: original key} for one file, with the file-wide `model.model.` rule."""
    stripped = [k[len("base_model.") :] if k.startswith("base_model.") else k for k in keys]
    doubled = any(k.startswith("model.model.") for k in stripped)
    return {normalize_key(k, doubled): k for k in keys}


# -- rules ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    pattern: str
    target: str | None = None  # regex replacement; None = drop
    reason: str | None = None  # why the original never uses a dropped key
    variants: tuple[str, ...] | None = None  # None = every variant
    stages: tuple[str, ...] | None = None  # None = every stage
    only_if_target_missing: str | None = None  # drop only when this mapped target does not exist

    def applies(self, variant: str, stage: str) -> bool:
        return (self.variants is None or variant in self.variants) and (self.stages is None or stage in self.stages)


_LM = "model.language_model.layers"
_4E = ("speech-4e", "audio-4e", "speech-v1.5")
_SPEECH = ("speech-4e", "speech-v1.5", "8e")
_SOUND = ("audio-4e",)
_CHECKPOINT = ("base", "non_lora_trainables", "adapter", "mm_audio_aligner", "mlp_gates")

TOWER_RELOADED = (
    "the original builds its towers with delay_load and reloads them from the encoder checkpoints (--clip, "
    "--whisper, --beats) after the checkpoint weights, so checkpoint copies (and the stray randomly initialised "
    "audio_tower.{encoder,decoder}.* of its WhisperModel subclass) are never used"
)

RULES = (
    # language model
    Rule(r"model\.embed_tokens\.weight", "model.language_model.embed_tokens.weight", stages=_CHECKPOINT),
    Rule(r"model\.norm\.weight", "model.language_model.norm.weight", stages=_CHECKPOINT),
    Rule(r"lm_head\.weight", "lm_head.weight", stages=_CHECKPOINT),
    Rule(
        r"model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj\.weight|input_layernorm\.weight|post_attention_layernorm\.weight)",
        _LM + r".\1.\2",
        stages=_CHECKPOINT,
    ),
    Rule(
        r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
        reason="rotary inverse frequencies: a buffer the model recomputes from the config",
        stages=_CHECKPOINT,
    ),
    Rule(
        r"model\.layers\.(\d+)\.mlp\.((?:gate|up|down)_proj\.weight)",
        _LM + r".\1.mlp.\2",
        variants=_4E,
        stages=_CHECKPOINT,
    ),
    Rule(r"model\.layers\.(\d+)\.mlp\.gate\.weight", _LM + r".\1.mlp.gate.weight", variants=_4E, stages=_CHECKPOINT),
    Rule(
        r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.((?:gate|up|down)_proj\.weight)",
        _LM + r".\1.mlp.experts.\2.\3",
        variants=_4E,
        stages=_CHECKPOINT,
    ),
    Rule(
        r"model\.layers\.\d+\.mlp\.(?:gate\.weight|experts\.\d+\.(?:gate|up|down)_proj\.weight|(?:gate|up|down)_proj\.weight)",
        reason="the 8-expert model's MLPs are DeepSpeed-MoE layers filled from the expert files; the shared speech "
        "base's own MLP weights are unexpected keys for it, which from_pretrained ignores",
        variants=("8e",),
        stages=("base",),
    ),
    Rule(
        r"model\.layers\.(\d+)\.mlp\.deepspeed_moe\.gate\.wg\.weight", _LM + r".\1.mlp.gate.weight", variants=("8e",)
    ),
    Rule(
        r"model\.layers\.\d+\.mlp\.(?:deepspeed_moe\.)?gate\.(?:wg\.)?lora_[AB](?:\.default)?\.weight",
        reason="LoRA factors of the router saved next to it in mlp_gates.bin; the original loads that file with "
        "strict=False after merge_and_unload, so they are ignored",
        stages=("mlp_gates",),
    ),
    # vision connector
    Rule(r"model\.mm_projector\.0\.(weight|bias)", r"model.vision_projector.linear_1.\1", stages=_CHECKPOINT),
    Rule(r"model\.mm_projector\.2\.(weight|bias)", r"model.vision_projector.linear_2.\1", stages=_CHECKPOINT),
    # speech connector (Whisper decoder as query transformer)
    Rule(
        r"model\.mm_audio_aligner\.decoder\.audio_decoder\.(.+)",
        r"model.speech_connector.decoder.\1",
        variants=_SPEECH,
        stages=_CHECKPOINT,
    ),
    Rule(
        r"model\.mm_audio_aligner\.projector\.(weight|bias)", r"model.speech_connector.projector.\1", variants=_SPEECH
    ),
    Rule(r"model\.query_tokens", "model.speech_connector.query_tokens", variants=_SPEECH, stages=_CHECKPOINT),
    # sound connector (BLIP-2 Q-Former)
    Rule(r"model\.mm_audio_aligner\.qformer\.qformer\.(.+)", r"model.sound_connector.qformer.\1", variants=_SOUND),
    Rule(r"model\.mm_audio_aligner\.query_tokens", "model.sound_connector.query_tokens", variants=_SOUND),
    Rule(r"model\.mm_audio_aligner\.projector\.(weight|bias)", r"model.sound_connector.projector.\1", variants=_SOUND),
    # towers inside the checkpoints
    Rule(r"model\.vision_tower\..+", reason=TOWER_RELOADED, stages=_CHECKPOINT),
    Rule(r"model\.audio_tower\..+", reason=TOWER_RELOADED, stages=_CHECKPOINT),
    # --clip: a CLIPModel or CLIPVisionModel checkpoint in transformers' format
    Rule(
        r"vision_model\.embeddings\.position_ids",
        reason="position-id buffer of older transformers versions",
        stages=("clip",),
    ),
    Rule(r"vision_model\.(.+)", r"{vision_tower}\1", stages=("clip",)),
    Rule(
        r"(?:text_model\..+|text_projection\.weight|visual_projection\.weight|logit_scale)",
        reason="text half and projection heads of CLIPModel: the original's CLIPVisionModel.from_pretrained ignores "
        "them",
        stages=("clip",),
    ),
    # --whisper: WhisperModel or WhisperForConditionalGeneration in transformers' format
    Rule(r"(?:model\.)?encoder\.(.+)", r"model.speech_tower.\1", stages=("whisper",)),
    Rule(
        r"(?:model\.)?decoder\..+|proj_out\.weight",
        reason="Whisper's own decoder and LM head: the speech connector's decoder is the fine-tuned copy in "
        "mm_audio_aligner.bin",
        stages=("whisper",),
    ),
    # --beats: the BEATs checkpoint's `model` state dict; the sound tower keeps BEATs' parameter names
    Rule(
        r"predictor\..+",
        reason="AudioSet classification head of a fine-tuned BEATs checkpoint (not used for features)",
        stages=("beats",),
    ),
    Rule(
        r"encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.weight",
        r"model.sound_tower.encoder.layers.\1.self_attn.relative_attention_bias.weight",
        reason="BEATs shares layer 0's relative position table with every layer: these are aliases of it",
        stages=("beats",),
        only_if_target_missing="drop",
    ),
    # torch's weight-norm parametrization names of the positional conv's g and v
    Rule(
        r"encoder\.pos_conv\.0\.weight_g",
        "model.sound_tower.encoder.pos_conv.0.parametrizations.weight.original0",
        stages=("beats",),
    ),
    Rule(
        r"encoder\.pos_conv\.0\.weight_v",
        "model.sound_tower.encoder.pos_conv.0.parametrizations.weight.original1",
        stages=("beats",),
    ),
    Rule(r"(.+)", r"model.sound_tower.\1", stages=("beats",)),
)


@dataclass(frozen=True)
class Match:
    target: str | None  # None: dropped
    reason: str | None = None


def match_key(
    key: str, variant: str, stage: str, targets, vision_tower_prefix: str = "model.vision_tower."
) -> Match | None:
    """Map one normalised source key of `stage` (a file kind) for `variant`. None: no rule matches (unexpected)."""
    for rule in RULES:
        if not rule.applies(variant, stage):
            continue
        m = re.fullmatch(rule.pattern, key)
        if m is None:
            continue
        if rule.target is None:
            return Match(None, rule.reason)
        target = m.expand(rule.target.replace("{vision_tower}", vision_tower_prefix))
        if rule.only_if_target_missing and target not in targets:
            return Match(None, rule.reason)
        return Match(target)
    return None


# -- PEFT adapter keys ----------------------------------------------------------------------------------------------
_LORA_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight")


def parse_lora_key(key: str) -> tuple[str, str] | None:
    """`base_model.model.<module>.lora_A.weight` -> (<module>, "A"); None when the key is not a LoRA factor."""
    m = _LORA_KEY.fullmatch(key)
    if m is None:
        return None
    return m["module"], m["ab"]


def peft_targets_module(module: str, target_modules) -> bool:
    """PEFT 0.4's rule: a list matches by suffix (`name == t or name.endswith("." + t)`), a string by full regex."""
    if target_modules is None:
        return True
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, module) is not None
    return any(module == t or module.endswith("." + t) for t in target_modules)


# -- 8e expert files ------------------------------------------------------------------------------------------------
_EXPERT_NAME = re.compile(r"(?P<proj>gate|up|down)_proj(?:_lora_(?P<ab>[AB]))?")
_RANK_LOCAL = re.compile(r"deepspeed_experts\.(\d+)\.")


def parse_expert_key(key: str) -> tuple[int, str, str | None, int | None] | None:
    """The original's reading of an expert-file key: layer = 3rd dot-part, name = 2nd-to-last dot-part.

    Returns (layer, projection, "A"/"B" for built-in LoRA factors or None, rank-local expert index or None).
    """
    parts = key.split(".")
    if len(parts) < 4 or not parts[2].isdigit() or parts[-1] != "weight":
        return None
    m = _EXPERT_NAME.fullmatch(parts[-2])
    if m is None:
        return None
    local = _RANK_LOCAL.search(key)
    return int(parts[2]), m["proj"], m["ab"], int(local.group(1)) if local else None
