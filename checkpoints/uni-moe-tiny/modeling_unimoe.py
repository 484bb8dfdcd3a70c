# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE (arXiv 2405.11273): a LLaMA decoder with routed experts and image, video, speech and sound towers.

This file is uploaded to the Hub and loaded with `trust_remote_code=True`: it imports only torch, transformers, the
standard library and its sibling `configuration_unimoe.py`. It reads in dependency order: LLaMA building blocks,
the sparse MoE block, the decoder layer, the BEATs sound encoder, the connectors, the pretrained-model base, the text
model, the auxiliary losses, the multimodal model and the causal LM head.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import PreTrainedModel, slice_logits_to_keep
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel
from transformers.models.clip.modeling_clip import CLIPVisionModel
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)
from transformers.models.whisper.modeling_whisper import WhisperDecoder, WhisperEncoder
from transformers.utils import logging

from .configuration_unimoe import UniMoEConfig, UniMoETextConfig


logger = logging.get_logger(__name__)

# transformers 5.24 renamed `past_key_values` to `cache` in every layer's forward: the LLaMA layers reused here would
# silently ignore the KV cache this file passes them. Fail loudly instead.
_SUPPORTED_TRANSFORMERS = ((5, 23), (5, 24))
if (
    not _SUPPORTED_TRANSFORMERS[0]
    <= tuple(int(p) for p in transformers.__version__.split(".")[:2])
    < _SUPPORTED_TRANSFORMERS[1]
):
    raise ImportError(
        f"Uni-MoE's modeling code needs transformers >=5.23,<5.24; this environment has transformers "
        f"{transformers.__version__}. Install it with `pip install 'transformers>=5.23,<5.24'`."
    )

# The transformers Auto classes a saved folder maps to this file (written into config.json on save).
AUTO_MAP = {
    "AutoConfig": "configuration_unimoe.UniMoEConfig",
    "AutoModel": "modeling_unimoe.UniMoEForCausalLM",
    "AutoModelForCausalLM": "modeling_unimoe.UniMoEForCausalLM",
    "AutoModelForImageTextToText": "modeling_unimoe.UniMoEForCausalLM",
}
# Media inputs that only the prefill step consumes (generate() drops the standard names itself).
MEDIA_INPUTS = ("pixel_values", "pixel_values_videos", "input_features", "sound_features", "sound_features_mask")


@dataclass
class UniMoEModelOutputWithPast(ModelOutput):
    """Output of [`UniMoETextModel`] and [`UniMoEModel`].

    router_logits: one `[tokens, num_experts]` tensor per MoE layer (when `output_router_logits=True`).
    """

    last_hidden_state: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class UniMoECausalLMOutputWithPast(ModelOutput):
    """Output of [`UniMoEForCausalLM`]. `loss` includes `router_aux_loss_coef * aux_loss + router_z_loss_coef *
    z_loss` when router logits are requested."""

    loss: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


# LLaMA building blocks, unchanged: Uni-MoE's attention, norms and rotary embedding are LLaMA-2's.
UniMoERMSNorm = LlamaRMSNorm
UniMoERotaryEmbedding = LlamaRotaryEmbedding
UniMoEAttention = LlamaAttention
UniMoEMLP = LlamaMLP  # the dense FFN and every expert: SwiGLU gate_proj / up_proj / down_proj


class UniMoESparseMoeBlock(nn.Module):
    """Top-k routed SwiGLU experts (no shared expert).

    Router: `gate` (Linear hidden -> num_experts, no bias), top-k on the logits, softmax over the k selected logits (the
    same as softmax over all experts renormalised to the top-k), deterministic. Experts are separate `nn.Linear`
    modules (`experts.{e}.{gate,up,down}_proj`, the released key layout), so bitsandbytes quantizes them and PEFT LoRA
    targets them by name. Dispatch: one stable sort groups the `tokens * k` assignments by expert, each expert runs
    once on its contiguous slice, one `index_add_` scatters the weighted outputs back.
    """

    def __init__(self, config: UniMoETextConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.capacity_factor = config.capacity_factor
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList([UniMoEMLP(config) for _ in range(config.num_experts)])

    def route(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[tokens, hidden] -> router logits [tokens, E], routing weights [tokens, k], selected experts [tokens, k]."""
        router_logits = self.gate(hidden_states.to(self.gate.weight.dtype))  # the router may be kept in fp32
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

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size, seq_len, hidden_size = hidden_states.shape
        hidden_states = hidden_states.reshape(-1, hidden_size)  # [tokens, hidden]
        router_logits, routing_weights, selected_experts = self.route(hidden_states)

        if hidden_states.shape[0] == 1:  # one token (batch-1 decoding): its k experts, nothing to sort or scatter
            output = sum(
                self.experts[e](hidden_states) * routing_weights[:, j : j + 1]
                for j, e in enumerate(selected_experts[0].tolist())
            )
            return output.view(batch_size, seq_len, hidden_size), router_logits

        flat_experts = selected_experts.reshape(-1)  # [tokens * k]
        order = flat_experts.argsort(stable=True)  # assignments grouped by expert
        token_index = order // self.top_k  # [tokens * k]: the token of each sorted assignment
        counts = torch.bincount(flat_experts, minlength=self.num_experts).tolist()
        expert_inputs = hidden_states[token_index]  # [tokens * k, hidden]
        expert_outputs = torch.cat(
            [self.experts[e](chunk) for e, chunk in enumerate(expert_inputs.split(counts)) if counts[e] > 0]
        )
        expert_outputs = expert_outputs * routing_weights.reshape(-1)[order].unsqueeze(-1)
        output = torch.zeros_like(hidden_states).index_add_(0, token_index, expert_outputs)
        return output.view(batch_size, seq_len, hidden_size), router_logits


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
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, attn_weights = self.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states

        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        router_logits = None
        if self.is_moe:
            hidden_states, router_logits = self.mlp(hidden_states)
        else:
            hidden_states = self.mlp(hidden_states)
        hidden_states = residual + hidden_states
        return hidden_states, router_logits, attn_weights


# --- BEATs ---------------------------------------------------------------------------------------------------------
# BEATs (iter3+ AS2M), Uni-MoE's sound tower; not in transformers. Parameter names equal the original checkpoint's
# `model` state-dict keys, except that the original lists the relative position embedding (shared by all layers) under
# every layer: only layer 0's copy is kept here, the converter drops the others.


def beats_relative_position_bucket(relative_positions: torch.Tensor, num_buckets: int, max_distance: int):
    """Bidirectional T5-style bucket of `key_pos - query_pos`: half the buckets for positive offsets; in each half,
    offsets below half of it map exactly, larger ones logarithmically up to `max_distance` (then clamped)."""
    num_buckets = num_buckets // 2
    buckets = (relative_positions > 0).long() * num_buckets
    distance = relative_positions.abs()
    max_exact = num_buckets // 2
    # float32 as in the original (the bucket boundaries depend on this rounding); clamp(min=1) only avoids log(0)
    # for entries that the `where` below discards anyway
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()  # .long() truncates, values are >= 0
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


def beats_downsample_padding_mask(padding_mask: torch.Tensor, length: int) -> torch.Tensor:
    """The original's `forward_padding_mask`: drop the trailing `size % length` entries, group the rest into `length`
    consecutive runs, a run is padding only if all of it is. Note it groups in plain frame order although the tokens
    are (time patch, mel patch) time-major, so token j is judged by frames [r*j, r*j + r) with r = frames // tokens
    (2 for 128 mel bins): these frames lie inside token j's time patch, but the mel patches of one time patch can get
    different mask values when padding starts inside that patch."""
    extra = padding_mask.shape[1] % length
    if extra > 0:
        padding_mask = padding_mask[:, :-extra]
    return padding_mask.reshape(padding_mask.shape[0], length, -1).all(-1)  # [batch, length, run] -> [batch, length]


def _beats_activation(name: str):
    if name == "gelu":  # fairseq's gelu: exact (erf) GELU computed in float32
        return lambda x: F.gelu(x.float()).type_as(x)
    if name == "relu":
        return F.relu
    raise ValueError(f"BEATs activation_fn {name!r} is not supported (the released checkpoint uses 'gelu')")


class UniMoEBEATsPositionalConv(nn.Module):
    """Grouped Conv1d with weight norm over dim 2 (one norm per kernel tap), same-padding trim, then GELU.
    `weight_g` [1, 1, kernel] and `weight_v` [C, C / groups, kernel] are kept as plain parameters, so the keys match
    the original's `torch.nn.utils.weight_norm(conv, dim=2)`."""

    def __init__(self, config):
        super().__init__()
        self.channels = config.encoder_embed_dim
        self.kernel_size = config.conv_pos
        self.groups = config.conv_pos_groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, self.kernel_size))
        self.weight_v = nn.Parameter(torch.empty(self.channels, self.channels // self.groups, self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(self.channels))
        nn.init.normal_(self.weight_v, std=math.sqrt(4.0 / (self.kernel_size * self.channels)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [batch, C, tokens]
        norm = self.weight_v.norm(dim=(0, 1), keepdim=True)  # [1, 1, kernel]: norm over all dims but dim 2
        weight = self.weight_v * (self.weight_g / norm)
        hidden_states = F.conv1d(
            hidden_states, weight, self.bias, padding=self.kernel_size // 2, groups=self.groups
        )  # [batch, C, tokens + 1] for an even kernel
        if self.kernel_size % 2 == 0:  # SamePad: an even kernel with padding k // 2 yields one extra step at the end
            hidden_states = hidden_states[:, :, :-1]
        return F.gelu(hidden_states)


class UniMoEBEATsMultiheadAttention(nn.Module):
    """Self-attention with the shared T5-style relative position bias, gated per query (gru_rel_pos), and the
    original's "alpha" trick: logits are computed on q / alpha, shifted by their row max, and scaled back by alpha."""

    alpha = 32  # hard-coded in the original

    def __init__(self, config, has_relative_attention_bias: bool):
        super().__init__()
        self.embed_dim = config.encoder_embed_dim
        self.num_heads = config.encoder_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_distance
        # registration order follows the original (k, v, q, out); k_proj has a bias (rescale_init is False)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.dropout = nn.Dropout(config.attention_dropout)
        self.relative_attention_bias = (
            nn.Embedding(self.num_buckets, self.num_heads) if has_relative_attention_bias else None
        )
        self.gru_rel_pos = config.gru_rel_pos
        self.grep_linear = nn.Linear(self.head_dim, 8) if self.gru_rel_pos else None
        self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1)) if self.gru_rel_pos else None

    def compute_bias(self, length: int) -> torch.Tensor:
        positions = torch.arange(length, device=self.relative_attention_bias.weight.device)
        relative = positions[None, :] - positions[:, None]  # [query, key]: key_pos - query_pos
        buckets = beats_relative_position_bucket(relative, self.num_buckets, self.max_distance)
        bias = self.relative_attention_bias(buckets)  # [query, key, heads]
        return bias.permute(2, 0, 1).unsqueeze(0)  # [1, heads, query, key]

    def forward(self, hidden_states, key_padding_mask=None, position_bias=None):
        batch, length, _ = hidden_states.shape
        if position_bias is None and self.relative_attention_bias is not None:
            position_bias = self.compute_bias(length)

        def split_heads(x):  # [batch, tokens, C] -> [batch, heads, tokens, head_dim]
            return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        query = split_heads(self.q_proj(hidden_states))
        key = split_heads(self.k_proj(hidden_states))
        value = split_heads(self.v_proj(hidden_states))

        scores = torch.matmul(query * self.scaling * (1.0 / self.alpha), key.transpose(-1, -2))  # [b, h, q, k]
        scores = (scores - scores.amax(dim=-1, keepdim=True)) * self.alpha
        if key_padding_mask is not None:  # [batch, tokens], True = padding
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))

        if position_bias is not None:
            rel_bias = position_bias
            if self.gru_rel_pos:
                # the original feeds q * scaling / alpha * alpha / scaling, i.e. the unscaled query (bit-exact for
                # head_dim 64 where scaling and alpha are powers of two; last-ulp differences otherwise)
                gates = self.grep_linear(query)  # [batch, heads, tokens, 8]
                gates = torch.sigmoid(gates.view(batch, self.num_heads, length, 2, 4).sum(-1))  # [b, h, t, 2]
                gate_a, gate_b = gates.chunk(2, dim=-1)  # [batch, heads, tokens, 1] each
                rel_bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * position_bias  # [b, h, q, k]
            scores = scores + rel_bias

        probs = self.dropout(F.softmax(scores, dim=-1))
        attn = torch.matmul(probs, value)  # [batch, heads, tokens, head_dim]
        attn = attn.transpose(1, 2).reshape(batch, length, self.embed_dim)  # [batch, tokens, C]
        # the ungated bias is handed on: every layer gates the same shared bias with its own grep_* parameters
        return self.out_proj(attn), position_bias


class UniMoEBEATsEncoderLayer(nn.Module):
    def __init__(self, config, has_relative_attention_bias: bool):
        super().__init__()
        dim = config.encoder_embed_dim
        self.self_attn = UniMoEBEATsMultiheadAttention(config, has_relative_attention_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.activation_fn = _beats_activation(config.activation_fn)
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.layer_norm_first = config.layer_norm_first
        # DeepNorm: post-LN residual branch scaled by (2 N)^(1/4); the original asserts not (deep_norm and pre-LN)
        self.deep_norm_alpha = math.pow(2 * config.encoder_layers, 0.25) if config.deep_norm else 1.0

    def _ffn(self, x):
        return self.dropout(self.fc2(self.activation_dropout(self.activation_fn(self.fc1(x)))))

    def forward(self, hidden_states, padding_mask=None, position_bias=None):
        if self.layer_norm_first:  # pre-LN (no DeepNorm scaling on this path)
            attn, position_bias = self.self_attn(self.self_attn_layer_norm(hidden_states), padding_mask, position_bias)
            hidden_states = hidden_states + self.dropout(attn)
            hidden_states = hidden_states + self._ffn(self.final_layer_norm(hidden_states))
        else:  # post-LN, the released checkpoint
            attn, position_bias = self.self_attn(hidden_states, padding_mask, position_bias)
            hidden_states = self.self_attn_layer_norm(hidden_states * self.deep_norm_alpha + self.dropout(attn))
            hidden_states = self.final_layer_norm(hidden_states * self.deep_norm_alpha + self._ffn(hidden_states))
        return hidden_states, position_bias


class UniMoEBEATsEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        # a one-element list keeps the original key names `encoder.pos_conv.0.{weight_g,weight_v,bias}`
        # (the original is nn.Sequential(weight-normed conv, SamePad, GELU); the last two have no parameters)
        self.pos_conv = nn.ModuleList([UniMoEBEATsPositionalConv(config)])
        self.layers = nn.ModuleList(
            [
                UniMoEBEATsEncoderLayer(
                    config, has_relative_attention_bias=config.relative_position_embedding and i == 0
                )
                for i in range(config.encoder_layers)
            ]
        )
        self.layer_norm = nn.LayerNorm(config.encoder_embed_dim, eps=config.layer_norm_eps)
        self.layer_norm_first = config.layer_norm_first
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states, padding_mask=None):  # [batch, tokens, C]
        if padding_mask is not None:  # padded tokens are zeroed before the positional conv (and for the residual)
            hidden_states = hidden_states.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        positional = self.pos_conv[0](hidden_states.transpose(1, 2))  # [batch, C, tokens]
        hidden_states = hidden_states + positional.transpose(1, 2)  # [batch, tokens, C]
        if not self.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
        hidden_states = self.dropout(hidden_states)
        position_bias = None
        for layer in self.layers:
            hidden_states, position_bias = layer(hidden_states, padding_mask, position_bias)
        if self.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
        return hidden_states


class UniMoEBEATsModel(nn.Module):
    """BEATs encoder: 16x16 patches of the normalised fbank -> LayerNorm -> Linear -> conv positions -> Transformer.

    forward(fbank [batch, frames, mel] un-normalised kaldi fbank, padding_mask [batch, frames] bool, True = padded)
    -> (hidden_states [batch, (frames // 16) * (mel // 16), encoder_embed_dim], token padding mask or None).
    Tokens are time-major: token index = time_patch * (mel // 16) + mel_patch.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.fbank_mean = config.fbank_mean
        self.fbank_std = config.fbank_std
        self.patch_embedding = nn.Conv2d(
            1,
            config.embed_dim,
            kernel_size=config.input_patch_size,
            stride=config.input_patch_size,
            bias=config.conv_bias,
        )
        self.layer_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        # as in the original: no projection (and no keys) when the patch and encoder widths are equal
        self.post_extract_proj = (
            nn.Linear(config.embed_dim, config.encoder_embed_dim)
            if config.embed_dim != config.encoder_embed_dim
            else None
        )
        self.dropout_input = nn.Dropout(config.dropout_input)
        self.encoder = UniMoEBEATsEncoder(config)

    def forward(self, fbank: torch.Tensor, padding_mask: torch.Tensor | None = None):
        fbank = (fbank - self.fbank_mean) / (2 * self.fbank_std)  # the original's preprocess normalisation
        if padding_mask is not None:
            # the original's waveform-sample -> frame step; the identity for a frame-level mask
            padding_mask = beats_downsample_padding_mask(padding_mask.bool(), fbank.shape[1])

        features = self.patch_embedding(fbank.unsqueeze(1))  # [batch, 1, frames, mel] -> [batch, E, T', M']
        features = features.reshape(features.shape[0], features.shape[1], -1)  # [batch, E, T' * M'], time-major
        features = self.layer_norm(features.transpose(1, 2))  # [batch, tokens, E]

        if padding_mask is not None:
            padding_mask = beats_downsample_padding_mask(padding_mask, features.shape[1])  # [batch, tokens]
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)  # [batch, tokens, C]
        hidden_states = self.encoder(self.dropout_input(features), padding_mask)
        return hidden_states, padding_mask


class UniMoEMultiModalProjector(nn.Module):
    """`mlp2x_gelu`: Linear(vision hidden -> LLM hidden), GELU, Linear(LLM hidden -> LLM hidden).

    With `config.video_pooling="weighted"` it also holds the learned per-frame, per-channel weights that pool a
    video's projected frames (not in the released models)."""

    def __init__(self, config: UniMoEConfig):
        super().__init__()
        hidden_size = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(hidden_size, hidden_size)
        if config.video_pooling == "weighted":
            self.frame_weights = nn.Parameter(torch.zeros(config.num_video_frames, hidden_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


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
        qformer_hidden = config.audio_qformer_config.hidden_size
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_sound_query_tokens, qformer_hidden))
        self.qformer = Blip2QFormerModel(config.audio_qformer_config)
        self.projector = nn.Linear(qformer_hidden, config.text_config.hidden_size)

    def forward(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        queries = self.query_tokens.expand(encoder_hidden_states.shape[0], -1, -1)  # [chunks, Q, qformer_hidden]
        hidden_states = self.qformer(
            query_embeds=queries, encoder_hidden_states=encoder_hidden_states
        ).last_hidden_state
        return self.projector(hidden_states)  # [chunks, Q, hidden]


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
    # under a float16 load only: the routers (bitsandbytes' CPU kernels also need out_features divisible by their block
    # size, which a 4- or 8-expert router is not), and the towers and connectors (small next to the experts). Patterns
    # match from the start of a module name, with or without the `model.` prefix of UniMoEForCausalLM.
    _keep_in_fp32_modules = ["mlp.gate", r"(?:model\.)?(?:vision|speech|sound)_(?:tower|projector|connector)"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False  # expert dispatch reads per-expert token counts on the host

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.get_text_config().initializer_range
        if isinstance(module, (UniMoESpeechConnector, UniMoESoundConnector)):
            init.normal_(module.query_tokens, mean=0.0, std=std)
        elif isinstance(module, UniMoEMultiModalProjector) and hasattr(module, "frame_weights"):
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
        elif isinstance(module, UniMoEBEATsPositionalConv):
            init.normal_(module.weight_v, mean=0.0, std=math.sqrt(4.0 / (module.kernel_size * module.channels)))
            init.copy_(module.weight_g, module.weight_v.norm(dim=(0, 1), keepdim=True))  # weight == weight_v
            init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights and config; the config's `auto_map` lets every Auto class load the folder with remote code."""
        self.config.auto_map = dict(AUTO_MAP)
        if type(self)._auto_class is None:
            type(self).register_for_auto_class("AutoModelForCausalLM")
        return super().save_pretrained(save_directory, *args, **kwargs)


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

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs,
    ) -> UniMoEModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_router_logits = (
            output_router_logits if output_router_logits is not None else self.config.output_router_logits
        )
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen_tokens = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        all_router_logits = () if output_router_logits else None

        for decoder_layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, router_logits, attn_weights = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            if output_attentions:
                all_attentions += (attn_weights,)
            if output_router_logits and router_logits is not None:
                all_router_logits += (router_logits,)

        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return UniMoEModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            router_logits=all_router_logits,
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
            self.vision_tower = CLIPVisionModel(config.vision_config)
            self.vision_projector = UniMoEMultiModalProjector(config)
        if config.speech_config is not None:
            self.speech_tower = WhisperEncoder(config.speech_config)
            self.speech_connector = UniMoESpeechConnector(config)
        if config.audio_config is not None:
            self.sound_tower = UniMoEBEATsModel(config.audio_config)
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

    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        """[images, 3, H, W] -> [images, patches, hidden]: CLIP hidden layer `vision_feature_layer`, CLS dropped."""
        tower = self._require("vision_tower", "pixel_values", "vision_config")
        outputs = tower(pixel_values.to(self.vision_projector.linear_1.weight.dtype), output_hidden_states=True)
        features = outputs.hidden_states[self.config.vision_feature_layer][:, 1:]  # [images, patches, vision_hidden]
        return self.vision_projector(features)

    def get_video_features(self, pixel_values_videos: torch.FloatTensor) -> torch.Tensor:
        """[videos, frames, 3, H, W] -> [videos, patches, hidden]: each frame through the image path, then pooled over
        frames: the mean (`config.video_pooling="mean"`, the released models), or a learned per-frame, per-channel
        weighting (`"weighted"`), which can tell the frames' order."""
        self._require("vision_tower", "pixel_values_videos", "vision_config")
        num_videos, num_frames = pixel_values_videos.shape[:2]
        features = self.get_image_features(pixel_values_videos.flatten(0, 1))  # [videos * frames, patches, hidden]
        features = features.view(num_videos, num_frames, *features.shape[1:])
        frame_weights = getattr(self.vision_projector, "frame_weights", None)
        if frame_weights is None:
            return features.mean(dim=1)
        if num_frames != frame_weights.shape[0]:
            raise ValueError(
                f"`pixel_values_videos` has {num_frames} frames per video, but this model learned its frame weights for "
                f"exactly {frame_weights.shape[0]} (`config.num_video_frames`). Sample {frame_weights.shape[0]} "
                "frames per video (the processor does)."
            )
        return (features * frame_weights[None, :, None, :].to(features.dtype)).sum(dim=1)

    def get_speech_features(self, input_features: torch.FloatTensor) -> torch.Tensor:
        """[chunks, mel_bins, 3000] Whisper log-mel of 30 s chunks -> [chunks, num_speech_query_tokens, hidden]."""
        tower = self._require("speech_tower", "input_features", "speech_config")
        encoder_out = tower(input_features.to(self.speech_connector.projector.weight.dtype)).last_hidden_state
        return self.speech_connector(encoder_out)

    def get_sound_features(
        self, sound_features: torch.FloatTensor, sound_features_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[chunks, frames, 128] kaldi fbank (mask: 1 = real frame) -> [chunks, num_sound_query_tokens, hidden]."""
        tower = self._require("sound_tower", "sound_features", "audio_config")
        padding_mask = None if sound_features_mask is None else ~sound_features_mask.bool()
        dtype = self.sound_connector.projector.weight.dtype
        hidden_states, _ = tower(sound_features.to(dtype), padding_mask)
        # as in the original, the Q-Former attends to every BEATs token (padded ones carry no padded-frame content:
        # BEATs zeroes them and masks them as keys)
        return self.sound_connector(hidden_states)

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
        **kwargs,
    ) -> UniMoEModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        config = self.config
        media = (
            ("image", config.image_token_id, "pixel_values", pixel_values, self.get_image_features),
            ("video", config.video_token_id, "pixel_values_videos", pixel_values_videos, self.get_video_features),
            ("speech", config.audio_token_id, "input_features", input_features, self.get_speech_features),
            ("sound", config.sound_token_id, "sound_features", sound_features, self.get_sound_features),
        )
        for what, token_id, input_name, values, encode in media:
            if values is None:
                if input_ids is not None and token_id is not None and bool((input_ids == token_id).any()):
                    raise ValueError(
                        f"The input_ids contain {what} placeholder tokens (id {token_id}) but no `{input_name}` was "
                        f"given. Pass the {what} inputs (UniMoEProcessor returns them) or remove the placeholders."
                    )
                continue
            features = encode(values, sound_features_mask) if what == "sound" else encode(values)
            inputs_embeds = self._merge(input_ids, inputs_embeds, token_id, features, what, input_name)

        return self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


class UniMoEForCausalLM(UniMoEPreTrainedModel, GenerationMixin):
    """Uni-MoE with its language-modelling head: text, image, video, speech and sound in, text out."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: UniMoEConfig):
        super().__init__(config)
        self.model = UniMoEModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        placeholders = [config.image_token_id, config.video_token_id, config.audio_token_id, config.sound_token_id]
        placeholders = [token_id for token_id in placeholders if token_id is not None]
        if placeholders and self.generation_config is not None:  # media placeholders are inputs, never outputs
            self.generation_config.suppress_tokens = placeholders
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

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
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_router_logits=output_router_logits,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
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
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits,
        )

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool = False, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for name in MEDIA_INPUTS:  # the placeholders are already in the cache after prefill
                model_inputs.pop(name, None)
        return model_inputs


__all__ = ["UniMoEForCausalLM", "UniMoEModel", "UniMoETextModel", "UniMoEPreTrainedModel"]
