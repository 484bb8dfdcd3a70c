"""Shared builders and paths for the tests."""

from pathlib import Path

import pytest

from modeling_unimoe import UniMoEConfig, UniMoETextConfig


REPO = Path(__file__).resolve().parents[1]
# the embedded Uni-MoE-Tiny (`make run`, the README, the demo and the evaluation run on it)
TINY_CHECKPOINT = REPO / "checkpoints" / "uni-moe-tiny"
needs_tiny_checkpoint = pytest.mark.skipif(
    not (TINY_CHECKPOINT / "config.json").is_file(), reason=f"no embedded checkpoint at {TINY_CHECKPOINT}"
)


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


def media_prompt(config, seed: int = 0) -> dict:
    """Model inputs with one image, one video, a 2-chunk speech clip and a 2-chunk sound clip (whichever towers the
    config has), placeholders already expanded."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids, inputs = [1, 20, 21], {}
    if config.vision_config is not None:
        size, tokens = config.vision_config.image_size, config.image_seq_length
        ids += [config.image_token_id] * tokens + [22] + [config.video_token_id] * tokens + [23]
        inputs["pixel_values"] = torch.randn(1, 3, size, size, generator=generator)
        inputs["pixel_values_videos"] = torch.randn(1, config.num_video_frames, 3, size, size, generator=generator)
    if config.speech_config is not None:
        ids += [config.speech_token_id] * (2 * config.num_speech_query_tokens) + [24]
        inputs["input_features"] = torch.randn(2, config.speech_config.num_mel_bins, 3000, generator=generator)
    if config.sound_config is not None:
        ids += [config.sound_token_id] * (2 * config.num_sound_query_tokens) + [25]
        frames = 2998
        inputs["sound_features"] = 10 + 5 * torch.randn(
            2, frames, config.sound_config.num_mel_bins, generator=generator
        )
        mask = torch.ones(2, frames, dtype=torch.long)
        mask[1, 1000:] = 0
        inputs["sound_features_mask"] = mask
    inputs["input_ids"] = torch.tensor([ids + [26, 27]])
    return inputs
