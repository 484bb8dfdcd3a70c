"""Quantized loading and QLoRA: bitsandbytes replaces the LLM's linear layers (every expert included) and nothing else,
the 4-bit model stays close to fp32, and LoRA trains on top of a 4-bit MoE."""

import copy

import pytest
import torch
from transformers import BitsAndBytesConfig
from transformers.quantizers.base import HfQuantizer
from transformers.quantizers.quantizers_utils import should_convert_module

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM, UniMoEModel


bnb = pytest.importorskip("bitsandbytes")

TOWERS_AND_CONNECTORS = (
    "vision_tower",
    "vision_projector",
    "speech_tower",
    "speech_connector",
    "sound_tower",
    "sound_connector",
)
NF4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)


def tiny_config() -> UniMoEConfig:
    # intermediate 128 rather than the preset's 176: bitsandbytes' AVX512-BF16 CPU inference kernel (picked on CPUs
    # that have it) needs out_features % 32 == 0 and in_features % 64 == 0
    config = UniMoEConfig.from_preset("tiny")
    config.text_config.intermediate_size = 128
    return config


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = UniMoEForCausalLM(tiny_config()).eval()
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize(
    "quantization, linear_class",
    [(BitsAndBytesConfig(load_in_8bit=True), "Linear8bitLt"), (NF4, "Linear4bit")],
    ids=["8bit", "4bit"],
)
def test_bitsandbytes_quantizes_the_llm_linears_and_nothing_else(saved_tiny, quantization, linear_class):
    reference, path = saved_tiny
    quantized = UniMoEForCausalLM.from_pretrained(path, quantization_config=quantization).eval()
    text = quantized.config.text_config
    layers = quantized.model.language_model.layers
    assert len(layers) == text.num_hidden_layers
    for layer in layers:
        assert type(layer.mlp.gate).__name__ == "UniMoETopKRouter" and layer.mlp.gate.weight.dtype == torch.float32
        assert len(layer.mlp.experts) == text.num_experts
        projections = [getattr(expert, name) for expert in layer.mlp.experts for name in ("gate_proj", "up_proj")]
        projections += [expert.down_proj for expert in layer.mlp.experts]
        projections += [getattr(layer.self_attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
        for proj in projections:
            assert type(proj).__name__ == linear_class
            assert proj.weight.dtype in (torch.int8, torch.uint8)
    assert type(quantized.lm_head) is torch.nn.Linear and quantized.lm_head.weight.dtype == torch.float32
    for name in TOWERS_AND_CONNECTORS:
        part = getattr(quantized.model, name)
        linears = [m for m in part.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(type(m) is torch.nn.Linear for m in linears), name
        assert all(p.dtype == torch.float32 for p in part.parameters()), name

    # the bytes went down by the experts' and attention's share only
    assert quantized.get_memory_footprint() < 0.75 * reference.get_memory_footprint()

    input_ids = torch.randint(7, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(input_ids).logits, quantized(input_ids).logits
    error = (got - expected).abs()
    # measured (logits std 0.16, max 0.61): max / mean abs error 0.023 / 0.0015 (8-bit), 0.11 / 0.017 (4-bit nf4)
    assert 0 < error.max() < 0.25 and error.mean() < 0.04, (error.max(), error.mean())  # noise, not another model


@pytest.mark.parametrize("model_class, prefix", [(UniMoEForCausalLM, "model."), (UniMoEModel, "")])
def test_quantizers_skip_towers_connectors_routers_and_head(model_class, prefix):
    """The skip list every transformers quantizer builds (`_keep_in_fp32_modules` + its defaults: output embeddings,
    tied and last modules) leaves exactly the LLM's linear layers but the routers to quantize, for the causal LM and
    for the bare model alike."""
    with torch.device("meta"):
        model = model_class(tiny_config())
    skip = HfQuantizer.get_modules_to_not_convert(model, None, model._keep_in_fp32_modules)
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    converted = {name for name in names if should_convert_module(name, skip)}
    llm = f"{prefix}language_model."
    assert converted == {name for name in names if name.startswith(llm) and not name.endswith(".mlp.gate")}
    assert f"{llm}layers.3.mlp.experts.3.down_proj" in converted and f"{llm}layers.3.self_attn.o_proj" in converted
    for part in TOWERS_AND_CONNECTORS:
        assert any(name.startswith(f"{prefix}{part}.") for name in names) and not any(
            name.startswith(f"{prefix}{part}.") for name in converted
        ), part


def test_qlora_trains_lora_on_4bit_experts_and_the_routers(saved_tiny):
    from peft import prepare_model_for_kbit_training

    from modeling_unimoe.processing.export import build_processor, build_tiny_processor_tokenizer
    from modeling_unimoe.training.collator import UniMoECollator
    from modeling_unimoe.training.stages import apply_lora
    from modeling_unimoe.training.synthetic import make_example

    _, path = saved_tiny
    torch.manual_seed(0)
    model = UniMoEForCausalLM.from_pretrained(path, quantization_config=NF4)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_model = apply_lora(model, r=8, alpha=16, dropout=0.0)
    config = model.config
    processor = build_processor(config, build_tiny_processor_tokenizer(config))
    records = [make_example(task, "train", i) for i, task in enumerate(("text_add", "image_color", "text_add"))]
    batch = UniMoECollator(processor)(records)

    trainable = {name: param for name, param in peft_model.named_parameters() if param.requires_grad}
    expert_lora = {name: p for name, p in trainable.items() if ".mlp.experts." in name and "lora_" in name}
    text = config.text_config
    assert len(expert_lora) == 2 * 3 * text.num_experts * text.num_hidden_layers  # A and B of gate/up/down
    assert sum("mlp.gate.modules_to_save" in name for name in trainable) == text.num_hidden_layers
    assert all("lora_" in name or "mlp.gate.modules_to_save" in name for name in trainable)
    packed = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.dtype == torch.uint8}
    assert len(packed) == text.num_hidden_layers * (4 + 3 * text.num_experts)  # attention + experts, all 4-bit
    routers = {n: p.detach().clone() for n, p in trainable.items() if "mlp.gate.modules_to_save" in n}
    lora_b = {n: p.detach().clone() for n, p in expert_lora.items() if "lora_B" in n}

    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    peft_model.train()
    losses = []
    for step in range(12):
        loss = peft_model(**batch).loss
        loss.backward()
        if step == 0:
            expert_grads = [p.grad for p in expert_lora.values() if p.grad is not None and p.grad.abs().sum() > 0]
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    assert losses[-1] < 0.9 * losses[0], losses  # measured: 6.30 -> 5.22 (0.83x)
    # LoRA B starts at zero, so step 0 sends gradient to every B of an expert that got tokens (and none to A)
    assert len(expert_grads) >= len(expert_lora) // 4, (len(expert_grads), len(expert_lora))
    moved = [n for n, p in expert_lora.items() if "lora_B" in n and not torch.equal(p, lora_b[n])]
    for layer in range(text.num_hidden_layers):
        experts = {n.split(".mlp.experts.")[1].split(".")[0] for n in moved if f".layers.{layer}.mlp." in n}
        assert len(experts) >= text.num_experts_per_tok, (layer, experts)
    assert all(not torch.equal(p, routers[n]) for n, p in trainable.items() if n in routers)
    for name, param in peft_model.named_parameters():  # the 4-bit base weights never move
        if name in packed:
            assert torch.equal(param, packed[name]), name


def test_quantized_model_runs_the_media_paths(saved_tiny):
    """Towers and connectors stay full precision inside a 4-bit model, and the media forward matches fp32 closely."""
    from tests.helpers import media_prompt

    reference, path = saved_tiny
    quantized = UniMoEForCausalLM.from_pretrained(path, quantization_config=NF4).eval()
    inputs = media_prompt(copy.deepcopy(reference.config))
    with torch.no_grad():
        expected, got = reference(**inputs).logits, quantized(**inputs).logits
    assert got.shape == expected.shape
    error = (got - expected).abs()
    # measured: max / mean abs error 0.12 / 0.015 (4-bit nf4), as on text alone
    assert 0 < error.max() < 0.25 and error.mean() < 0.04, (error.max(), error.mean())


def test_nf4_bfloat16_on_cpu_with_the_presets_widths(tmp_path):
    """The README's nf4 snippet (bfloat16 compute, the preset's 176-wide FFNs): bitsandbytes' packed CPU kernel needs
    widths the FFNs do not have, so those layers must stay on the generic 4-bit path; generation gives tokens."""
    torch.manual_seed(0)
    UniMoEForCausalLM(UniMoEConfig.from_preset("tiny")).save_pretrained(tmp_path)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    model = UniMoEForCausalLM.from_pretrained(tmp_path, quantization_config=nf4, dtype=torch.bfloat16)
    four_bit = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    this_cpu = {m: m.support_avx512bf16_for_cpu for m in four_bit}
    for module in four_bit:
        module.support_avx512bf16_for_cpu = True  # as bitsandbytes sets it on a CPU with AVX512-BF16
    model.eval()
    narrow = [m for m in four_bit if m.out_features % 32 or m.in_features % 64]
    assert narrow and all(not m.support_avx512bf16_for_cpu for m in narrow)
    assert all(m.support_avx512bf16_for_cpu for m in four_bit if m not in narrow)
    for module in four_bit:  # generate with this CPU's own kernel choice
        module.support_avx512bf16_for_cpu = this_cpu[module] and module not in narrow
    ids = torch.randint(7, 512, (1, 8), generator=torch.Generator().manual_seed(0))
    out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 12)


def test_8bit_generation_prints_the_input_cast_warning_once(saved_tiny, caplog):
    """bitsandbytes warns about its input cast on every 8-bit matmul; a loaded model lets the first one through."""
    import logging

    _, path = saved_tiny
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    for installed in [f for f in bnb_logger.filters if type(f).__name__ == "_FirstOfEachMessage"]:
        bnb_logger.removeFilter(installed)  # earlier tests' models have shown it already
    model = UniMoEForCausalLM.from_pretrained(path, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    ids = torch.randint(7, 512, (1, 8), generator=torch.Generator().manual_seed(0))
    with caplog.at_level("WARNING", logger="bitsandbytes"):
        model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    casts = [r for r in caplog.records if "MatMul8bitLt: inputs will be cast" in r.getMessage()]
    assert len(casts) == 1, [r.getMessage() for r in caplog.records]
