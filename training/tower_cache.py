# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Cache the outputs of frozen vision / speech / sound towers during training.

A frozen tower gives the same output for the same input every epoch, and the towers are by far the most expensive part
of a small model's step (each 30 s audio chunk is ~1500 encoder positions, each video 8 CLIP images).
`cached_frozen_towers` swaps each frozen tower for a wrapper that computes a row once and then serves it from memory
(keyed by the bytes of the input row and its mask), and puts the original towers back on exit, so saved weights are
untouched. Towers with any trainable parameter are left alone.

    with cached_frozen_towers(model):
        trainer.train()
"""

from __future__ import annotations

import contextlib
import hashlib

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput


_SHARED: dict[tuple, dict] = {}


def _key(*tensors) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        if tensor is not None:
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()


class CachedTower(nn.Module):
    """Serves a frozen tower's per-row outputs from memory. `kind`: "vision" (CLIP: only hidden layer `layer` is
    kept, returned in `hidden_states`), "speech" (WhisperEncoder: returns a BaseModelOutput) or "sound" (BEATs: returns
    (hidden_states, token padding mask))."""

    def __init__(self, tower: nn.Module, kind: str, layer: int | None = None):
        super().__init__()
        self.tower = tower
        self.kind = kind
        self.layer = layer
        # shared by every wrapper of a tower with these exact weights (e.g. the stages of one run)
        self.cache = _SHARED.setdefault((kind, layer, _key(*tower.state_dict().values())), {})

    def forward(self, features, padding_mask=None, **kwargs):
        rows = range(features.shape[0])
        keys = [_key(features[i], None if padding_mask is None else padding_mask[i]) for i in rows]
        missing = [i for i in rows if keys[i] not in self.cache]
        if missing:
            with torch.no_grad():
                if self.kind == "sound":
                    mask = None if padding_mask is None else padding_mask[missing]
                    hidden, token_mask = self.tower(features[missing], mask)
                elif self.kind == "vision":
                    outputs = self.tower(features[missing], output_hidden_states=True)
                    hidden, token_mask = outputs.hidden_states[self.layer], None
                else:
                    hidden, token_mask = self.tower(features[missing], **kwargs).last_hidden_state, None
            for j, i in enumerate(missing):
                self.cache[keys[i]] = (hidden[j].clone(), None if token_mask is None else token_mask[j].clone())
        hidden = torch.stack([self.cache[k][0] for k in keys])
        if self.kind == "sound":
            masks = [self.cache[k][1] for k in keys]
            return hidden, None if masks[0] is None else torch.stack(masks)
        if self.kind == "vision":
            hidden_states = [None] * (self.tower.config.num_hidden_layers + 1)
            hidden_states[self.layer] = hidden
            return BaseModelOutput(hidden_states=tuple(hidden_states))
        return BaseModelOutput(last_hidden_state=hidden)


def _inner(model):
    """The UniMoEModel inside a UniMoEForCausalLM or a PEFT wrapper of one."""
    for module in model.modules():
        if type(module).__name__ == "UniMoEModel":
            return module
    raise ValueError(f"No UniMoEModel inside {type(model).__name__}.")


@contextlib.contextmanager
def cached_frozen_towers(model, parts=("vision", "speech", "sound"), enabled: bool = True):
    """Within the block, each frozen tower of `parts` serves cached outputs."""
    inner = _inner(model)
    swapped = {}
    if enabled:
        for part in parts:
            name = f"{part}_tower"
            tower = getattr(inner, name, None)
            if tower is None or any(p.requires_grad for p in tower.parameters()):
                continue
            swapped[name] = tower
            layer = inner.config.vision_feature_layer if part == "vision" else None
            setattr(inner, name, CachedTower(tower, part, layer))
    try:
        yield sorted(swapped)
    finally:
        for name, tower in swapped.items():
            setattr(inner, name, tower)


__all__ = ["CachedTower", "cached_frozen_towers"]
