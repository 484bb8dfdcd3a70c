# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE (arXiv 2405.11273): a LLaMA decoder with routed experts and image, video, speech and sound towers.

This file is uploaded to the Hub and loaded with `trust_remote_code=True`: it imports only torch, transformers, the
standard library and its siblings `configuration_unimoe.py` and `modeling_beats.py` (the BEATs sound tower). It reads
in dependency order: LLaMA building blocks, the router and the sparse MoE block, the decoder layer, the connectors and
the video pooler, the pretrained-model base, the text model, the auxiliary losses, the multimodal model and the causal
LM head.
"""

import copy
import functools
import importlib.util
import inspect
import logging as std_logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel
from transformers.models.clip.modeling_clip import CLIPVisionModel
from transformers.models.whisper.modeling_whisper import WhisperDecoder, WhisperEncoder
from transformers.utils import can_return_tuple, logging

from .configuration_unimoe import MODALITIES, UniMoEConfig, UniMoETextConfig
from .modeling_beats import (
    UniMoEBEATsModel,
    UniMoEBEATsMultiheadAttention,
    UniMoEBEATsPositionalConv,
)


logger = logging.get_logger(__name__)

# --- transformers versions ---------------------------------------------------------------------------------------------
# This file runs inside whatever transformers the user has, from 4.57 to the newest 5.x. What differs between them is
# detected here, once, by feature (never by version string).
try:  # 5.x: initialisers that leave weights loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # 4.x: torch's own (4.x only initialises the weights a checkpoint lacks)

    class init:  # noqa: N801 (a stand-in for the `transformers.initialization` module)
        normal_ = staticmethod(nn.init.normal_)
        zeros_ = staticmethod(nn.init.zeros_)
        ones_ = staticmethod(nn.init.ones_)

        @staticmethod
        @torch.no_grad()
        def copy_(tensor, other):
            return tensor.copy_(other)


# Output recording (`_can_record_outputs`): transformers 5.x splits it into `merge_with_config_defaults` (use_cache
# from the config) and `capture_outputs` (hooks that collect the recorded outputs); 4.57 - 5.0 have one decorator,
# `check_model_inputs`, doing both.
try:
    from transformers.utils.generic import merge_with_config_defaults
    from transformers.utils.output_capturing import OutputRecorder, capture_outputs

    def record_outputs(forward):
        return merge_with_config_defaults(capture_outputs(forward))

except ImportError:
    from transformers.utils.generic import OutputRecorder
    from transformers.utils.generic import check_model_inputs as record_outputs


# transformers 5.x matches `_keep_in_fp32_modules` entries as regular expressions over module names; 4.x wants bare
# module names present in every model class, which the optional towers cannot promise
_KEEP_IN_FP32_PATTERNS = importlib.util.find_spec("transformers.core_model_loading") is not None
_MASK_PARAMETERS = inspect.signature(create_causal_mask).parameters


def _rope_functions_config(config):
    """The config transformers' RoPE functions read: 5.x reads `rope_parameters`; 4.x reads `rope_scaling` (the same
    dict) and `rope_theta`, which a copy of the config carries."""
    if hasattr(config, "standardize_rope_params"):
        return config
    legacy = copy.copy(config)
    legacy.rope_scaling = dict(config.rope_parameters)
    legacy.rope_theta = float(config.rope_parameters.get("rope_theta", 10000.0))
    return legacy


# 5.24 renamed the cache argument of forward() and the cache field of model outputs from `past_key_values` to `cache`;
# generate() passes and reads the name of the installed release.
_GENERATE_PARAMETERS = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
CACHE_NAME = "cache" if "cache" in _GENERATE_PARAMETERS else "past_key_values"


def _causal_mask(config, inputs_embeds, attention_mask, cache, position_ids, cache_position):
    """transformers' `create_causal_mask`, called with the argument names of the installed release."""
    kwargs = {"config": config, "attention_mask": attention_mask, "position_ids": position_ids}
    kwargs["inputs_embeds" if "inputs_embeds" in _MASK_PARAMETERS else "input_embeds"] = inputs_embeds
    kwargs["cache" if "cache" in _MASK_PARAMETERS else "past_key_values"] = cache
    if "cache_position" in _MASK_PARAMETERS:  # 4.x - 5.1x
        kwargs["cache_position"] = cache_position
    return create_causal_mask(**kwargs)


def _cache_position(cache, num_tokens: int, device) -> torch.Tensor:
    """Positions in the cache of the current tokens: [num_tokens]."""
    past_seen_tokens = cache.get_seq_length() if cache is not None else 0
    return torch.arange(num_tokens, device=device) + past_seen_tokens


# Each tower's name prefix (`vision_tower`, ...) and the config field that builds it.
TOWER_CONFIGS = {"vision": "vision_config", "speech": "speech_config", "sound": "sound_config"}
# The media inputs of the processor (and the training collator); generate() passes them to the prefill step only.
MEDIA_INPUTS = ("pixel_values", "pixel_values_videos", "input_features", "sound_features", "sound_features_mask")


@dataclass
class UniMoEModelOutputWithPast(ModelOutput):
    """Output of [`UniMoETextModel`] and [`UniMoEModel`]. The cache is in `past_key_values` (transformers < 5.24) or
    `cache` (5.24 and newer), as the installed generate() expects.

    router_logits: one `[tokens, num_experts]` tensor per MoE layer (when `output_router_logits=True`).
    """

    last_hidden_state: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class UniMoECausalLMOutputWithPast(ModelOutput):
    """Output of [`UniMoEForCausalLM`]. `loss` includes `router_aux_loss_coef * aux_loss + router_z_loss_coef *
    z_loss` when router logits are requested. The cache field is named as in [`UniMoEModelOutputWithPast`]."""

    loss: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


# --- LLaMA building blocks ---------------------------------------------------------------------------------------------
# Uni-MoE's norms, rotary embedding, attention and MLPs are LLaMA-2's (same parameter names as transformers' LLaMA).


class UniMoERMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class UniMoERotaryEmbedding(nn.Module):
    """RoPE: cos / sin of `position * inv_freq`, computed in float32. The default type (every released model) has
    `inv_freq = theta^(-2i / head_dim)`; the scaled types of `rope_parameters["rope_type"]` (linear, dynamic, yarn,
    longrope, llama3) come from transformers' RoPE functions, as in its LLaMA."""

    def __init__(self, config: UniMoETextConfig):
        super().__init__()
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        self.config = config if self.rope_type == "default" else _rope_functions_config(config)
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        self.rope_init_fn = (
            self.compute_default_rope_parameters
            if self.rope_type == "default"
            else ROPE_INIT_FUNCTIONS[self.rope_type]
        )
        inv_freq, self.attention_scaling = self.rope_init_fn(self.config, None)  # 4.x wants the device
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)  # for the dynamic types

    @staticmethod
    def compute_default_rope_parameters(config: UniMoETextConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        """The inverse frequencies [head_dim / 2] of the default RoPE, and the scale of cos / sin (1)."""
        base = float(config.rope_parameters.get("rope_theta", 10000.0))
        dim = config.head_dim
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), 1.0

    @torch.no_grad()
    @dynamic_rope_update  # the dynamic types recompute inv_freq for long inputs; a no-op for the others
    def forward(self, x: torch.Tensor, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1).to(x.device)
        positions = position_ids[:, None, :].float()  # [batch, 1, seq]
        device_type = x.device.type if x.device.type != "mps" else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):  # force float32
            freqs = (inv_freq @ positions).transpose(1, 2)  # [batch, seq, head_dim / 2]
            emb = torch.cat((freqs, freqs), dim=-1)  # [batch, seq, head_dim]
            cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [batch, 1, seq, head_dim]: broadcast over heads
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[batch, kv_heads, seq, head_dim] -> [batch, kv_heads * n_rep, seq, head_dim]."""
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling  # [batch, heads, q, kv]
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask[:, :, :, : key_states.shape[-2]]
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)  # [batch, heads, q, head_dim]
    return attn_output.transpose(1, 2).contiguous(), attn_weights  # [batch, q, heads, head_dim]


class UniMoEAttention(nn.Module):
    """LLaMA multi-head (grouped-query) self-attention through transformers' attention interface."""

    def __init__(self, config: UniMoETextConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        cache_position: torch.LongTensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # [batch, heads, seq, head_dim]
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            # `cache_position` is read by the static caches of transformers < 5.19 and ignored by newer ones
            cache_kwargs = {"sin": sin, "cos": cos, "cache_position": cache_position}
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, cache_kwargs)

        if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):  # transformers 5.x
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        elif self.config._attn_implementation in (None, "eager"):  # 4.x
            attention_interface = eager_attention_forward
        else:
            attention_interface = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # [batch, seq, heads * head_dim]
        return self.o_proj(attn_output), attn_weights


class UniMoEMLP(nn.Module):
    """SwiGLU FFN: the dense MLP of non-MoE layers and every expert (`gate_proj`, `up_proj`, `down_proj`)."""

    def __init__(self, config: UniMoETextConfig):
        super().__init__()
        bias = config.mlp_bias
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class UniMoETopKRouter(nn.Module):
    """Router: logits `hidden @ weight.T` (no bias; `mlp.gate.weight` in the released models), top-k on the logits,
    softmax over the k selected logits (the same as softmax over all experts renormalised to the top-k), deterministic.
    With `capacity_factor` set, assignments over an expert's capacity are dropped (GShard)."""

    def __init__(self, config: UniMoETextConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.capacity_factor = config.capacity_factor
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear, for a router built on its own

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[tokens, hidden] -> router logits [tokens, E], routing weights [tokens, k], selected experts [tokens, k]."""
        router_logits = F.linear(hidden_states.to(self.weight.dtype), self.weight)  # the router may be kept in fp32
        top_logits, selected_experts = torch.topk(router_logits.float(), self.top_k, dim=-1)
        routing_weights = top_logits.softmax(dim=-1)
        if self.capacity_factor is not None:
            routing_weights = self._drop_over_capacity(routing_weights, selected_experts)
        return router_logits, routing_weights.to(hidden_states.dtype), selected_experts

    def _drop_over_capacity(self, routing_weights: torch.Tensor, selected_experts: torch.Tensor) -> torch.Tensor:
        """GShard capacity: each expert takes at most ceil(capacity_factor * tokens * k / E) assignments, first choices
        (in token order) before second choices; the kept weights of a token are renormalised (as DeepSpeed does)."""
        num_tokens = selected_experts.shape[0]
        capacity = math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts)
        one_hot = F.one_hot(selected_experts.t().reshape(-1), self.num_experts)  # [k * tokens, E], choice-major
        queue_position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1  # [k * tokens]
        keep = (queue_position < capacity).view(self.top_k, num_tokens).t()  # [tokens, k]
        routing_weights = routing_weights * keep
        return routing_weights / routing_weights.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).eps)


class UniMoESparseMoeBlock(nn.Module):
    """Top-k routed SwiGLU experts (no shared expert), routed by a [`UniMoETopKRouter`] (`gate`).

    Experts are separate `nn.Linear` modules (`experts.{e}.{gate,up,down}_proj`, the released key layout), so
    bitsandbytes quantizes them and PEFT LoRA targets them by name. Dispatch: one stable sort groups the `tokens * k`
    assignments by expert, each expert runs once on its contiguous slice, one `index_add_` scatters the weighted
    outputs back.
    """

    def __init__(self, config: UniMoETextConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.gate = UniMoETopKRouter(config)
        self.experts = nn.ModuleList([UniMoEMLP(config) for _ in range(config.num_experts)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, hidden_size = hidden_states.shape
        hidden_states = hidden_states.reshape(-1, hidden_size)  # [tokens, hidden]
        _, routing_weights, selected_experts = self.gate(hidden_states)
        if torch.compiler.is_compiling():
            output = self._dense_dispatch(hidden_states, routing_weights, selected_experts)
        else:
            output = self._sparse_dispatch(hidden_states, routing_weights, selected_experts)
        return output.view(batch_size, seq_len, hidden_size)

    def _sparse_dispatch(self, hidden_states, routing_weights, selected_experts) -> torch.Tensor:
        """Each expert runs once on the tokens routed to it; reads the per-expert token counts on the host."""
        if hidden_states.shape[0] == 1:  # one token (batch-1 decoding): its k experts, nothing to sort or scatter
            return sum(
                self.experts[e](hidden_states) * routing_weights[:, j : j + 1]
                for j, e in enumerate(selected_experts[0].tolist())
            )
        flat_experts = selected_experts.reshape(-1)  # [tokens * k]
        order = flat_experts.argsort(stable=True)  # assignments grouped by expert
        token_index = order // self.top_k  # [tokens * k]: the token of each sorted assignment
        counts = torch.bincount(flat_experts, minlength=self.num_experts).tolist()
        expert_inputs = hidden_states[token_index]  # [tokens * k, hidden]
        expert_outputs = torch.cat(
            [self.experts[e](chunk) for e, chunk in enumerate(expert_inputs.split(counts)) if counts[e] > 0]
        )
        expert_outputs = expert_outputs * routing_weights.reshape(-1)[order].unsqueeze(-1)
        return torch.zeros_like(hidden_states).index_add_(0, token_index, expert_outputs)

    def _dense_dispatch(self, hidden_states, routing_weights, selected_experts) -> torch.Tensor:
        """Every expert on every token, weighted by its routing weight (0 where not selected): no data-dependent
        shapes, so `torch.compile` captures it as one graph. Used while compiling (the one-token decode steps)."""
        # [tokens, k, E] one-hot of the choices, weighted and summed over k -> [tokens, E]
        weights = (F.one_hot(selected_experts, self.num_experts) * routing_weights.unsqueeze(-1)).sum(1)
        output = torch.zeros_like(hidden_states)
        for e, expert in enumerate(self.experts):
            output = output + expert(hidden_states) * weights[:, e : e + 1]
        return output


class UniMoEDecoderLayer(GradientCheckpointingLayer):
    """LLaMA decoder layer whose MLP is a [`UniMoESparseMoeBlock`] in MoE layers and a dense [`UniMoEMLP`] elsewhere."""

    def __init__(self, config: UniMoETextConfig, layer_idx: int):
        super().__init__()
        self.is_moe = layer_idx in config.moe_layer_indices
        self.self_attn = UniMoEAttention(config=config, layer_idx=layer_idx)
        self.mlp = UniMoESparseMoeBlock(config) if self.is_moe else UniMoEMLP(config)
        self.input_layernorm = UniMoERMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = UniMoERMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, _ = self.self_attn(
            hidden_states=hidden_states,
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            **kwargs,
        )
        hidden_states = residual + hidden_states

        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        return residual + hidden_states


# --- connectors ------------------------------------------------------------------------------------------------------


class UniMoEMultiModalProjector(nn.Module):
    """`mlp2x_gelu`: Linear(vision hidden -> LLM hidden), GELU, Linear(LLM hidden -> LLM hidden).

    `frame_weights` [num_video_frames, LLM hidden] are the learned per-frame, per-channel weights that
    [`UniMoEVideoPooler`] pools a video's projected frames with when `config.video_pooling="weighted"` (not in the
    released models); None otherwise. They are kept here, next to the projection, as in the saved checkpoints
    (`vision_projector.frame_weights`)."""

    def __init__(self, config: UniMoEConfig):
        super().__init__()
        hidden_size = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(hidden_size, hidden_size)
        frame_weights = None
        if config.video_pooling == "weighted":
            frame_weights = nn.Parameter(torch.zeros(config.num_video_frames, hidden_size))
        self.register_parameter("frame_weights", frame_weights)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class UniMoEVideoPooler(nn.Module):
    """Pools a video's projected frames into the tokens of one image: the mean over frames
    (`config.video_pooling="mean"`, the released models), or a weighted sum with learned per-frame, per-channel weights
    (`"weighted"`), which can tell the frames' order."""

    def __init__(self, config: UniMoEConfig):
        super().__init__()
        self.weighted = config.video_pooling == "weighted"
        self.num_frames = config.num_video_frames

    def forward(self, features: torch.Tensor, frame_weights: torch.Tensor | None = None) -> torch.Tensor:
        """[videos, frames, patches, hidden] (and for weighted pooling `frame_weights` [frames, hidden]) -> [videos,
        patches, hidden]."""
        if not self.weighted:
            return features.mean(dim=1)
        if features.shape[1] != self.num_frames:
            raise ValueError(
                f"`pixel_values_videos` has {features.shape[1]} frames per video, but this model learned its frame "
                f"weights for exactly {self.num_frames} (`config.num_video_frames`). Sample {self.num_frames} frames "
                "per video (the processor does)."
            )
        return (features * frame_weights[None, :, None, :].to(features.dtype)).sum(dim=1)


class UniMoESpeechConnector(nn.Module):
    """Whisper decoder as a query transformer: learned queries (plus Whisper's decoder positions, causal
    self-attention) cross-attend to one 30 s chunk's encoder output; a linear projector maps them to the LLM."""

    def __init__(self, config: UniMoEConfig):
        super().__init__()
        d_model = config.speech_config.d_model
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_speech_query_tokens, d_model))
        self.decoder = WhisperDecoder(config.speech_config)
        self.projector = nn.Linear(d_model, config.text_config.hidden_size)

    def forward(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        queries = self.query_tokens.expand(encoder_hidden_states.shape[0], -1, -1)  # [chunks, Q, d_model]
        hidden_states = self.decoder(
            inputs_embeds=queries, encoder_hidden_states=encoder_hidden_states, use_cache=False
        ).last_hidden_state
        return self.projector(hidden_states)  # [chunks, Q, hidden]


class UniMoESoundConnector(nn.Module):
    """BLIP-2 Q-Former over BEATs features: learned queries cross-attend to one chunk's encoder output, then a linear
    projector maps them to the LLM."""

    def __init__(self, config: UniMoEConfig):
        super().__init__()
        qformer_hidden = config.sound_qformer_config.hidden_size
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_sound_query_tokens, qformer_hidden))
        self.qformer = Blip2QFormerModel(config.sound_qformer_config)
        self.projector = nn.Linear(qformer_hidden, config.text_config.hidden_size)

    def forward(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        queries = self.query_tokens.expand(encoder_hidden_states.shape[0], -1, -1)  # [chunks, Q, qformer_hidden]
        hidden_states = self.qformer(
            query_embeds=queries, encoder_hidden_states=encoder_hidden_states
        ).last_hidden_state
        return self.projector(hidden_states)  # [chunks, Q, hidden]


def _keep_unsupported_cpu_4bit_layers_unpacked(model: nn.Module) -> None:
    """bitsandbytes' fast CPU path for 4-bit layers in eval mode (on CPUs with AVX512-BF16) repacks each weight in
    blocks of 32 output rows and whole quantization blocks per input row, and fails on other widths (e.g. the `tiny`
    preset's 176-wide FFNs); such layers stay on bitsandbytes' generic 4-bit path."""
    for module in model.modules():
        if not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        blocksize = getattr(getattr(module.weight, "quant_state", None), "blocksize", 64)
        if module.out_features % 32 or module.in_features % blocksize:
            module.support_avx512bf16_for_cpu = False


class _FirstOfEachMessage(std_logging.Filter):
    """Lets each distinct message through once."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record: std_logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _warn_once_per_message(logger_name: str) -> None:
    """bitsandbytes' 8-bit matmul warns about its input cast on every call (each layer, each token); keep the first."""
    target = std_logging.getLogger(logger_name)
    if not any(isinstance(f, _FirstOfEachMessage) for f in target.filters):
        target.addFilter(_FirstOfEachMessage())


def _fp32_module_patterns(towers, routers: bool) -> list[str] | None:
    """`_keep_in_fp32_modules` for a model with these towers (and routers): the routers, each tower and its connector
    (transformers 5.x; None on 4.x)."""
    if not _KEEP_IN_FP32_PATTERNS:
        return None
    patterns = [r".*\.mlp\.gate(?=\.|$)"] if routers else []
    if towers:
        patterns.append(rf"(?:model\.)?(?:{'|'.join(towers)})_(?:tower|projector|connector)")
    return patterns


class UniMoEPreTrainedModel(PreTrainedModel):
    config: UniMoEConfig
    config_class = UniMoEConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "UniMoEDecoderLayer",
        "CLIPEncoderLayer",
        "WhisperEncoderLayer",
        "WhisperDecoderLayer",
        "Blip2QFormerLayer",
        "UniMoEBEATsEncoderLayer",
    ]
    _skip_keys_device_placement = ["past_key_values"]
    # Never quantized (bitsandbytes & co. skip these; lm_head is skipped by transformers' default) and upcast to fp32
    # under a float16 load only: the towers and connectors (small next to the experts) and the routers (whose plain
    # weight parameter no quantizer converts anyway). Patterns match from the start of a module name, with or without
    # the `model.` prefix of UniMoEForCausalLM.
    _keep_in_fp32_modules = _fp32_module_patterns(list(TOWER_CONFIGS), routers=True)
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    # one graph for decoding: while compiling, the MoE blocks run every expert (see UniMoESparseMoeBlock)
    _can_compile_fullgraph = True
    # the media generate() may encode before prefill and hand over as `mm_encoder_outputs` (transformers >= 5.23)
    input_modalities = ("image", "video", "text")
    # what `output_hidden_states` / `output_attentions` / `output_router_logits` return, recorded from these modules
    _can_record_outputs = {
        "hidden_states": UniMoEDecoderLayer,
        "attentions": UniMoEAttention,
        "router_logits": OutputRecorder(UniMoETopKRouter, index=0),
    }

    @classmethod
    def is_custom_code(cls) -> bool:
        # transformers (5.x) skips, for remote code, every module whose own parameters are all loaded, since such code
        # may write weights in place; for modules without parameters of their own (CLIP's attention and MLP, which
        # initialise their child layers) that skip would leave missing CLIP layers with the generic init. Our
        # `_init_weights` goes through transformers' initialisers, which leave loaded weights alone, so it opts out.
        return False

    def _init_weights(self, module):
        clip = getattr(getattr(self, "model", self), "_clip", None)
        if clip is not None and type(module).__module__ == CLIPVisionModel.__module__:
            clip[0]._init_weights(module)  # CLIP's layers get CLIP's init, also when from_pretrained fills them in
            return
        super()._init_weights(module)
        std = self.config.get_text_config().initializer_range
        if isinstance(module, UniMoETopKRouter):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (UniMoESpeechConnector, UniMoESoundConnector)):
            init.normal_(module.query_tokens, mean=0.0, std=std)
        elif isinstance(module, UniMoEMultiModalProjector) and module.frame_weights is not None:
            # a mean over frames (every channel's weights sum to 1), tilted towards the last frames in even channels
            # and the first frames in odd ones, so that the frame order shows from the first step
            frames, channels = module.frame_weights.shape
            ramp = (
                torch.linspace(-1.0, 1.0, frames)[:, None]
                * torch.tensor([1.0, -1.0]).repeat(channels // 2 + 1)[:channels]
            )
            init.copy_(module.frame_weights, (1.0 + ramp) / frames)
        elif isinstance(module, UniMoEBEATsMultiheadAttention) and module.grep_a is not None:
            init.ones_(module.grep_a)
        elif isinstance(module, UniMoERotaryEmbedding):  # buffers: recomputed after a meta-device load
            inv_freq, _ = module.rope_init_fn(module.config, None)
            init.copy_(module.inv_freq, inv_freq)
            init.copy_(module.original_inv_freq, inv_freq)
        elif isinstance(module, UniMoEBEATsPositionalConv):
            weight_g, weight_v = module.parametrizations.weight.original0, module.parametrizations.weight.original1
            init.normal_(weight_v, mean=0.0, std=module.init_std)
            init.copy_(weight_g, weight_v.norm(dim=(0, 1), keepdim=True))  # weight == weight_v
            init.zeros_(module.bias)

    def post_init(self):
        # only the parts this config builds, so that every pattern names a module
        config = self.config
        towers = [name for name, sub in TOWER_CONFIGS.items() if getattr(config, sub, None) is not None]
        self._keep_in_fp32_modules = _fp32_module_patterns(towers, bool(config.get_text_config().moe_layer_indices))
        super().post_init()

    def train(self, mode: bool = True):
        super().train(mode)
        if not mode:  # from_pretrained ends with eval(); bitsandbytes picks its CPU 4-bit kernel in eval mode only
            _keep_unsupported_cpu_4bit_layers_unpacked(self)
        if any(type(module).__name__ == "Linear8bitLt" for module in self.modules()):
            _warn_once_per_message("bitsandbytes.autograd._functions")
        return self


class UniMoETextModel(UniMoEPreTrainedModel):
    """The Uni-MoE language model without its head: embeddings, decoder layers, final norm."""

    config: UniMoETextConfig
    config_class = UniMoETextConfig

    def __init__(self, config: UniMoETextConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [UniMoEDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = UniMoERMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = UniMoERotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @record_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> UniMoEModelOutputWithPast:
        r"""
        cache / past_key_values (`Cache`, *optional*): the KV cache (`cache` is the name since transformers 5.24).

        `output_hidden_states`, `output_attentions` and `output_router_logits` (keyword arguments, or the config's)
        return the input of every decoder layer and the final normed output, each layer's attention weights (eager
        attention) and each MoE layer's router logits. transformers from 5.23 on also take a list of hidden-state
        indices for `output_hidden_states` (None in the other places).
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        config = self.config
        cache = cache if cache is not None else past_key_values
        use_cache = use_cache if use_cache is not None else config.use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # the recomputed forward would append its keys and values a second time
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        cache_position = kwargs.pop("cache_position", None)  # given by generate() of transformers < 5.19
        if cache_position is None:
            cache_position = _cache_position(cache, inputs_embeds.shape[1], inputs_embeds.device)
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)

        causal_mask = _causal_mask(config, inputs_embeds, attention_mask, cache, position_ids, cache_position)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=causal_mask,
                cache=cache,
                cache_position=cache_position,
                position_ids=position_ids,
                **kwargs,
            )
        return UniMoEModelOutputWithPast(
            last_hidden_state=self.norm(hidden_states), **{CACHE_NAME: cache if use_cache else None}
        )


def _token_mask(attention_mask: torch.Tensor | None, num_tokens: int) -> torch.Tensor | None:
    """Flattened `[tokens, 1]` float mask of the current tokens (the last columns of a 2-D attention mask)."""
    if attention_mask is None or attention_mask.dim() != 2:
        return None
    batch_size = attention_mask.shape[0]
    mask = attention_mask[:, -(num_tokens // batch_size) :]  # [batch, seq] of the current forward
    return mask.reshape(-1, 1).float()


def load_balancing_loss_func(
    router_logits: tuple[torch.Tensor, ...], num_experts: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """GShard load-balancing loss, summed over MoE layers: per layer `E^2 * mean_e(me_e * ce_e)`, where `me_e` is the
    mean router probability of expert e and `ce_e` the fraction of tokens whose top-1 expert is e. Padding tokens
    (attention_mask == 0) are left out of both means."""
    total = router_logits[0].new_zeros((), dtype=torch.float32)
    for layer_logits in router_logits:
        probs = layer_logits.float().softmax(dim=-1)  # [tokens, E]
        top1 = F.one_hot(probs.argmax(dim=-1), num_experts).float()  # [tokens, E]
        mask = _token_mask(attention_mask, probs.shape[0])
        if mask is None:
            mask = torch.ones_like(probs[:, :1])
        denominator = mask.sum().clamp_min(1.0)
        mean_prob = (probs * mask).sum(0) / denominator
        top1_fraction = (top1 * mask).sum(0) / denominator
        total = total + num_experts**2 * (mean_prob * top1_fraction).mean()
    return total


def router_z_loss_func(
    router_logits: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """ST-MoE router z-loss, summed over MoE layers: per layer the mean over tokens of logsumexp(logits)^2."""
    total = router_logits[0].new_zeros((), dtype=torch.float32)
    for layer_logits in router_logits:
        z = torch.logsumexp(layer_logits.float(), dim=-1, keepdim=True) ** 2  # [tokens, 1]
        mask = _token_mask(attention_mask, z.shape[0])
        if mask is None:
            mask = torch.ones_like(z)
        total = total + (z * mask).sum() / mask.sum().clamp_min(1.0)
    return total


class UniMoEModel(UniMoEPreTrainedModel):
    """Towers + connectors + the language model. Media features replace their placeholder tokens' embeddings."""

    def __init__(self, config: UniMoEConfig):
        super().__init__(config)
        if config.vision_config is not None:
            clip = CLIPVisionModel(config.vision_config)
            # transformers < 5.19 wraps the vision transformer in `.vision_model`: keep the inner module, whose
            # parameter names (`embeddings.*`, `encoder.*`, ...) are those of the unwrapped CLIPVisionModel of 5.19+
            self.vision_tower = getattr(clip, "vision_model", clip)
            self._clip = (clip,)  # for CLIP's forward and weight init (a tuple: not registered as a submodule)
            self.vision_projector = UniMoEMultiModalProjector(config)
            self.video_pooler = UniMoEVideoPooler(config)
        if config.speech_config is not None:
            self.speech_tower = WhisperEncoder(config.speech_config)
            self.speech_connector = UniMoESpeechConnector(config)
        if config.sound_config is not None:
            self.sound_tower = UniMoEBEATsModel(config.sound_config)
            self.sound_connector = UniMoESoundConnector(config)
        self.language_model = UniMoETextModel(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value):
        self.language_model.embed_tokens = value

    def _require(self, tower: str, input_name: str, config_name: str):
        if not hasattr(self, tower):
            raise ValueError(
                f"`{input_name}` was given, but this model has no {tower} (`config.{config_name}` is None). Drop "
                f"`{input_name}` or load a checkpoint that has this modality."
            )
        return getattr(self, tower)

    def _output_flags(self, output_hidden_states, output_attentions) -> tuple[bool, bool]:
        """The feature getters' `output_hidden_states` / `output_attentions`, the config's where not given."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        return bool(output_hidden_states), bool(output_attentions)

    @staticmethod
    def _features_output(output: BaseModelOutputWithPooling, hidden_states: bool, attentions: bool):
        """A tower's output with the projected LLM features as `pooler_output`, holding the tower's hidden states and
        attentions only where asked for."""
        output.hidden_states = output.hidden_states if hidden_states else None
        output.attentions = output.attentions if attentions else None
        return output

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """[images, 3, H, W] -> `pooler_output` [images, patches, hidden]: CLIP hidden layer `vision_feature_layer`, CLS
        dropped, through the projector. `last_hidden_state` (and `hidden_states` / `attentions` when asked) are
        CLIP's."""
        self._require("vision_tower", "pixel_values", "vision_config")
        output_hidden_states, output_attentions = self._output_flags(output_hidden_states, output_attentions)
        outputs = self._clip[0](  # through CLIPVisionModel: some releases record hidden states only there
            pixel_values.to(self.vision_projector.linear_1.weight.dtype),
            output_hidden_states=True,
            output_attentions=output_attentions,
        )
        features = outputs.hidden_states[self.config.vision_feature_layer][:, 1:]  # [images, patches, vision_hidden]
        output = BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.vision_projector(features),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return self._features_output(output, output_hidden_states, output_attentions)

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.FloatTensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """[videos, frames, 3, H, W] -> `pooler_output` [videos, patches, hidden]: each frame through the image path,
        then pooled over frames by [`UniMoEVideoPooler`]. `last_hidden_state` is CLIP's, the frames one after the other
        ([videos, frames * tokens, vision_hidden])."""
        self._require("vision_tower", "pixel_values_videos", "vision_config")
        output_hidden_states, output_attentions = self._output_flags(output_hidden_states, output_attentions)
        num_videos, num_frames = pixel_values_videos.shape[:2]
        output = self.get_image_features(
            pixel_values_videos.flatten(0, 1),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        features = output.pooler_output  # [videos * frames, patches, hidden]
        features = features.view(num_videos, num_frames, *features.shape[1:])
        output.pooler_output = self.video_pooler(features, self.vision_projector.frame_weights)
        last = output.last_hidden_state  # [videos * frames, tokens, vision_hidden]
        output.last_hidden_state = last.reshape(num_videos, num_frames * last.shape[1], last.shape[2])
        return output

    @can_return_tuple
    def get_speech_features(
        self,
        input_features: torch.FloatTensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """[chunks, mel_bins, frames] Whisper log-mel of audio chunks -> `pooler_output` [chunks,
        num_speech_query_tokens, hidden]; `last_hidden_state` is the Whisper encoder's."""
        tower = self._require("speech_tower", "input_features", "speech_config")
        output_hidden_states, output_attentions = self._output_flags(output_hidden_states, output_attentions)
        outputs = tower(
            input_features.to(self.speech_connector.projector.weight.dtype),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        output = BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.speech_connector(outputs.last_hidden_state),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return self._features_output(output, output_hidden_states, output_attentions)

    @can_return_tuple
    def get_sound_features(
        self, sound_features: torch.FloatTensor, sound_features_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """[chunks, frames, 128] kaldi fbank (mask: 1 = real frame) -> `pooler_output` [chunks, num_sound_query_tokens,
        hidden]; `last_hidden_state` is the BEATs encoder's."""
        tower = self._require("sound_tower", "sound_features", "sound_config")
        padding_mask = None if sound_features_mask is None else ~sound_features_mask.bool()
        dtype = self.sound_connector.projector.weight.dtype
        hidden_states, _ = tower(sound_features.to(dtype), padding_mask)
        # as in the original, the Q-Former attends to every BEATs token (padded ones carry no padded-frame content:
        # BEATs zeroes them and masks them as keys)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states, pooler_output=self.sound_connector(hidden_states)
        )

    def _merge(self, input_ids, inputs_embeds, token_id, features, what, input_name):
        """Scatter `features` [items, tokens_per_item, hidden] into the placeholder positions of `token_id`."""
        if input_ids is None:
            placeholder = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
            mask = (inputs_embeds == placeholder).all(-1)
        else:
            mask = input_ids == token_id
        n_tokens, n_features = int(mask.sum()), features.shape[0] * features.shape[1]
        if n_tokens != n_features:
            raise ValueError(
                f"{what} features and {what} placeholder tokens do not match: the input has {n_tokens} placeholder "
                f"tokens (id {token_id}) but `{input_name}` gives {n_features} feature vectors ({features.shape[0]} "
                f"x {features.shape[1]}). Each {what} item needs exactly {features.shape[1]} placeholder tokens; "
                "UniMoEProcessor expands them for you."
            )
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), features.to(inputs_embeds.dtype))

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        sound_features: torch.FloatTensor | None = None,
        sound_features_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> UniMoEModelOutputWithPast:
        r"""
        mm_encoder_outputs (`dict`, *optional*): media already encoded by `get_image_features` / `get_video_features` /
            `get_speech_features` / `get_sound_features`, under "image", "video", "speech", "sound" (their
            `pooler_output` is used); generate() of transformers >= 5.23 encodes images and videos this way.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        encoded = mm_encoder_outputs or {}
        media = {  # modality: (input name, input, encoder)
            "image": ("pixel_values", pixel_values, self.get_image_features),
            "video": ("pixel_values_videos", pixel_values_videos, self.get_video_features),
            "speech": ("input_features", input_features, self.get_speech_features),
            "sound": (
                "sound_features",
                sound_features,
                functools.partial(self.get_sound_features, sound_features_mask=sound_features_mask),
            ),
        }
        token_ids = self.config.placeholder_token_ids
        for modality, (input_name, values, encode) in media.items():
            if values is not None and encoded.get(modality) is not None:
                raise ValueError(
                    f"Both `{input_name}` and `mm_encoder_outputs['{modality}']` were given; pass one of them."
                )
            if values is not None:
                features = encode(values, return_dict=True).pooler_output
            elif encoded.get(modality) is not None:
                features = encoded[modality].pooler_output
            else:  # no media: the placeholders stay text tokens (as in Llava); the processor pairs them with media
                continue
            if modality not in token_ids:
                raise ValueError(
                    f"`mm_encoder_outputs['{modality}']` was given, but this model has no {modality} placeholder token "
                    f"(`config.{MODALITIES[modality][0]}` is None). Drop it or load a checkpoint with this modality."
                )
            inputs_embeds = self._merge(input_ids, inputs_embeds, token_ids[modality], features, modality, input_name)

        return self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cache=cache if cache is not None else past_key_values,
            return_dict=True,
            **kwargs,
        )


class UniMoEForCausalLM(UniMoEPreTrainedModel, GenerationMixin):
    """Uni-MoE with its language-modelling head: text, image, video, speech and sound in, text out."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # tensor parallel: the head is split by vocabulary rows and its logits gathered on every rank (the name every
    # transformers from 4.57 on knows); the language model's plan is `UniMoETextConfig.base_model_tp_plan`
    _tp_plan = {"lm_head": "colwise_rep"}

    def __init__(self, config: UniMoEConfig):
        super().__init__(config)
        self.model = UniMoEModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        sound_features: torch.FloatTensor | None = None,
        sound_features_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> UniMoECausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): token ids to predict; -100
            is ignored. With `output_router_logits=True` the loss also carries the weighted aux and z losses.
        """
        text_config = self.config.get_text_config()
        output_router_logits = (
            output_router_logits if output_router_logits is not None else text_config.output_router_logits
        )
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            input_features=input_features,
            sound_features=sound_features,
            sound_features_mask=sound_features_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_router_logits=output_router_logits,
            mm_encoder_outputs=mm_encoder_outputs,
            cache=cache if cache is not None else past_key_values,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):  # 0 keeps every position
            hidden_states = hidden_states[:, -logits_to_keep:, :]
        else:  # a tensor of positions
            hidden_states = hidden_states[:, logits_to_keep, :]
        logits = self.lm_head(hidden_states)

        loss = aux_loss = z_loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=text_config.vocab_size, **kwargs)
        if output_router_logits and outputs.router_logits:
            aux_loss = load_balancing_loss_func(outputs.router_logits, text_config.num_experts, attention_mask)
            z_loss = router_z_loss_func(outputs.router_logits, attention_mask)
            if loss is not None:
                extra = text_config.router_aux_loss_coef * aux_loss + text_config.router_z_loss_coef * z_loss
                loss = loss + extra.to(loss.device)

        return UniMoECausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            z_loss=z_loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits,
            **{CACHE_NAME: outputs.get(CACHE_NAME)},
        )

    def _prepare_generation_config(self, *args, **kwargs):
        generation_config, model_kwargs = super()._prepare_generation_config(*args, **kwargs)
        if generation_config.suppress_tokens is None:  # by default, media placeholders are inputs, never outputs
            generation_config.suppress_tokens = list(self.config.placeholder_token_ids.values()) or None
        return generation_config, model_kwargs

    def prepare_inputs_for_generation(self, *args, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        # The media are needed until their placeholders are in the cache: in the prefill, without a cache, and in the
        # first call of an assistant model (which generate() does not flag as a prefill, and whose cache is empty).
        cache = model_inputs.get(CACHE_NAME)
        needs_media = (
            kwargs.get("is_first_iteration", False)
            or not kwargs.get("use_cache", True)
            or cache is None
            or cache.get_seq_length() == 0
        )
        for name in (*MEDIA_INPUTS, "mm_encoder_outputs"):
            if needs_media and kwargs.get(name) is not None:
                model_inputs[name] = kwargs[name]
            elif not needs_media:
                model_inputs.pop(name, None)
        return model_inputs


# a saved model carries this file and its siblings, and names its class in `config.auto_map`
UniMoEModel.register_for_auto_class("AutoModel")
UniMoEForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["UniMoEForCausalLM", "UniMoEModel", "UniMoETextModel", "UniMoEPreTrainedModel"]
