"""With every expert copied from one dense FFN, the text model is LLaMA: compare with transformers' LlamaForCausalLM."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from modeling_unimoe import UniMoEForCausalLM

from .helpers import text_only_config


@pytest.mark.parametrize("moe_layers", ["all", "even", [1, 2]])
def test_matches_llama_when_experts_are_copies_of_one_ffn(moe_layers):
    torch.manual_seed(0)
    config = text_only_config(moe_layers=moe_layers)
    text = config.text_config
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=text.vocab_size,
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_hidden_layers=text.num_hidden_layers,
            num_attention_heads=text.num_attention_heads,
            num_key_value_heads=text.num_key_value_heads,
            max_position_embeddings=text.max_position_embeddings,
            rms_norm_eps=text.rms_norm_eps,
            pad_token_id=0,
        )
    ).eval()
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

    input_ids = torch.randint(0, text.vocab_size, (2, 13))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0  # left padding
    with torch.no_grad():
        expected = llama(input_ids, attention_mask=attention_mask).logits
        got = ours(input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
