# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""What both fine-tuning recipes use: the LoRA target modules, a toy image task, a greedy answer and saving."""

import random
import shutil

import torch
from PIL import Image, ImageDraw
from transformers.utils import cached_file


# LoRA on every linear layer of the language model: attention q/k/v/o and the gate/up/down projections of each expert
# (`mlp.experts.<i>.`) and of the dense MLPs; PEFT matches the whole module name against it. Not matched: the towers
# and connectors (`model.vision_tower`, `model.speech_connector`, ...), the routers (`mlp.gate`) and `lm_head`.
TARGET_MODULES = (
    r".*language_model\.layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:experts\.\d+\.)?(?:gate|up|down)_proj)"
)
QUESTION = "Where is the square?"
COLORS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220)}


def toy_examples(size: int, seed: int = 0) -> list[dict]:
    """`size` examples {"image", "question", "answer"}: a red, green or blue square on the "left" or the "right" of a
    white 48 x 48 image. Replace them with your data."""
    rng = random.Random(seed)
    examples = []
    for _ in range(size):
        side = rng.choice(["left", "right"])
        x, y = rng.randint(2, 10) if side == "left" else rng.randint(26, 34), rng.randint(2, 34)
        image = Image.new("RGB", (48, 48), "white")
        ImageDraw.Draw(image).rectangle((x, y, x + 12, y + 12), fill=rng.choice(list(COLORS.values())))
        examples.append({"image": image, "question": QUESTION, "answer": side})
    return examples


@torch.no_grad()
def answer(model, processor, image, question: str, max_new_tokens: int = 4) -> str:
    """The model's greedy reply to one image and question."""
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def save(model, processor, source: str, out: str) -> None:
    """Save the model and processor to `out`, with the custom pipeline file (pipeline_unimoe.py) of `source` (a
    folder or Hub id) where it has one, so that `pipeline(model=out, trust_remote_code=True)` works as on `source`."""
    model.save_pretrained(out)
    processor.save_pretrained(out)
    pipeline_file = cached_file(source, "pipeline_unimoe.py", _raise_exceptions_for_missing_entries=False)
    if pipeline_file is not None:
        shutil.copy2(pipeline_file, f"{out}/pipeline_unimoe.py")
