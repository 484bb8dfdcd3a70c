"""KV-cache generation equals cache-less generation (what the original code does), text and media."""

import torch

from modeling_unimoe import UniMoEForCausalLM
from tests.helpers import media_prompt, text_only_config


def test_greedy_with_and_without_cache_text():
    torch.manual_seed(0)
    model = UniMoEForCausalLM(text_only_config()).eval()
    input_ids = torch.randint(3, 128, (2, 10))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    cached = model.generate(input_ids, use_cache=True, **kwargs)
    uncached = model.generate(input_ids, use_cache=False, **kwargs)
    assert cached.shape == (2, 22)
    assert torch.equal(cached, uncached)


def test_greedy_with_and_without_cache_all_media(tiny_model):
    inputs = media_prompt(tiny_model.config)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    cached = tiny_model.generate(**inputs, use_cache=True, **kwargs)
    uncached = tiny_model.generate(**inputs, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_generation_never_emits_placeholders(tiny_model):
    config = tiny_model.config
    placeholders = [config.image_token_id, config.video_token_id, config.speech_token_id, config.sound_token_id]
    with torch.no_grad():
        tiny_model.lm_head.weight[placeholders] += 100.0  # make them the most likely tokens
    out = tiny_model.generate(torch.tensor([[1, 20, 21]]), max_new_tokens=5, do_sample=False)
    assert not torch.isin(out[:, 3:], torch.tensor(placeholders)).any()
