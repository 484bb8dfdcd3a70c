"""The expert layout works with the ecosystem: PEFT LoRA reaches every expert (bitsandbytes quantizing them and QLoRA:
test_quantization.py)."""

import torch
from peft import LoraConfig, get_peft_model

from modeling_unimoe import UniMoEForCausalLM
from modeling_unimoe.modeling_unimoe import UniMoETopKRouter
from tests.helpers import text_only_config


def test_lora_reaches_every_expert_and_merges_exactly():
    torch.manual_seed(0)
    config = text_only_config()
    model = UniMoEForCausalLM(config).eval()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, lora)
    text = config.text_config
    expert_loras = [
        name
        for name, module in peft_model.named_modules()
        if ".mlp.experts." in name and hasattr(module, "lora_A") and name.endswith("_proj")
    ]
    assert len(expert_loras) == text.num_hidden_layers * text.num_experts * 3
    router = peft_model.base_model.model.model.language_model.layers[0].mlp.gate
    assert type(router) is UniMoETopKRouter and not hasattr(router, "lora_A")  # routers are not LoRA targets

    # one optimisation step on LoRA weights only; the base weights do not move
    base_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    input_ids = torch.randint(3, 128, (2, 9))
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    peft_model.train()
    peft_model(input_ids, labels=input_ids).loss.backward()
    optimizer.step()
    peft_model.eval()
    for key, value in model.state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, base_before[key]), key
    with torch.no_grad():
        unmerged = peft_model(input_ids).logits
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(input_ids).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
