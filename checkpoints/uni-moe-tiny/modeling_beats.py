# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""BEATs (iter3+ AS2M), Uni-MoE's sound tower; not in transformers.

This file is uploaded to the Hub next to `modeling_unimoe.py`: it imports only torch and its sibling
`configuration_beats.py`. Parameter names equal the original checkpoint's `model` state-dict keys, except that the
original lists the relative position embedding (shared by all layers) under every layer: only layer 0's copy is kept
here, the converter drops the others.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_beats import UniMoEBEATsConfig


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


def beats_token_padding_mask(padding_mask: torch.Tensor, patch_size: int, time_patches: int, mel_patches: int):
    """[batch, frames] frame mask -> [batch, time_patches * mel_patches] token mask (True = padding).

    The original's rule (`beats_downsample_padding_mask`) where it is defined, i.e. with at least as many frames as
    tokens (patches of 16 on 128 mel bins: twice as many). With fewer frames than tokens (smaller patches) that rule
    would judge every token by no frames at all and mask them all; each token is then padding when all the frames of
    its time patch are."""
    tokens = time_patches * mel_patches
    if padding_mask.shape[1] >= tokens:
        return beats_downsample_padding_mask(padding_mask, tokens)
    per_time_patch = padding_mask[:, : time_patches * patch_size].reshape(-1, time_patches, patch_size).all(-1)
    return per_time_patch.repeat_interleave(mel_patches, dim=1)  # time-major, as the tokens


def _beats_activation(name: str):
    if name == "gelu":  # fairseq's gelu: exact (erf) GELU computed in float32
        return lambda x: F.gelu(x.float()).type_as(x)
    if name == "relu":
        return F.relu
    raise ValueError(
        f"BEATs `activation_fn` {name!r} is not supported: use 'gelu' (the released checkpoint) or 'relu' in "
        "`sound_config`."
    )


class UniMoEBEATsPositionalConv(nn.Conv1d):
    """Grouped Conv1d with torch's weight norm over dim 2 (one norm per kernel tap), same-padding trim, then GELU.
    Its parameters are `parametrizations.weight.original0` (g, [1, 1, kernel]), `parametrizations.weight.original1`
    (v, [C, C / groups, kernel]) and `bias`; every transformers release renames the original checkpoint's
    `weight_g` / `weight_v` to these at load."""

    def __init__(self, config: UniMoEBEATsConfig):
        channels, kernel_size = config.encoder_embed_dim, config.conv_pos
        super().__init__(
            channels, channels, kernel_size=kernel_size, padding=kernel_size // 2, groups=config.conv_pos_groups
        )
        nn.init.normal_(self.weight, std=self.init_std)
        nn.init.zeros_(self.bias)
        nn.utils.parametrizations.weight_norm(self, name="weight", dim=2)

    @property
    def init_std(self) -> float:
        return math.sqrt(4.0 / (self.kernel_size[0] * self.in_channels))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [batch, C, tokens]
        hidden_states = super().forward(hidden_states)  # [batch, C, tokens + 1] for an even kernel
        # SamePad: an even kernel with padding k // 2 yields one extra step at the end
        if self.kernel_size[0] % 2 == 0:
            hidden_states = hidden_states[:, :, :-1]
        return F.gelu(hidden_states)


class UniMoEBEATsMultiheadAttention(nn.Module):
    """Self-attention with the shared T5-style relative position bias, gated per query (gru_rel_pos), and the
    original's "alpha" trick: logits are computed on q / alpha, shifted by their row max, and scaled back by alpha."""

    alpha = 32  # hard-coded in the original

    def __init__(self, config: UniMoEBEATsConfig, has_relative_attention_bias: bool):
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
    def __init__(self, config: UniMoEBEATsConfig, has_relative_attention_bias: bool):
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
    def __init__(self, config: UniMoEBEATsConfig):
        super().__init__()
        # a one-element list keeps the original key prefix `encoder.pos_conv.0.`
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
    """BEATs encoder: p x p patches of the normalised fbank (p = `input_patch_size`, 16 as released) -> LayerNorm ->
    Linear -> conv positions -> Transformer.

    forward(fbank [batch, frames, mel] un-normalised kaldi fbank, padding_mask [batch, frames] bool, True = padded)
    -> (hidden_states [batch, (frames // p) * (mel // p), encoder_embed_dim], token padding mask or None).
    Tokens are time-major: token index = time_patch * (mel // p) + mel_patch.
    """

    def __init__(self, config: UniMoEBEATsConfig):
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
        time_patches, mel_patches = features.shape[2:]
        features = features.reshape(features.shape[0], features.shape[1], -1)  # [batch, E, T' * M'], time-major
        features = self.layer_norm(features.transpose(1, 2))  # [batch, tokens, E]

        if padding_mask is not None:  # [batch, tokens]
            padding_mask = beats_token_padding_mask(
                padding_mask, self.config.input_patch_size, time_patches, mel_patches
            )
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)  # [batch, tokens, C]
        hidden_states = self.encoder(self.dropout_input(features), padding_mask)
        return hidden_states, padding_mask


__all__ = ["UniMoEBEATsModel", "beats_relative_position_bucket", "beats_token_padding_mask"]
