# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Expert routing per modality: per MoE layer, the share of each modality's prompt tokens that the top-k router sent
to each expert (the paper's expert preference analysis), and its heat maps.

    report = routing_report(model, processor, [inputs], system_prefix_length(processor))
    plot_routing(report).save("routing.png")

`training.evaluate --routing` runs it over the synthetic test split; the demo's experts panel over each prompt it
answers. The model and processor are any Uni-MoE pair, this package's classes or a Hub folder's remote code: what is
read from them is public (`config.get_text_config()`'s `moe_layer_indices`, `num_experts` and `num_experts_per_tok`,
the processor's placeholder token ids and `audio_paths`, and the router logits of a forward pass with
`output_router_logits=True`: one `[tokens, experts]` tensor per MoE layer).

This module imports nothing of this package (torch, numpy, pillow and matplotlib only): the demo's Space carries it
alone, at `modeling_unimoe/training/routing.py` (demo/publish.py).
"""

from __future__ import annotations

import io

import torch


MODALITIES = ("image", "video", "speech", "sound", "text")


def system_prefix_length(processor) -> int:
    """Tokens of the prompt prefix every chat shares (the system prompt): the common prefix of two one-word chats."""
    rows = []
    for text in ("a", "b"):
        chat = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        ids = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
        row = ids["input_ids"]
        rows.append(list(row[0] if row and isinstance(row[0], (list, tuple)) else row))
    first, second = rows
    n = 0
    while n < min(len(first), len(second)) and first[n] == second[n]:
        n += 1
    return n


def token_modalities(processor, input_ids) -> list[str]:
    """The modality of each token id: the image / video / audio / sound placeholders (one position per media token)
    by their ids, "text" for the rest. `<audio>` counts as the tower it feeds (`processor.audio_paths`: "speech" or
    "sound")."""
    kinds = {
        processor.image_token_id: "image",
        processor.video_token_id: "video",
        processor.audio_token_id: processor.audio_paths.get("audio"),
        processor.sound_token_id: "sound",
    }
    kinds.pop(None, None)
    return [kinds.get(int(token)) or "text" for token in input_ids]


@torch.no_grad()
def routing_report(model, processor, prompts, prefix_length: int = 0) -> dict:
    """Per MoE layer, the share of each modality's top-k assignments that go to each expert, over `prompts`.

    Each prompt is the processor's output for one conversation (a batch of one); its first `prefix_length` tokens
    (the system prompt, `system_prefix_length`) are left out. Returns `{"moe_layers", "num_experts", "top_k",
    "prompts", "tokens": {modality: count}, "share": {modality: {layer: [share per expert]}}}`, the layout
    `plot_routing` draws."""
    text_config = model.config.get_text_config()
    layers = list(text_config.moe_layer_indices)
    if not layers:
        raise ValueError("This model has no MoE layers: there is no routing to show.")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("routing_report got no prompts; expected the processor's outputs of one or more prompts.")
    num_experts, top_k = text_config.num_experts, text_config.num_experts_per_tok
    counts: dict[str, torch.Tensor] = {}
    tokens: dict[str, int] = {}
    for index, inputs in enumerate(prompts):
        batch = inputs["input_ids"].shape[0]
        if batch != 1:
            raise ValueError(
                f"Prompt {index} holds a batch of {batch}; expected a batch of one (one conversation per processor "
                "call), so that padding is not counted. Encode the conversations one at a time."
            )
        labels = token_modalities(processor, inputs["input_ids"][0].tolist())[prefix_length:]
        out = model(**inputs, output_router_logits=True, use_cache=False)
        for slot, logits in enumerate(out.router_logits):  # [tokens, experts] per MoE layer
            selected = logits.float().reshape(-1, num_experts).topk(top_k, dim=-1).indices[prefix_length:].cpu()
            for modality in dict.fromkeys(labels):
                rows = selected[[i for i, label in enumerate(labels) if label == modality]]  # [tokens of it, top_k]
                table = counts.setdefault(modality, torch.zeros(len(layers), num_experts))
                table[slot] += torch.bincount(rows.reshape(-1), minlength=num_experts).float()
        for modality in labels:
            tokens[modality] = tokens.get(modality, 0) + 1
    order = [m for m in MODALITIES if m in counts]
    shares = {m: (counts[m] / counts[m].sum(-1, keepdim=True).clamp_min(1)).tolist() for m in order}
    return {
        "moe_layers": layers,
        "num_experts": num_experts,
        "top_k": top_k,
        "prompts": len(prompts),
        "tokens": {m: tokens[m] for m in order},
        "share": {m: {str(layer): row for layer, row in zip(layers, shares[m], strict=True)} for m in order},
    }


def plot_routing(report: dict):
    """The report as heat maps (one per MoE layer: modality x expert, the share written in each cell), as a PIL
    image. Uses matplotlib's object API (no pyplot state), so concurrent requests can draw at once."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    modalities = [m for m in MODALITIES if m in report["share"]]
    layers = report["moe_layers"]
    num_experts = report["num_experts"]
    figure = Figure(figsize=(2.2 + 1.6 * len(layers) * num_experts / 4, 1.4 + 0.45 * len(modalities)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(layers), squeeze=False)[0]
    for ax, layer in zip(axes, layers, strict=True):
        grid = np.array([report["share"][m][str(layer)] for m in modalities])  # [modalities, experts]
        ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"layer {layer}")
        ax.set_xticks(range(num_experts))
        ax.set_xlabel("expert")
        ax.set_yticks(range(len(modalities)))
        ax.set_yticklabels(modalities if layer == layers[0] else [])
        for row, col in np.ndindex(grid.shape):
            value = grid[row, col]
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.5 else "black")  # fmt: skip
    figure.suptitle("Share of each modality's token assignments per expert")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")
