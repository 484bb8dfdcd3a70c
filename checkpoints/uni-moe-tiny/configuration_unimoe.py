# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE configuration (arXiv 2405.11273).

This file is uploaded to the Hub next to `modeling_unimoe.py`: it imports only the standard library, transformers and
its sibling `configuration_beats.py`. The configurations use plain `__init__` methods, which every transformers from
4.57 to the newest 5.x accepts (5.x's dataclass configurations still take them).
"""

import copy

from transformers import AutoConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import logging

from .configuration_beats import UniMoEBEATsConfig


try:  # transformers 5.x
    from transformers.configuration_utils import PreTrainedConfig
except ImportError:  # transformers 4.x
    from transformers.configuration_utils import PretrainedConfig as PreTrainedConfig


logger = logging.get_logger(__name__)

MOE_LAYER_PATTERNS = ("all", "even")
VIDEO_POOLING = ("mean", "weighted")
# Each media modality: the config field of its placeholder token id, and the sub-config of the tower that encodes it.
MODALITIES = {
    "image": ("image_token_id", "vision_config"),
    "video": ("video_token_id", "vision_config"),
    "speech": ("speech_token_id", "speech_config"),
    "sound": ("sound_token_id", "sound_config"),
}
# The transformers Auto classes that load a saved folder through this file and `modeling_unimoe.py` (remote code).
AUTO_MAP = {
    "AutoConfig": "configuration_unimoe.UniMoEConfig",
    "AutoModel": "modeling_unimoe.UniMoEModel",
    "AutoModelForCausalLM": "modeling_unimoe.UniMoEForCausalLM",
    "AutoModelForImageTextToText": "modeling_unimoe.UniMoEForCausalLM",
}
# Other names of three fields, found in config.json files saved by earlier versions of this file: such a file loads, and
# the names stay readable and settable as attributes.
LEGACY_NAMES = {
    "audio_token_id": "speech_token_id",
    "audio_config": "sound_config",
    "audio_qformer_config": "sound_qformer_config",
}
# config.json keys that no part of the model reads (the connector types, each with a single implementation)
UNUSED_KEYS = ("vision_connector", "speech_connector", "sound_connector")
# "default" (every released model) and the scaled types of the installed transformers (linear, dynamic, yarn, ...)
ROPE_TYPES = ("default", *(name for name in ROPE_INIT_FUNCTIONS if name != "default"))
# the scaled types that take a `factor`
ROPE_TYPES_WITH_FACTOR = ("linear", "dynamic", "yarn", "llama3")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")


def _sub_config(name: str, value, default_model_type: str | None = None, config_class=None):
    """A sub-configuration from a config object, a dict (`model_type` picks the class) or None (the modality is
    absent)."""
    if value is None or isinstance(value, PreTrainedConfig):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"`{name}` must be a dict, a configuration object or None, got {type(value).__name__}.")
    value = dict(value)
    model_type = value.pop("model_type", default_model_type)
    if config_class is not None:
        return config_class(**value)
    return CONFIG_MAPPING[model_type](**value)


class UniMoETextConfig(PreTrainedConfig):
    r"""
    The language model of Uni-MoE: a LLaMA decoder whose feed-forward blocks are routed experts in the layers named by
    `moe_layers` and dense LLaMA MLPs elsewhere.

    Args (beyond the usual LLaMA ones):
        rope_parameters (`dict`, *optional*): `{"rope_type": "default", "rope_theta": 10000.0}` (the released models),
            or a scaled RoPE of transformers (`"linear"`, `"dynamic"`, `"yarn"`, `"longrope"`, `"llama3"`, with their
            parameters, e.g. `"factor"`). The legacy `rope_theta=` and `rope_scaling=` keywords are merged into it.
        num_experts (`int`): experts per MoE layer.
        num_experts_per_tok (`int`): experts each token is routed to (top-k).
        moe_layers (`str` or `list[int]`): `"all"`, `"even"` (layers 0, 2, 4, ...; odd layers keep a dense MLP, the
            released "interval" variants) or an explicit list of layer indices.
        router_aux_loss_coef (`float`): weight of the GShard load-balancing loss added to the LM loss.
        router_z_loss_coef (`float`): weight of the router z-loss (ST-MoE) added to the LM loss.
        output_router_logits (`bool`): return router logits and add the auxiliary losses to the loss.
        capacity_factor (`float`, *optional*): expert capacity as a multiple of `tokens * k / num_experts`; tokens over
            capacity are dropped (GShard). `None` (default) is dropless, as in every released model.
    """

    model_type = "unimoe_text"
    base_config_key = "text_config"
    keys_to_ignore_at_inference = ["past_key_values"]
    # Tensor parallel plan (`from_pretrained(..., tp_plan="auto")` under torchrun): the attention heads and every
    # expert's (and dense MLP's) intermediate units are split across the ranks; gate/up/q/k/v by output rows, down/o
    # by input columns, so each block costs one all-reduce. Every expert is sharded the same way (expert-wise tensor
    # parallel, as transformers 4.x planned Mixtral's per-expert layers). Routers and norms are replicated.
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
        "layers.*.mlp.experts.*.gate_proj": "colwise",
        "layers.*.mlp.experts.*.up_proj": "colwise",
        "layers.*.mlp.experts.*.down_proj": "rowwise",
    }

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 4096,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-5,
        use_cache: bool = True,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | list[int] | None = 2,
        tie_word_embeddings: bool = False,
        rope_parameters: dict | None = None,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        mlp_bias: bool = False,
        num_experts: int = 4,
        num_experts_per_tok: int = 2,
        moe_layers: str | list[int] = "all",
        router_aux_loss_coef: float = 0.0,
        router_z_loss_coef: float = 0.0,
        output_router_logits: bool = False,
        capacity_factor: float | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = hidden_size // num_attention_heads if head_dim is None else head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.mlp_bias = mlp_bias
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_layers = list(moe_layers) if isinstance(moe_layers, tuple) else moe_layers
        self.router_aux_loss_coef = router_aux_loss_coef
        self.router_z_loss_coef = router_z_loss_coef
        self.output_router_logits = output_router_logits
        self.capacity_factor = capacity_factor
        rope_theta = kwargs.pop("rope_theta", None)
        rope_scaling = kwargs.pop("rope_scaling", None)
        rope_parameters = dict(rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
        if rope_theta is not None:
            rope_parameters["rope_theta"] = float(rope_theta)
        if rope_scaling:  # transformers 4.x's name; its "type" is "rope_type"
            rope_scaling = dict(rope_scaling)
            rope_parameters["rope_type"] = rope_scaling.pop("rope_type", rope_scaling.pop("type", "default"))
            rope_parameters.update(rope_scaling)
        rope_type = rope_parameters.get("rope_type", "default")
        _check_choice("rope_parameters['rope_type']", rope_type, ROPE_TYPES)
        if rope_type in ROPE_TYPES_WITH_FACTOR and "factor" not in rope_parameters:
            raise ValueError(
                f"RoPE type {rope_type!r} needs a scaling factor, but `rope_parameters` is {rope_parameters}. Add "
                '"factor" (e.g. 2.0 for twice the trained context).'
            )
        self.rope_parameters = rope_parameters
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self._validate()

    def _validate(self):
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be a multiple of `num_key_value_heads` "
                f"({self.num_key_value_heads})."
            )
        if self.num_experts < 1:
            raise ValueError(f"`num_experts` must be at least 1, got {self.num_experts}.")
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"`num_experts_per_tok` (top-k) must be between 1 and `num_experts` ({self.num_experts}), got "
                f"{self.num_experts_per_tok}. Lower `num_experts_per_tok` or raise `num_experts`."
            )
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise ValueError(
                f"`capacity_factor` must be a positive number, or None for dropless routing; got "
                f"{self.capacity_factor!r}."
            )
        _ = self.moe_layer_indices  # validates `moe_layers`

    @property
    def moe_layer_indices(self) -> list[int]:
        """Indices of the decoder layers whose MLP is a sparse MoE block."""
        pattern, n = self.moe_layers, self.num_hidden_layers
        if isinstance(pattern, str):
            _check_choice("moe_layers", pattern, MOE_LAYER_PATTERNS)
            return list(range(n)) if pattern == "all" else list(range(0, n, 2))
        if not isinstance(pattern, (list, tuple)) or not all(isinstance(i, int) for i in pattern):
            raise ValueError(
                f"`moe_layers` must be one of {list(MOE_LAYER_PATTERNS)} or a list of layer indices, got {pattern!r}."
            )
        bad = [i for i in pattern if not 0 <= i < n]
        if bad or len(set(pattern)) != len(pattern):
            raise ValueError(
                f"`moe_layers` lists layer indices {bad or pattern} that are out of range or repeated; the model has "
                f"{n} layers (valid indices 0..{n - 1}, each at most once)."
            )
        return sorted(pattern)


def _text_config_field(name: str) -> property:
    """A top-level config attribute that reads and writes `text_config.<name>` (as MoE users set them on Mixtral)."""

    def get(self):
        return getattr(self.text_config, name)

    def set(self, value):
        setattr(self.text_config, name, value)

    return property(get, set, doc=f"`text_config.{name}`, readable and settable here.")


class UniMoEConfig(PreTrainedConfig):
    r"""
    Configuration of a Uni-MoE model: the MoE language model plus the modality towers and connectors that are present.
    A modality whose sub-config is `None` builds no tower.

    Args:
        text_config (`UniMoETextConfig` or `dict`): the language model.
        vision_config (`CLIPVisionConfig` or `dict`, *optional*): CLIP tower for images and video frames.
        speech_config (`WhisperConfig` or `dict`, *optional*): Whisper; its encoder is the speech tower and its decoder
            the query transformer of the speech connector.
        sound_config (`UniMoEBEATsConfig` or `dict`, *optional*): BEATs tower for sounds.
        sound_qformer_config (`Blip2QFormerConfig` or `dict`, *optional*): the Q-Former of the sound connector.
        image_token_id / video_token_id / speech_token_id / sound_token_id (`int`): placeholder token ids for images,
            videos, speech (Whisper path) and sounds (BEATs path). Required for each tower that is present.
        vision_feature_layer (`int`): CLIP hidden layer fed to the projector (CLS token dropped).
        projector_hidden_act (`str`): activation of the `mlp2x_gelu` vision projector.
        num_video_frames (`int`): frames sampled per video (their features are mean-pooled).
        video_pooling (`str`): how a video's projected frames become its tokens: "mean" (the released models; the
            mean cannot tell a shape moving left from one moving right) or "weighted" (learned per-frame, per-channel
            weights, initialised to a mean tilted towards the last frames in half of the channels and the first
            frames in the others; the `tiny` preset uses it).
        num_speech_query_tokens / num_sound_query_tokens (`int`): learned queries, i.e. LLM tokens per audio chunk.
        max_sound_chunks (`int`): most chunks one sound is cut into.
        audio_chunk_seconds (`int`): length of one audio chunk (speech and sound). The released models use 30 s,
            Whisper's window; the Whisper encoder then has `max_source_positions = 50 * audio_chunk_seconds`. The
            `tiny` preset uses 3 s.
        auto_map (`dict`, *optional*): the Auto classes of the saved folder's remote code (default: `AUTO_MAP`).

    The earlier names `audio_token_id`, `audio_config` and `audio_qformer_config` (`LEGACY_NAMES`) are accepted for
    `speech_token_id`, `sound_config` and `sound_qformer_config`, so folders saved with them load.
    """

    model_type = "unimoe"
    attribute_map = dict(LEGACY_NAMES)
    keys_to_ignore_at_inference = ["past_key_values"]
    sub_configs = {
        "text_config": UniMoETextConfig,
        "vision_config": AutoConfig,
        "speech_config": AutoConfig,
        "sound_config": UniMoEBEATsConfig,
        "sound_qformer_config": AutoConfig,
    }
    # the language model's MoE settings, also at the top level (from_pretrained(..., output_router_logits=True) too)
    num_experts = _text_config_field("num_experts")
    num_experts_per_tok = _text_config_field("num_experts_per_tok")
    output_router_logits = _text_config_field("output_router_logits")
    router_aux_loss_coef = _text_config_field("router_aux_loss_coef")
    router_z_loss_coef = _text_config_field("router_z_loss_coef")

    def __init__(
        self,
        text_config: dict | PreTrainedConfig | None = None,
        vision_config: dict | PreTrainedConfig | None = None,
        speech_config: dict | PreTrainedConfig | None = None,
        sound_config: dict | PreTrainedConfig | None = None,
        sound_qformer_config: dict | PreTrainedConfig | None = None,
        image_token_id: int | None = None,
        video_token_id: int | None = None,
        speech_token_id: int | None = None,
        sound_token_id: int | None = None,
        vision_feature_layer: int = -2,
        projector_hidden_act: str = "gelu",
        num_video_frames: int = 8,
        video_pooling: str = "mean",
        num_speech_query_tokens: int = 50,
        num_sound_query_tokens: int = 50,
        max_sound_chunks: int = 20,
        audio_chunk_seconds: int = 30,
        tie_word_embeddings: bool = False,
        auto_map: dict | None = None,
        **kwargs,
    ):
        for key in UNUSED_KEYS:
            kwargs.pop(key, None)
        legacy = {new: kwargs.pop(old) for old, new in LEGACY_NAMES.items() if old in kwargs}
        speech_token_id = legacy.get("speech_token_id", speech_token_id)
        sound_config = legacy.get("sound_config", sound_config)
        sound_qformer_config = legacy.get("sound_qformer_config", sound_qformer_config)
        self.text_config = _sub_config(
            "text_config", {} if text_config is None else text_config, None, UniMoETextConfig
        )
        self.vision_config = _sub_config("vision_config", vision_config, "clip_vision_model")
        self.speech_config = _sub_config("speech_config", speech_config, "whisper")
        self.sound_config = _sub_config("sound_config", sound_config, None, UniMoEBEATsConfig)
        if self.sound_config is not None and sound_qformer_config is None:
            sound_qformer_config = {"encoder_hidden_size": self.sound_config.encoder_embed_dim, "hidden_size": 768}
        self.sound_qformer_config = _sub_config("sound_qformer_config", sound_qformer_config, "blip_2_qformer")
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.speech_token_id = speech_token_id
        self.sound_token_id = sound_token_id
        self.vision_feature_layer = vision_feature_layer
        self.projector_hidden_act = projector_hidden_act
        self.num_video_frames = num_video_frames
        self.video_pooling = video_pooling
        self.num_speech_query_tokens = num_speech_query_tokens
        self.num_sound_query_tokens = num_sound_query_tokens
        self.max_sound_chunks = max_sound_chunks
        self.audio_chunk_seconds = audio_chunk_seconds
        self.auto_map = dict(AUTO_MAP) if auto_map is None else auto_map
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self._validate()

    def _validate(self):
        _check_choice("video_pooling", self.video_pooling, VIDEO_POOLING)
        vocab = self.text_config.vocab_size
        for name, tower in MODALITIES.values():
            token_id = getattr(self, name)
            if getattr(self, tower) is not None and token_id is None:
                raise ValueError(
                    f"`{name}` is required when its tower is configured (`{tower}` is set); got None. Set it to the "
                    "id of the placeholder token in the tokenizer."
                )
            if token_id is not None and not 0 <= token_id < vocab:
                raise ValueError(f"`{name}` must be a token id in [0, {vocab}) (the text vocabulary), got {token_id}.")
        ids = list(self.placeholder_token_ids.values())
        if len(set(ids)) != len(ids):
            raise ValueError(f"Placeholder token ids must be distinct, got {self.placeholder_token_ids}.")
        for name in (
            "num_video_frames",
            "num_speech_query_tokens",
            "num_sound_query_tokens",
            "max_sound_chunks",
            "audio_chunk_seconds",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        if self.vision_config is not None:
            n_layers = self.vision_config.num_hidden_layers
            if not -n_layers - 1 <= self.vision_feature_layer <= n_layers:
                raise ValueError(
                    f"`vision_feature_layer` must index one of the {n_layers + 1} CLIP hidden states, got "
                    f"{self.vision_feature_layer}."
                )
        if self.speech_config is not None and self.speech_config.max_source_positions != 50 * self.audio_chunk_seconds:
            raise ValueError(
                f"The Whisper encoder takes {self.speech_config.max_source_positions} positions "
                f"(`speech_config.max_source_positions`), i.e. {self.speech_config.max_source_positions / 50:g} s, but "
                f"`audio_chunk_seconds` is {self.audio_chunk_seconds}. Set max_source_positions to 50 x "
                f"audio_chunk_seconds = {50 * self.audio_chunk_seconds}."
            )
        if self.speech_config is not None and self.num_speech_query_tokens > self.speech_config.max_target_positions:
            raise ValueError(
                f"`num_speech_query_tokens` ({self.num_speech_query_tokens}) exceeds the Whisper decoder's "
                f"`max_target_positions` ({self.speech_config.max_target_positions})."
            )

    @property
    def placeholder_token_ids(self) -> dict[str, int]:
        """The placeholder token id of each modality that has one, e.g. `{"image": 3, "video": 5, "speech": 4,
        "sound": 6}`: their embeddings are replaced by media features, and they are never generated."""
        ids = {modality: getattr(self, name) for modality, (name, _) in MODALITIES.items()}
        return {modality: token_id for modality, token_id in ids.items() if token_id is not None}

    @property
    def image_seq_length(self) -> int | None:
        """LLM tokens per image (and per video): CLIP patches without the CLS token."""
        if self.vision_config is None:
            return None
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "UniMoEConfig":
        """Build the configuration of a released Uni-MoE variant, or the `tiny` test model.

        Keyword arguments override top-level fields (e.g. `from_preset("tiny", num_video_frames=4)`);
        `audio_chunk_seconds` also sets the preset's Whisper `max_source_positions` to match.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}. Available presets: {sorted(PRESETS)}.")
        preset = copy.deepcopy(PRESETS[name])
        preset.update(kwargs)
        if "audio_chunk_seconds" in kwargs and isinstance(preset.get("speech_config"), dict):
            preset["speech_config"]["max_source_positions"] = 50 * int(kwargs["audio_chunk_seconds"])
        return cls(**preset)


# ---------------------------------------------------------------------------------------------------------------------
# Presets: the released v1 shapes (LLaMA-2-7B / Vicuna-7B, CLIP ViT-L/14-336, whisper-small, BEATs iter3+ + Q-Former)
# and `tiny`, a few-MB model with every modality for tests and demos.
# ---------------------------------------------------------------------------------------------------------------------
_CLIP_L_336 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
_WHISPER_SMALL = {
    "model_type": "whisper",
    "d_model": 768,
    "encoder_layers": 12,
    "decoder_layers": 12,
    "encoder_attention_heads": 12,
    "decoder_attention_heads": 12,
    "encoder_ffn_dim": 3072,
    "decoder_ffn_dim": 3072,
    "vocab_size": 51865,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
}
_QFORMER_BASE = {"model_type": "blip_2_qformer", "hidden_size": 768, "encoder_hidden_size": 768}


def _llama7b(num_experts=4, moe_layers="all", **kwargs):
    # vocab 32000 + the added <image>, <audio>, <video> special tokens
    return {
        "vocab_size": 32003,
        "num_experts": num_experts,
        "num_experts_per_tok": 2,
        "moe_layers": moe_layers,
        **kwargs,
    }


_PLACEHOLDERS_7B = {"image_token_id": 32000, "speech_token_id": 32001, "video_token_id": 32002}

PRESETS = {
    "uni-moe-speech-4e": {
        "text_config": _llama7b(),
        "vision_config": _CLIP_L_336,
        "speech_config": _WHISPER_SMALL,
        **_PLACEHOLDERS_7B,
    },
    "uni-moe-audio-4e": {
        "text_config": _llama7b(moe_layers="even"),
        "vision_config": _CLIP_L_336,
        "sound_config": {},
        "sound_qformer_config": _QFORMER_BASE,
        "image_token_id": 32000,
        "sound_token_id": 32001,  # the audio variant's `<audio>` placeholder feeds BEATs
        "video_token_id": 32002,
    },
    "uni-moe-speech-v1.5": {
        "text_config": _llama7b(moe_layers="even"),
        "vision_config": _CLIP_L_336,
        "speech_config": _WHISPER_SMALL,
        **_PLACEHOLDERS_7B,
    },
    "uni-moe-8e": {
        "text_config": _llama7b(num_experts=8, router_aux_loss_coef=0.01),
        "vision_config": _CLIP_L_336,
        "speech_config": _WHISPER_SMALL,
        **_PLACEHOLDERS_7B,
    },
    "tiny": {
        "text_config": {
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 176,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,  # head size 32: vLLM's CPU attention has no kernel for 16
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_layers": "all",
            "router_aux_loss_coef": 0.01,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 48,  # the synthetic suite's 64 px images are resized: 36 patches of 8 x 8 px
            "patch_size": 8,
            "projection_dim": 64,
        },
        "speech_config": {
            "model_type": "whisper",
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
            "vocab_size": 16,  # the decoder's token embeddings are unused: queries come as inputs_embeds
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "decoder_start_token_id": 1,
            "num_mel_bins": 80,
            "max_source_positions": 1500,
            "max_target_positions": 32,
            # the tiny towers train from scratch: with Whisper's 0.02 the random encoder's output is ~98 % its position
            # embeddings and the query transformer's output barely depends on the audio
            "init_std": 0.1,
        },
        "sound_config": {
            "embed_dim": 64,
            "encoder_layers": 2,
            "encoder_embed_dim": 64,
            "encoder_ffn_embed_dim": 128,
            "encoder_attention_heads": 4,
            "conv_pos": 16,
            "conv_pos_groups": 4,
            "num_buckets": 32,
            "max_distance": 128,
        },
        "sound_qformer_config": {
            "model_type": "blip_2_qformer",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "encoder_hidden_size": 64,
            "initializer_range": 0.1,  # as the speech path's init_std
        },
        # ids 0-2 are <unk>/<pad>, <s>, </s>; the placeholders follow
        "image_token_id": 3,
        "speech_token_id": 4,
        "video_token_id": 5,
        "sound_token_id": 6,
        "num_video_frames": 8,
        "video_pooling": "weighted",
        "num_speech_query_tokens": 8,
        "num_sound_query_tokens": 8,
    },
}


UniMoEConfig.register_for_auto_class()  # a saved config carries this file (and its siblings) and `auto_map`

__all__ = ["UniMoEConfig", "UniMoETextConfig", "UniMoEBEATsConfig"]
