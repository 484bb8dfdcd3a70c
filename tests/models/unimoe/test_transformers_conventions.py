"""transformers' model conventions, each checked on the tiny model: output tuples, switching the attention
implementation, feature outputs, selected hidden states, pre-encoded media, assisted decoding and the fp32 rules."""

import copy

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM


def image_prompt(config, text_len: int = 6):
    torch.manual_seed(0)
    ids = torch.cat(
        [
            torch.tensor([[1]]),
            torch.full((1, config.image_seq_length), config.image_token_id),
            torch.randint(16, config.text_config.vocab_size, (1, text_len)),
        ],
        dim=1,
    )
    size = config.vision_config.image_size
    return {"input_ids": ids, "pixel_values": torch.randn(1, 3, size, size)}


def test_return_dict_false_gives_a_tuple(tiny_model):
    inputs = image_prompt(tiny_model.config)
    with torch.no_grad():
        as_dict = tiny_model(**inputs)
        as_tuple = tiny_model(**inputs, return_dict=False)
        tiny_model.config.return_dict = False
        from_config = tiny_model(**inputs)
    assert isinstance(as_tuple, tuple) and isinstance(from_config, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.logits)


def test_set_attn_implementation_eager_returns_attentions_and_the_sdpa_logits(tiny_model):
    inputs = image_prompt(tiny_model.config)
    with torch.no_grad():
        sdpa = tiny_model(**inputs).logits
        tiny_model.set_attn_implementation("eager")
        eager = tiny_model(**inputs, output_attentions=True)
    assert tiny_model.config.get_text_config()._attn_implementation == "eager"
    layers = tiny_model.config.get_text_config().num_hidden_layers
    seq = inputs["input_ids"].shape[1]
    heads = tiny_model.config.get_text_config().num_attention_heads
    assert [tuple(a.shape) for a in eager.attentions] == [(1, heads, seq, seq)] * layers
    torch.testing.assert_close(eager.logits, sdpa, atol=1e-4, rtol=1e-4)


def test_feature_getters_return_model_outputs(tiny_model):
    config, model = tiny_model.config, tiny_model.model
    inputs = image_prompt(config)
    with torch.no_grad():
        out = model.get_image_features(inputs["pixel_values"], output_hidden_states=True)
        as_tuple = model.get_image_features(inputs["pixel_values"], return_dict=False)
    assert isinstance(out, BaseModelOutputWithPooling)
    assert out.pooler_output.shape == (1, config.image_seq_length, config.text_config.hidden_size)
    assert len(out.hidden_states) == config.vision_config.num_hidden_layers + 1
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[1], out.pooler_output)


def test_output_hidden_states_as_layer_indices(tiny_model):
    ids = image_prompt(tiny_model.config)["input_ids"][:, -6:]
    with torch.no_grad():
        every = tiny_model(input_ids=ids, output_hidden_states=True).hidden_states
        some = tiny_model(input_ids=ids, output_hidden_states=[0, 2]).hidden_states
    assert len(some) == len(every)
    assert [h is None for h in some] == [i not in (0, 2) for i in range(len(every))]
    torch.testing.assert_close(some[2], every[2])


def test_pre_encoded_media_give_the_same_logits(tiny_model):
    inputs = image_prompt(tiny_model.config)
    with torch.no_grad():
        plain = tiny_model(**inputs).logits
        encoded = tiny_model.model.get_image_features(inputs["pixel_values"])
        pre = tiny_model(input_ids=inputs["input_ids"], mm_encoder_outputs={"image": encoded}).logits
    torch.testing.assert_close(pre, plain)
    with pytest.raises(ValueError, match="Both `pixel_values` and `mm_encoder_outputs\\['image'\\]` were given"):
        tiny_model(**inputs, mm_encoder_outputs={"image": encoded})


@pytest.mark.parametrize("how", ["prompt_lookup", "assistant_model"])
def test_assisted_decoding_with_an_image_gives_the_greedy_tokens(tiny_model, how):
    inputs = image_prompt(tiny_model.config)
    extra = (
        {"prompt_lookup_num_tokens": 3} if how == "prompt_lookup" else {"assistant_model": copy.deepcopy(tiny_model)}
    )
    with torch.no_grad():
        plain = tiny_model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assisted = tiny_model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, **extra)
    assert torch.equal(assisted, plain)


def test_static_cache_generation_gives_the_greedy_tokens(tiny_model):
    inputs = image_prompt(tiny_model.config)
    with torch.no_grad():
        plain = tiny_model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        static = tiny_model.generate(
            **inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, cache_implementation="static"
        )
    assert torch.equal(static, plain)
    assert tiny_model._can_compile_fullgraph


def test_dense_dispatch_equals_sparse_dispatch(tiny_model):
    """The compiled path (every expert, zero weights where not routed) computes the sparse path's output."""
    block = tiny_model.model.language_model.layers[0].mlp
    hidden = torch.randn(7, tiny_model.config.text_config.hidden_size)
    with torch.no_grad():
        _, weights, experts = block.gate(hidden)
        torch.testing.assert_close(
            block._dense_dispatch(hidden, weights, experts), block._sparse_dispatch(hidden, weights, experts)
        )


def test_float16_load_keeps_routers_and_towers_in_fp32_but_not_dense_mlps(tmp_path):
    config = UniMoEConfig.from_preset(
        "tiny", text_config={**UniMoEConfig.from_preset("tiny").text_config.to_dict(), "moe_layers": "even"}
    )
    UniMoEForCausalLM(config).save_pretrained(tmp_path)
    model = UniMoEForCausalLM.from_pretrained(tmp_path, dtype=torch.float16)
    layers = model.model.language_model.layers
    assert layers[0].mlp.gate.weight.dtype == torch.float32  # a router
    assert layers[1].mlp.gate_proj.weight.dtype == torch.float16  # a dense MLP
    assert layers[0].mlp.experts[0].gate_proj.weight.dtype == torch.float16
    assert model.model.vision_projector.linear_1.weight.dtype == torch.float32


def test_gradient_checkpointing_training_uses_no_cache(tiny_model):
    tiny_model.train()
    tiny_model.gradient_checkpointing_enable()
    ids = image_prompt(tiny_model.config)["input_ids"][:, -6:]
    out = tiny_model(input_ids=ids, labels=ids, use_cache=True)
    out.loss.backward()
    assert out.get("past_key_values") is None and out.get("cache") is None


def test_from_pretrained_gives_missing_clip_layers_clips_init(tmp_path, tiny_model):
    """A checkpoint without the vision tower: from_pretrained gives the tower's layers CLIP's own init (scaled by
    width and depth), as in a freshly constructed model, not the generic `initializer_range`."""
    from safetensors.torch import load_file, save_file

    tiny_model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".vision_tower." not in k}, tmp_path / "model.safetensors")
    model = UniMoEForCausalLM.from_pretrained(tmp_path)
    vision = model.config.vision_config
    width, depth = vision.hidden_size, vision.num_hidden_layers
    layer = model.model.vision_tower.encoder.layers[0]
    expected = {
        "q_proj": width**-0.5 * (2 * depth) ** -0.5,
        "out_proj": width**-0.5,
        "fc1": (2 * width) ** -0.5,
    }
    got = {
        "q_proj": layer.self_attn.q_proj.weight.std().item(),
        "out_proj": layer.self_attn.out_proj.weight.std().item(),
        "fc1": layer.mlp.fc1.weight.std().item(),
    }
    for name, std in expected.items():
        assert got[name] == pytest.approx(std * vision.initializer_factor, rel=0.15), (name, got, expected)
