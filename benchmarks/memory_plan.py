# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Memory plan of the released Uni-MoE variants, computed from the presets (no weights needed): bytes of weights,
stage-3 LoRA states and activations per token at bf16, 8-bit and 4-bit, and the smallest number of 80 GB / 141 GB GPUs
for inference, stage-3 LoRA tuning and full fine-tuning with each engine. Prints markdown.

    python -m benchmarks.memory_plan
    python -m benchmarks.memory_plan --context 4096 --train-tokens 8192 --usable 0.9

Parameters are counted on a meta-device instance of each preset. The accounting (all stated in the output):
- weights: bf16 = 2 bytes/parameter. 8-bit / 4-bit (bitsandbytes LLM.int8 / NF4 with double quantization) replace
  the language model's nn.Linear layers, experts included, except the routers and lm_head: 1 + 4/out_features bytes
  (int8 + one fp32 scale per row) and 0.5 + 1/64 + 4/16384 bytes (4 bits + an 8-bit absmax per 64 values + an fp32
  scale per 256 absmax); embeddings, norms, routers, lm_head, towers and connectors stay bf16.
- LoRA states (stage 3, the recipe's r 8 on q/k/v/o and every expert's or dense MLP's gate/up/down; routers trained
  fully): trainable parameters x 16 bytes (fp32 weight, fp32 gradient, AdamW's two fp32 moments).
- activations per token: inference = the KV cache (2 x layers x KV width x 2 bytes); training with gradient
  checkpointing (the recipes) = each layer's bf16 input, plus one layer's recomputed activations (attention inputs
  and outputs, q/k/v, and per routed expert its input and gate/up/activation/product), plus the fp32 logits and
  their gradient.
- GPUs: the smallest n of 1, 2, 4, 8, 16, 32, 64 whose per-GPU total fits `usable` x the GPU's memory (the rest is
  kept for the CUDA context, kernels' workspaces and fragmentation). Inference holds a batch of 1 x `context` tokens;
  training holds `train-tokens` tokens per GPU (the stage-3 recipe: 4 x 2048).
  `device_map="auto"` spreads whole layers over the GPUs of one process; `tp_plan="auto"` shards every layer
  (n must divide the 32 heads) and replicates the towers; DDP keeps a whole copy per GPU; FSDP (full shard) and
  DeepSpeed ZeRO-3 shard weights, gradients and optimizer states over the n GPUs (same accounting). Full fine-tuning
  trains the language model and the connectors (towers frozen) in mixed precision: 16 bytes per trainable parameter.
"""

from __future__ import annotations

import argparse
import functools
import re

import torch

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM


VARIANTS = ("uni-moe-speech-4e", "uni-moe-audio-4e", "uni-moe-speech-v1.5", "uni-moe-8e")
PRECISIONS = ("bf16", "8-bit", "4-bit")
GPUS = {"80 GB": 80e9, "141 GB": 141e9}
COUNTS = (1, 2, 4, 8, 16, 32, 64)
LORA_R = 8
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRAINABLE_STATE_BYTES = 16  # fp32 weight + fp32 gradient + AdamW's two fp32 moments
_LLM_LINEAR = re.compile(r"^model\.language_model\.layers\.\d+\.(self_attn|mlp|mlp\.experts\.\d+)\.(\w+)$")


def _bytes_per_quantized_param(precision: str, out_features: int) -> float:
    if precision == "8-bit":
        return 1 + 4 / out_features  # int8 + one fp32 scale per output row
    if precision == "4-bit":
        return 0.5 + 1 / 64 + 4 / (64 * 256)  # NF4 + 8-bit absmax per 64 values + fp32 scale per 256 absmax
    return 2.0


def count(name: str) -> dict:
    """Parameter counts of a preset (meta device: no memory) and the shapes the plan needs."""
    config = UniMoEConfig.from_preset(name)
    with torch.device("meta"):
        model = UniMoEForCausalLM(config)
    counts = {"total": 0, "llm": 0, "towers": 0, "connectors": 0, "quantizable": 0, "lora": 0, "routers": 0}
    quantized_bytes = {precision: 0.0 for precision in PRECISIONS}
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        match = _LLM_LINEAR.match(module_name)
        if match and match.group(2) != "gate":  # every LLM Linear but the router (and lm_head, outside layers)
            counts["quantizable"] += module.weight.numel()
            for precision in PRECISIONS:
                quantized_bytes[precision] += module.weight.numel() * _bytes_per_quantized_param(
                    precision, module.out_features
                )
            if match.group(2) in LORA_TARGETS:
                counts["lora"] += LORA_R * (module.in_features + module.out_features)
    for param_name, param in model.named_parameters():
        counts["total"] += param.numel()
        if param_name.startswith(("model.language_model.", "lm_head.")):
            counts["llm"] += param.numel()
            if re.search(r"\.mlp\.gate\.weight$", param_name):
                counts["routers"] += param.numel()
        elif "_tower." in param_name:
            counts["towers"] += param.numel()
        else:
            counts["connectors"] += param.numel()
    rest = counts["total"] - counts["quantizable"]
    weights = {precision: quantized_bytes[precision] + 2 * rest for precision in PRECISIONS}
    return {"config": config, "counts": counts, "weights": weights}


def activation_bytes_per_token(config: UniMoEConfig) -> dict:
    text = config.text_config
    hidden, inter, layers, k = (
        text.hidden_size,
        text.intermediate_size,
        text.num_hidden_layers,
        text.num_experts_per_tok,
    )
    kv_width = text.num_key_value_heads * text.head_dim
    moe = set(text.moe_layer_indices)
    kv_cache = 2 * layers * kv_width * 2
    one_layer = 0
    for layer in range(layers):
        routed = k if layer in moe else 1
        attention = hidden + hidden + (hidden + 2 * kv_width) + hidden  # norm in, qkv in, q/k/v, attention out
        mlp = hidden + routed * (hidden + 4 * inter) + hidden  # norm in, per expert in + gate/up/act/product, sum
        one_layer = max(one_layer, 2 * (attention + mlp))
    logits = 2 * 4 * text.vocab_size  # fp32 logits and their gradient
    training = layers * hidden * 2 + one_layer + logits
    return {"inference": kv_cache, "training": training, "layer": one_layer}


ENGINES = (
    ("inference", 'device_map="auto"'),
    ("inference", 'tp_plan="auto"'),
    ("stage-3 LoRA", "DDP (a copy per GPU)"),
    ("stage-3 LoRA", "FSDP / ZeRO-3"),
    ("full fine-tuning", "DDP (a copy per GPU)"),
    ("full fine-tuning", "FSDP / ZeRO-3"),
)


def per_gpu_bytes(use: str, engine: str, n: int, *, weights: float, sizes: dict) -> float:
    """Bytes one of `n` GPUs holds for `use` with `engine` (weights: the model's stored weights in bytes)."""
    if use == "inference" and engine.startswith("device_map"):  # whole layers per GPU: allow one layer of imbalance
        return weights / n + sizes["largest_layer"] * (n > 1) + sizes["kv"]
    if use == "inference":  # tensor parallel: the language model and its KV heads sharded, towers replicated
        return (weights - sizes["towers"]) / n + sizes["towers"] + sizes["kv"] / n
    states = weights + sizes["lora_states"] if use == "stage-3 LoRA" else sizes["full"]
    return (states if engine.startswith("DDP") else states / n) + sizes["train_act"]


def _supported(use: str, engine: str, precision: str) -> bool:
    """Whether the engine runs the use with weights stored at `precision`."""
    if precision == "bf16":
        return True
    if use == "full fine-tuning":
        return False
    if engine.startswith("FSDP") or engine.startswith("tp_plan"):
        return precision == "4-bit" and engine.startswith("FSDP")
    return True


def smallest(per_gpu, capacity: float, usable: float, allowed=COUNTS):
    """The smallest n in `allowed` with per_gpu(n) <= usable * capacity, or None."""
    for n in allowed:
        if per_gpu(n) <= usable * capacity:
            return n
    return None


def plan(context: int, train_tokens: int, usable: float) -> str:
    rows_sizes, rows_gpus = [], []
    for name in VARIANTS:
        info = count(name)
        config, counts, weights = info["config"], info["counts"], info["weights"]
        activations = activation_bytes_per_token(config)
        trainable_lora = counts["lora"] + counts["routers"]
        lora_states = trainable_lora * TRAINABLE_STATE_BYTES
        for precision in PRECISIONS:
            rows_sizes.append(
                f"| {name} | {counts['total'] / 1e9:.2f} B | {precision} | {weights[precision] / 1e9:.1f} GB | "
                f"{trainable_lora / 1e6:.1f} M / {lora_states / 1e9:.2f} GB | "
                f"{activations['inference'] / 2**10:.0f} KiB | {activations['training'] / 2**20:.2f} MiB |"
            )
        heads = config.text_config.num_attention_heads
        tp_counts = tuple(n for n in COUNTS if heads % n == 0)
        towers = 2 * counts["towers"]
        kv = activations["inference"] * context
        train_act = activations["training"] * train_tokens
        frozen_full = 2 * (counts["total"] - counts["llm"] - counts["connectors"])  # towers, bf16
        full_states = TRAINABLE_STATE_BYTES * (counts["llm"] + counts["connectors"])
        largest_layer = max(weights["bf16"] / config.text_config.num_hidden_layers, towers)
        sizes = {"towers": towers, "kv": kv, "train_act": train_act, "lora_states": lora_states,
                 "full": full_states + frozen_full, "largest_layer": largest_layer}  # fmt: skip
        for use, engine in ENGINES:
            allowed = tp_counts if engine.startswith("tp_plan") else (1,) if engine.startswith("DDP") else COUNTS
            cells = []
            for precision in PRECISIONS:
                if not _supported(use, engine, precision):
                    cells.append("n/a")
                    continue
                needed = []
                for capacity in GPUS.values():
                    per_gpu = functools.partial(per_gpu_bytes, use, engine, weights=weights[precision], sizes=sizes)
                    n = smallest(per_gpu, capacity, usable, allowed)
                    needed.append("no fit" if n is None else str(n))
                cells.append(" / ".join(needed))
            rows_gpus.append(f"| {name} | {use} | {engine} | {' | '.join(cells)} |")
    lines = [
        "Sizes (computed from the presets by `python -m benchmarks.memory_plan`):",
        "",
        "| variant | parameters | precision | weights | stage-3 LoRA (+ routers): trainable / states | KV cache per "
        "token | training activations per token |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows_sizes,
        "",
        f"Smallest number of GPUs (usable {usable:.0%} of each; inference: 1 x {context} tokens of KV cache; training: "
        f"{train_tokens} tokens per GPU with gradient checkpointing):",
        "",
        "| variant | use | engine | " + " | ".join(f"{p}: {' / '.join(GPUS)}" for p in PRECISIONS) + " |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows_gpus,
        "",
        "n/a: full fine-tuning trains the weights themselves, which 8-bit / 4-bit storage cannot; bitsandbytes' 8-bit "
        "weights are not sharded by FSDP or tensor parallel, nor its 4-bit weights by tensor parallel (4-bit under "
        "FSDP needs `bnb_4bit_quant_storage=torch.bfloat16`).",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=4096, help="KV-cache tokens held at inference (batch 1)")
    parser.add_argument("--train-tokens", type=int, default=8192, help="tokens per GPU per micro-batch in training")
    parser.add_argument("--usable", type=float, default=0.9, help="share of each GPU's memory the plan may fill")
    args = parser.parse_args(argv)
    print(plan(args.context, args.train_tokens, args.usable))


if __name__ == "__main__":
    main()
