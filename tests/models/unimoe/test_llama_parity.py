"""With every expert copied from one dense FFN, the text model is LLaMA: compare with transformers' LlamaForCausalLM."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from modeling_unimoe import UniMoEForCausalLM
from tests.helpers import text_only_config


DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}


def llama_and_ours(moe_layers="all", rope_parameters=DEFAULT_ROPE):
    """A random LlamaForCausalLM and the Uni-MoE text model holding its weights (every expert a copy of the FFN)."""
    torch.manual_seed(0)
    config = text_only_config(moe_layers=moe_layers, rope_parameters=dict(rope_parameters))
    text = config.text_config
    llama_config = LlamaConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps,
        pad_token_id=0,
        rope_parameters=dict(rope_parameters),
    )
    llama = LlamaForCausalLM(llama_config).eval()
    ours = UniMoEForCausalLM(config).eval()

    state = {}
    for key, value in llama.state_dict().items():
        if key.startswith("model."):
            new_key = key.replace("model.", "model.language_model.", 1)
            layer = int(key.split(".")[2]) if ".layers." in key else None
            if ".mlp." in key and layer in text.moe_layer_indices:
                for e in range(text.num_experts):
                    state[new_key.replace(".mlp.", f".mlp.experts.{e}.")] = value
                continue
            state[new_key] = value
        else:
            state[key] = value
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert all(k.endswith("mlp.gate.weight") for k in missing) and not unexpected
    assert len(missing) == len(text.moe_layer_indices)  # only the routers stay random
    return llama, ours


@pytest.mark.parametrize("moe_layers", ["all", "even", [1, 2]])
def test_matches_llama_when_experts_are_copies_of_one_ffn(moe_layers):
    llama, ours = llama_and_ours(moe_layers)
    input_ids = torch.randint(0, ours.config.text_config.vocab_size, (2, 13))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0  # left padding
    with torch.no_grad():
        expected = llama(input_ids, attention_mask=attention_mask).logits
        got = ours(input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "rope_parameters",
    [
        {"rope_type": "linear", "factor": 4.0},
        {"rope_type": "dynamic", "factor": 4.0},
        {"rope_type": "yarn", "factor": 4.0},
        {
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ],
    ids=lambda p: p["rope_type"],
)
def test_scaled_rope_matches_llama(rope_parameters):
    """Past the trained context (300 tokens > max_position_embeddings 256, where dynamic scaling starts), as LLaMA."""
    llama, ours = llama_and_ours(rope_parameters={**DEFAULT_ROPE, **rope_parameters})
    _, default = llama_and_ours()
    input_ids = torch.randint(0, ours.config.text_config.vocab_size, (1, 300))
    with torch.no_grad():
        expected = llama(input_ids).logits
        got = ours(input_ids).logits
        unscaled = default(input_ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got - unscaled).abs().max() > 1e-4  # the scaling took effect (10x the parity tolerance)
