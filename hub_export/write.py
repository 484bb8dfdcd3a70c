"""Writing a planned conversion into a Hub folder: the weights, the config and generation config, and the Hub code.

`write_weights` computes every target tensor from its plan (the value, each LoRA delta merged in float32, the
placeholder rows of the vocabulary) and streams it into sharded safetensors; `write_config_and_code` saves the config
(with its `auto_map`), the generation defaults of the original inference script and the model's Hub code.
"""

import copy
import gc
import shutil
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ._tensors import ShardedSafetensorsWriter
from .mapping import Variant
from .output import HUB_CODE_FILES, REPO_ROOT
from .plan import NUM_PLACEHOLDERS, TargetPlan
from .sources import Sources


def materialize(target: TargetPlan, files: dict, dtype: torch.dtype) -> torch.Tensor:
    """The final tensor of one target: value, plus every LoRA delta, plus the placeholder rows of the vocabulary."""
    tensor = files[target.value.file].get(target.value.key)
    if target.deltas or target.pads_vocab:
        tensor = tensor.to(torch.float32)
        for delta in target.deltas:
            a = files[delta.a.file].get(delta.a.key).to(torch.float32)
            b = files[delta.b.file].get(delta.b.key).to(torch.float32)
            update = b @ a  # [out, r] @ [r, in]
            tensor = tensor + (update.t() if delta.transpose else update) * delta.scale
        if target.pads_vocab:
            # placeholder rows: the mean of the vocabulary (never read as embeddings; suppressed in generation)
            tensor = torch.cat([tensor, tensor.mean(0, keepdim=True).expand(NUM_PLACEHOLDERS, -1)])
    if tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor


def write_weights(folder: Path, targets: dict, src: Sources, dtype: torch.dtype, max_shard_bytes: int, progress=True):
    """Stream every target into sharded safetensors, grouped by the file its value comes from (in load order) so
    that each source file is released as soon as nothing more needs it."""
    file_order = {label: i for i, (_, label) in enumerate(src.stages)}
    ordered = sorted(targets.values(), key=lambda t: (file_order[t.value.file], t.key))
    refs = defaultdict(int)
    for t in ordered:
        for label in {t.value.file, *(d.a.file for d in t.deltas), *(d.b.file for d in t.deltas)}:
            refs[label] += 1
    for label in src.files:  # files nothing is read from can go now
        if refs[label] == 0:
            src.files[label].close()
    entries = [
        (t.key, t.shape, dtype if _is_float(src, t) else src.files[t.value.file].dtype(t.value.key)) for t in ordered
    ]
    writer = ShardedSafetensorsWriter(folder, entries, max_shard_bytes)
    bar = tqdm(total=writer.total_size, unit="B", unit_scale=True, desc="Writing weights", disable=not progress)
    for t in ordered:
        tensor = materialize(t, src.files, dtype)
        writer.write(t.key, tensor)
        bar.update(tensor.numel() * tensor.element_size())
        del tensor
        for label in {t.value.file, *(d.a.file for d in t.deltas), *(d.b.file for d in t.deltas)}:
            refs[label] -= 1
            if refs[label] == 0:
                src.files[label].close()
                gc.collect()
    writer.close()
    bar.close()
    return writer


def _is_float(src: Sources, t: TargetPlan) -> bool:
    return src.files[t.value.file].dtype(t.value.key).is_floating_point


def write_config_and_code(folder: Path, config, dtype: torch.dtype, variant: Variant):
    """config.json (its `auto_map` is the config's default), generation_config.json (the model suppresses the media
    placeholders in generate() by default) and the Hub code files."""
    from transformers import GenerationConfig

    config = copy.deepcopy(config)
    config.architectures = ["UniMoEForCausalLM"]
    config.dtype = dtype
    config.save_pretrained(folder)
    for name in HUB_CODE_FILES:
        shutil.copyfile(REPO_ROOT / "modeling_unimoe" / name, folder / name)
    text = config.get_text_config()
    GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        do_sample=True,
        temperature=0.2,
        max_new_tokens=variant.max_new_tokens,
    ).save_pretrained(folder)
