"""Shared builders for the tests."""

from modeling_unimoe import UniMoEConfig, UniMoETextConfig


def text_only_config(**text_kwargs) -> UniMoEConfig:
    """A small text-only Uni-MoE config (no towers)."""
    defaults = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
    )
    defaults.update(text_kwargs)
    return UniMoEConfig(text_config=UniMoETextConfig(**defaults))
