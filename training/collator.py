# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Training batches from records in the original Uni-MoE data layout, through the processor's chat template.

The labels also cover a whitespace-only token right before an answer: the template writes "ASSISTANT: " outside
the generation block, so an answer without a space-prefixed token starts with a lone " " token the model must learn
to produce after the generation prompt "ASSISTANT:".

A record (a row of `synthetic.load_split`, a JSON record of `write_split`, or a `make_example` dict) becomes chat
messages, `processor.apply_chat_template(..., return_assistant_tokens_mask=True)` tokenizes them with the media
placeholders expanded, and the labels are the input ids inside the assistant answers (their `</s>` included) and
-100 everywhere else (system prompt, user turns, media placeholders, padding).

    collator = UniMoECollator(processor)
    batch = collator([row0, row1])   # input_ids, attention_mask, labels (+ pixel_values, input_features, ...)

Records name their media as in the original layout: `image` / `video` (a path or, in memory, a PIL image / a list of
frames), `voice` (a path) or `audio` (a `(waveform, sampling_rate)` pair) with `audio_kind` "speech" (Whisper path,
an `{"type": "audio"}` block) or "sound" (BEATs path, a `{"type": "sound"}` block).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modeling_unimoe.modeling_unimoe import MEDIA_INPUTS


IGNORE_INDEX = -100
_PLACEHOLDERS = re.compile(r"<(image|video|audio|sound)>\n?")


def record_modality(record) -> str:
    """ "image", "video", "speech", "sound" or "text": the modality of a record (by its media keys)."""
    if record.get("image") is not None:
        return "image"
    if record.get("video") is not None:
        return "video"
    if record.get("voice") is not None or record.get("audio") is not None:
        return "sound" if record.get("audio_kind") == "sound" else "speech"
    return "text"


def _media_block(record) -> dict | None:
    modality = record_modality(record)
    if modality == "image":
        value = record["image"]
        return {"type": "image", "path": value} if isinstance(value, str) else {"type": "image", "image": value}
    if modality == "video":
        value = record["video"]
        return {"type": "video", "path": value} if isinstance(value, str) else {"type": "video", "video": value}
    if modality in ("speech", "sound"):
        kind = "audio" if modality == "speech" else "sound"
        if record.get("voice") is not None:
            return {"type": kind, "path": record["voice"]}
        wave, rate = record["audio"]
        return {"type": kind, kind: wave, "sampling_rate": int(rate)}
    return None


def record_to_messages(record, *, with_answer: bool = True) -> list[dict]:
    """Chat messages of a record: its media as a content block of the first user turn (placeholders are dropped from
    the text: the chat template puts them back in the reference order), then the turns of `conversations` (or the
    `question` / `answer` pair of a `make_example` dict). `with_answer=False` drops the last assistant turn."""
    turns = record.get("conversations")
    if turns is None:
        turns = [{"from": "human", "value": record["question"]}, {"from": "gpt", "value": record["answer"]}]
    messages, media = [], _media_block(record)
    for turn in turns:
        role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}.get(turn["from"])
        if role is None:
            raise ValueError(
                f"Record {record.get('id')!r} has a turn from {turn['from']!r}; expected 'human' or 'gpt'."
            )
        if role == "user":
            content = [{"type": "text", "text": _PLACEHOLDERS.sub("", turn["value"]).strip()}]
            if media is not None:
                content.insert(0, media)
                media = None
            messages.append({"role": "user", "content": content})
        else:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn["value"]}]})
    if not with_answer and messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return messages


class UniMoECollator:
    """Data collator for Uni-MoE training: records (or already encoded examples) -> a padded batch.

    Args:
        processor: a `UniMoEProcessor` with its chat template.
        max_length (`int`, *optional*): examples longer than this (placeholders expanded) raise a ValueError (media
            placeholders cannot be cut).
        pad_to_multiple_of (`int`, *optional*): pad the sequence length up to a multiple of this.

    `encode(record)` returns one example's unpadded tensors (cacheable: see `EncodedDataset`); `__call__` takes
    records or encoded examples and pads them on the right.
    """

    def __init__(self, processor, max_length: int | None = None, pad_to_multiple_of: int | None = None):
        self.processor = processor
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        tokenizer = processor.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._space_cache: dict[int, bool] = {}

    def _with_leading_space(self, input_ids, mask):
        """Also label whitespace-only tokens right before each answer: the template renders "ASSISTANT: " outside
        the generation block, and when the answer has no space-prefixed token (" right") the space is a token of its
        own, which the model must produce after the generation prompt "ASSISTANT:"."""
        mask = mask.clone()
        starts = [i for i in range(1, len(mask)) if mask[i] and not mask[i - 1]]
        for start in starts:
            i = start - 1
            while i >= 0 and not mask[i] and self._is_space(int(input_ids[i])):
                mask[i] = True
                i -= 1
        return mask

    def _is_space(self, token_id: int) -> bool:
        if token_id not in self._space_cache:
            text = self.processor.tokenizer.decode([token_id])
            self._space_cache[token_id] = bool(text) and not text.strip()
        return self._space_cache[token_id]

    def fingerprint(self) -> str:
        """What `encode` depends on: the processor's settings (less the `auto_map` a saved copy adds), its tokenizer
        and chat template, and `max_length`."""

        def settings(value):
            if isinstance(value, dict):
                return {k: settings(v) for k, v in value.items() if k != "auto_map"}
            return value

        tokenizer = self.processor.tokenizer
        return json.dumps(
            [settings(self.processor.to_dict()), type(tokenizer).__name__, tokenizer.get_vocab(),
             self.processor.chat_template, self.max_length],
            sort_keys=True, default=str,
        )  # fmt: skip

    def encode(self, record) -> dict:
        """One record -> {input_ids [L], attention_mask [L], labels [L], media tensors (items first), modality}."""
        messages = record_to_messages(record)
        batch = self.processor.apply_chat_template(
            messages,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors="pt",
        )
        input_ids = batch["input_ids"][0]
        mask = self._with_leading_space(input_ids, batch["assistant_masks"][0].bool())
        if not mask.any():
            raise ValueError(f"Record {record.get('id')!r} has no assistant answer to learn from.")
        if self.max_length is not None and input_ids.numel() > self.max_length:
            raise ValueError(
                f"Record {record.get('id')!r} takes {input_ids.numel()} tokens with its media expanded, more than "
                f"max_length={self.max_length}. Raise max_length or drop the record."
            )
        example = {
            "input_ids": input_ids,
            "attention_mask": batch["attention_mask"][0],
            "labels": torch.where(mask, input_ids, torch.full_like(input_ids, IGNORE_INDEX)),
            "modality": record_modality(record),
        }
        for name in MEDIA_INPUTS:
            if name in batch:
                example[name] = batch[name]
        return example

    def __call__(self, examples) -> dict:
        examples = [example if "input_ids" in example else self.encode(example) for example in examples]
        length = max(int(example["input_ids"].numel()) for example in examples)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            n = example["input_ids"].numel()
            input_ids[row, :n] = example["input_ids"]
            attention_mask[row, :n] = example["attention_mask"]
            labels[row, :n] = example["labels"]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        for name in MEDIA_INPUTS:
            items = [example[name] for example in examples if name in example]
            if items:
                batch[name] = torch.cat(items)
        return batch


# the encodings of the latest collator settings, shared by EncodedDatasets (so the stages run in one process encode
# each record once)
_ENCODED: dict[str, dict[str, dict]] = {}


def _record_key(record) -> str:
    """A record's key in the encodings cache: its canonical JSON."""
    return json.dumps(record, sort_keys=True, default=str)


class EncodingStore:
    """Encodings on disk, shared by the processes and stages that read the same records with the same collator
    settings (stage 2's experts train in processes of their own). One file per record under
    `folder/<settings hash>/`, named by a hash of the record and of the size and modification time of each media
    file it names (a rewritten file is encoded anew); safetensors files (the strings, such as the modality, in their
    metadata), written atomically. Records whose media are in memory (a PIL image, frames, a waveform) have no stable
    key and are encoded without the store. Files are only ever added: delete the folder to reclaim its space."""

    MEDIA_KEYS = ("image", "video", "voice")

    def __init__(self, folder, settings: str):
        self.folder = Path(folder) / hashlib.sha256(settings.encode()).hexdigest()[:16]

    def path(self, record, key: str) -> Path:
        digest = hashlib.blake2b(key.encode(), digest_size=16)
        for name in self.MEDIA_KEYS:
            if record.get(name) is not None:
                stat = os.stat(record[name])
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        name = digest.hexdigest()
        return self.folder / name[:2] / f"{name}.safetensors"

    @staticmethod
    def load(path: Path) -> dict | None:
        if not path.is_file():
            return None
        with safe_open(path, framework="pt") as file:
            return {**file.metadata(), **{name: file.get_tensor(name) for name in file.keys()}}

    @staticmethod
    def save(path: Path, example: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        tensors = {name: value.contiguous() for name, value in example.items() if isinstance(value, torch.Tensor)}
        strings = {name: value for name, value in example.items() if isinstance(value, str)}
        others = sorted(set(example) - set(tensors) - set(strings))
        if others:
            raise TypeError(f"EncodingStore keeps tensors and strings only; the encoding also has {others}.")
        save_file(tensors, partial, metadata=strings)
        os.replace(partial, path)

    def encode(self, collator: UniMoECollator, record, key: str) -> dict:
        """The stored encoding of `record`, or a new one (stored)."""
        in_memory = record.get("audio") is not None or any(
            record.get(name) is not None and not isinstance(record[name], str) for name in self.MEDIA_KEYS
        )
        if in_memory:
            return collator.encode(record)
        path = self.path(record, key)
        example = self.load(path)
        if example is None:
            example = collator.encode(record)
            self.save(path, example)
        return example


class EncodedDataset(torch.utils.data.Dataset):
    """A dataset of records, encoded by a collator on first access and kept in memory (decoding media and computing
    Whisper / BEATs features once, not once per epoch, nor again in a later dataset of the same records and collator
    settings in this process; with `store`, a folder, nor in another process: `EncodingStore`). `modalities` lists
    each record's modality (for grouping)."""

    def __init__(self, records, collator: UniMoECollator, eager: bool = False, workers: int = 0, store=None):
        self.records = records
        self.collator = collator
        self.modalities = [record_modality(records[i]) for i in range(len(records))]
        settings = collator.fingerprint()
        if settings not in _ENCODED:
            _ENCODED.clear()  # one set of settings at a time: memory stays bounded by one run's records
            _ENCODED[settings] = {}
        self._cache = _ENCODED[settings]
        self._keys: dict[int, str] = {}
        self.store = None if store is None else EncodingStore(store, settings)
        if eager:
            self.encode_all(workers)

    def _encode(self, record, key: str) -> dict:
        return self.collator.encode(record) if self.store is None else self.store.encode(self.collator, record, key)

    def encode_all(self, workers: int = 0) -> None:
        """Encode every record now: here (`workers=0`), or in `workers` DataLoader worker processes (forked, one
        thread each), which send the encodings back as numpy arrays (pickled: no shared-memory handle per tensor)."""
        todo = [index for index in range(len(self)) if index not in self._keys]
        if workers <= 0:
            for index in todo:
                self[index]
            return
        loader = torch.utils.data.DataLoader(
            _EncodeRecords(self, todo), batch_size=32, num_workers=workers, collate_fn=_as_list
        )
        for batch in loader:
            for index, key, example in batch:
                if key not in self._cache:
                    self._cache[key] = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                                        for k, v in example.items()}  # fmt: skip
                self._keys[index] = key

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        if index not in self._keys:  # reading a row of a `datasets.Dataset` takes ~1 ms: once per index
            record = self.records[index]
            key = _record_key(record)
            if key not in self._cache:
                self._cache[key] = self._encode(record, key)
            self._keys[index] = key
        return self._cache[self._keys[index]]


class _EncodeRecords(torch.utils.data.Dataset):
    """(index, cache key, encoding as numpy arrays) of the listed records of an EncodedDataset, for worker processes."""

    def __init__(self, dataset: EncodedDataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        record = self.dataset.records[index]
        key = _record_key(record)
        if key in self.dataset._cache:  # encoded before the workers were forked: the parent has it
            return index, key, None
        example = self.dataset._encode(record, key)
        return index, key, {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in example.items()}


def _as_list(items):
    return items


__all__ = [
    "IGNORE_INDEX",
    "EncodedDataset",
    "EncodingStore",
    "UniMoECollator",
    "record_modality",
    "record_to_messages",
]
