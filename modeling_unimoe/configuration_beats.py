# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Configuration of BEATs (iter3+, AS2M), Uni-MoE's sound tower (`modeling_beats.py`).

This file is uploaded to the Hub next to `configuration_unimoe.py`: it imports only transformers.
"""

try:  # transformers 5.x
    from transformers.configuration_utils import PreTrainedConfig
except ImportError:  # transformers 4.x
    from transformers.configuration_utils import PretrainedConfig as PreTrainedConfig


class UniMoEBEATsConfig(PreTrainedConfig):
    r"""
    Configuration of the BEATs audio encoder used as Uni-MoE's sound tower. The defaults are those of the released
    iter3+ AS2M checkpoint.

    Args:
        input_patch_size (`int`): side of the square fbank patches (frames x mel bins).
        embed_dim (`int`): width of the patch embedding.
        conv_bias (`bool`): whether the patch embedding has a bias.
        encoder_layers (`int`): Transformer layers.
        encoder_embed_dim (`int`): width of the Transformer (a linear map follows the patch embedding when it differs
            from `embed_dim`).
        encoder_ffn_embed_dim (`int`): width of the feed-forward blocks.
        encoder_attention_heads (`int`): attention heads.
        activation_fn (`str`): "gelu" or "relu".
        layer_norm_first (`bool`): pre-LN layers (the released checkpoint is post-LN).
        deep_norm (`bool`): DeepNorm residual scaling `(2 * encoder_layers) ** 0.25` of the post-LN layers.
        conv_pos / conv_pos_groups (`int`): kernel size and groups of the weight-normed positional convolution.
        relative_position_embedding (`bool`): the T5-style relative position bias shared by all layers.
        num_buckets / max_distance (`int`): buckets of that bias and the distance where the largest bucket starts.
        gru_rel_pos (`bool`): per-query gates on the relative position bias.
        dropout / attention_dropout / activation_dropout / dropout_input (`float`): dropout probabilities.
        layer_norm_eps (`float`): LayerNorm epsilon.
        num_mel_bins (`int`): kaldi fbank bins of the input.
        fbank_mean / fbank_std (`float`): the input normalisation, `(fbank - mean) / (2 * std)`.
        initializer_range (`float`): standard deviation of the generic weight init.
    """

    model_type = "unimoe_beats"
    base_config_key = "sound_config"

    def __init__(
        self,
        input_patch_size: int = 16,
        embed_dim: int = 512,
        conv_bias: bool = False,
        encoder_layers: int = 12,
        encoder_embed_dim: int = 768,
        encoder_ffn_embed_dim: int = 3072,
        encoder_attention_heads: int = 12,
        activation_fn: str = "gelu",
        layer_norm_first: bool = False,
        deep_norm: bool = True,
        conv_pos: int = 128,
        conv_pos_groups: int = 16,
        relative_position_embedding: bool = True,
        num_buckets: int = 320,
        max_distance: int = 800,
        gru_rel_pos: bool = True,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        dropout_input: float = 0.0,
        layer_norm_eps: float = 1e-5,
        num_mel_bins: int = 128,
        fbank_mean: float = 15.41663,
        fbank_std: float = 6.55582,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.input_patch_size = input_patch_size
        self.embed_dim = embed_dim
        self.conv_bias = conv_bias
        self.encoder_layers = encoder_layers
        self.encoder_embed_dim = encoder_embed_dim
        self.encoder_ffn_embed_dim = encoder_ffn_embed_dim
        self.encoder_attention_heads = encoder_attention_heads
        self.activation_fn = activation_fn
        self.layer_norm_first = layer_norm_first
        self.deep_norm = deep_norm
        self.conv_pos = conv_pos
        self.conv_pos_groups = conv_pos_groups
        self.relative_position_embedding = relative_position_embedding
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.gru_rel_pos = gru_rel_pos
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.dropout_input = dropout_input
        self.layer_norm_eps = layer_norm_eps
        self.num_mel_bins = num_mel_bins
        self.fbank_mean = fbank_mean
        self.fbank_std = fbank_std
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


__all__ = ["UniMoEBEATsConfig"]
