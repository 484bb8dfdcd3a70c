# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE's text side: prompts with media placeholders to token ids, and chats to prompts.

A Hub file beside `processing_unimoe.py` (which imports it): it imports only torch, numpy, transformers, the standard
library and its siblings `media_unimoe.py` (the input errors) and `feature_extraction_unimoe.py` (the audio rate).

- `prompt_texts`, `expand_placeholders` (each placeholder repeated as many times as its item takes tokens, with
  transformers 5's `text_replacement_offsets`: its own `get_text_with_replacements` exists from 5.19 on and knows
  three modalities, this one serves the four placeholders on every supported version), `encode_prompts` (whole, or
  piece by piece between placeholders as the original), `truncate_prompts` (the earliest text first, never a
  placeholder or an added special token), `pad_prompts`, `to_tensor`;
- `UniMoEChatTemplateMixin`: the processor's `apply_chat_template`, the same on every transformers version;
- `audio_kind_for_question`: whether a question asks about speech or a sound; `load_tokenizer`: a tokenizer saved by
  any transformers, under transformers 4.x.
"""

import bisect
import math
import re

import numpy as np
import torch
from transformers.utils import logging

from .feature_extraction_unimoe import SAMPLING_RATE
from .media_unimoe import PlaceholderCountError, PromptTooLongError, UniMoEProcessingError, describe_source


logger = logging.get_logger(__name__)

# A question about what is said (speech: Whisper) or about a sound (BEATs): an `<audio>` input (Whisper in a model with
# both towers) under a sound question was most likely meant as a `<sound>`.
SPEECH_QUESTION = re.compile(
    r"\b(say|says|said|saying|spoken|speak|speaks|speaker|word|words|number|digit|transcribe|transcript|speech|voice|"
    r"language)\b",
    re.IGNORECASE,
)
SOUND_QUESTION = re.compile(
    r"\b(sound|sounds|beep|beeps|tone|tones|pitch|noise|noises|music|melody|note|notes|ring|rings|buzz|bark|barks|"
    r"chirp|chirps|siren|alarm|instrument)\b",
    re.IGNORECASE,
)


def audio_kind_for_question(question: str) -> str | None:
    """The audio kind a question asks about: "speech" for what is said (e.g. "What number is said?"), "sound" for a
    sound (e.g. "How many beeps are there?"), None when it tells neither (or both)."""
    speech, sound = bool(SPEECH_QUESTION.search(question or "")), bool(SOUND_QUESTION.search(question or ""))
    return None if speech == sound else "speech" if speech else "sound"


# --- placeholders -----------------------------------------------------------------------------------------------------
def prompt_texts(text, media_given: bool) -> list[str]:
    """The processor's `text` as a list of prompts; an error naming what to pass where it is none."""
    if text is None:
        if media_given:
            raise PlaceholderCountError(
                "Media were given without `text`. Uni-MoE reads media through placeholders in the prompt: pass text "
                "with one `<image>` / `<video>` / `<audio>` per item, e.g. text='USER: <image>\\nWhat is this? "
                "ASSISTANT:'."
            )
        raise UniMoEProcessingError("UniMoEProcessor needs `text`: a string or a list of strings.")
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        items = f" with items {[type(t).__name__ for t in texts][:5]}" if isinstance(texts, (list, tuple)) else ""
        raise UniMoEProcessingError(
            f"`text` must be a string or a non-empty list of strings, got {describe_source(text)}{items}."
        )
    return list(texts)


def expand_placeholders(texts, pattern, kind_of_token, replacements):
    """Replace the i-th placeholder of each kind (`pattern` finds them, `kind_of_token` names their kind) across the
    batch by `replacements[kind][i]` copies of itself. Returns the texts and, per text, the replacement offsets
    ({"type", "span", "new_span", "text", "replacement"}, as transformers 5 writes them)."""
    iterators = {kind: iter(counts) for kind, counts in replacements.items()}
    expanded, offsets = [], []
    for sample in texts:
        pieces, sample_offsets, last, shift = [], [], 0, 0
        for match in pattern.finditer(sample) if pattern is not None else ():
            token, (start, end) = match.group(), match.span()
            kind = kind_of_token[token]
            replacement = token * next(iterators[kind])
            pieces += [sample[last:start], replacement]
            new_span = (start + shift, start + shift + len(replacement))
            sample_offsets.append(
                {"type": kind, "span": (start, end), "new_span": new_span, "text": token, "replacement": replacement}
            )
            shift += len(replacement) - (end - start)
            last = end
        expanded.append("".join(pieces + [sample[last:]]))
        offsets.append(sample_offsets)
    return expanded, offsets


# --- token ids --------------------------------------------------------------------------------------------------------
# what the tokenizer returns besides the ids, and the argument that asks for it
_OPTIONAL_OUTPUTS = {
    "offset_mapping": "return_offsets_mapping",
    "token_type_ids": "return_token_type_ids",
    "special_tokens_mask": "return_special_tokens_mask",
}


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after a text (LLaMA: [<s>] and [])."""
    bare = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []


def _space_prefix(tokenizer) -> str:
    """What to put before a text piece that starts with a space so that the tokenizer gives it SentencePiece's dummy
    prefix: "▁" for a Metaspace tokenizer that does not prefix such a text (a converted LLaMA tokenizer: " z" and "z"
    tokenize alike, where SentencePiece gives " z" an extra "▁"), else nothing."""
    plain = tokenizer.encode("z", add_special_tokens=False)
    spaced = tokenizer.encode(" z", add_special_tokens=False)
    first = tokenizer.convert_ids_to_tokens(plain[:1])
    return "▁" if first and first[0].startswith("▁") and spaced == plain else ""


def encode_prompts(tokenizer, texts, pattern, placeholder_ids, text_kwargs, tokenize_pieces=False) -> list[dict]:
    """Per text, its token ids and (when asked) offsets, special-tokens mask and token type ids, as lists, neither
    truncated nor padded, and `protected`: the positions truncation keeps (the tokenizer's added special tokens and
    the placeholders, `placeholder_ids`: token -> id, found by `pattern`).

    With `tokenize_pieces`, the text between placeholders is tokenized piece by piece (each piece on its own, without
    special tokens) and the placeholders and the tokenizer's added special tokens are put around them: the original's
    `tokenizer_image_audio_video_token` (a piece gets the dummy prefix "▁" of a SentencePiece tokenizer, also where it
    starts with a space). Else the whole text is tokenized at once."""
    add_special_tokens = text_kwargs.get("add_special_tokens", True)
    asked = {flag: text_kwargs[flag] for flag in _OPTIONAL_OUTPUTS.values() if text_kwargs.get(flag) is not None}
    prefix, suffix = _special_affixes(tokenizer) if add_special_tokens else ([], [])
    if not tokenize_pieces:
        placeholder_set = set(placeholder_ids.values())
        encoding = tokenizer(list(texts), add_special_tokens=add_special_tokens, verbose=False, **asked)
        keys = [k for k in ("input_ids", "offset_mapping", "token_type_ids", "special_tokens_mask") if k in encoding]
        rows = []
        for index in range(len(texts)):
            row = {key: list(encoding[key][index]) for key in keys}
            ids = row["input_ids"]
            head = len(prefix) if ids[: len(prefix)] == prefix else 0
            tail = len(suffix) if suffix and len(ids) - head >= len(suffix) and ids[-len(suffix) :] == suffix else 0
            row["protected"] = [
                position < head or position >= len(ids) - tail or token in placeholder_set
                for position, token in enumerate(ids)
            ]
            rows.append(row)
        return rows

    asked.setdefault("return_token_type_ids", "token_type_ids" in tokenizer.model_input_names)
    layouts, segments = [], []
    for text in texts:
        parts, last = [], 0  # ("text", start, segment index) or ("token", start, end, token id)
        for match in pattern.finditer(text) if pattern is not None else ():
            if match.start() > last:
                parts.append(("text", last, len(segments)))
                segments.append(text[last : match.start()])
            parts.append(("token", match.start(), match.end(), placeholder_ids[match.group()]))
            last = match.end()
        if last < len(text):
            parts.append(("text", last, len(segments)))
            segments.append(text[last:])
        layouts.append(parts)
    space_prefix = _space_prefix(tokenizer) if any(segment.startswith(" ") for segment in segments) else ""
    shifts = [len(space_prefix) if segment.startswith(" ") else 0 for segment in segments]
    segments = [space_prefix * bool(shift) + segment for shift, segment in zip(shifts, segments, strict=True)]
    encoding = tokenizer(segments, add_special_tokens=False, verbose=False, **asked) if segments else {}
    special_ids = set(tokenizer.all_special_ids)
    keys = ["input_ids"] + [key for key, flag in _OPTIONAL_OUTPUTS.items() if asked.get(flag)]

    def added(ids, span):  # tokens put in around the pieces: placeholders and the tokenizer's affixes
        return {
            "input_ids": list(ids),
            "offset_mapping": [span] * len(ids),
            "token_type_ids": [0] * len(ids),
            "special_tokens_mask": [int(token in special_ids) for token in ids],
            "protected": [True] * len(ids),
        }

    rows = []
    for parts in layouts:
        pieces = [added(prefix, (0, 0))]
        for part in parts:
            if part[0] == "token":
                pieces.append(added([part[3]], (part[1], part[2])))
                continue
            _, start, segment = part
            ids = list(encoding["input_ids"][segment])
            piece = {"input_ids": ids, "protected": [False] * len(ids)}
            if "offset_mapping" in keys:
                shift = start - shifts[segment]
                piece["offset_mapping"] = [
                    (max(a + shift, start), max(b + shift, start)) for a, b in encoding["offset_mapping"][segment]
                ]
            for key in ("token_type_ids", "special_tokens_mask"):
                if key in keys:
                    piece[key] = list(encoding[key][segment])
            pieces.append(piece)
        pieces.append(added(suffix, (0, 0)))
        rows.append({key: [value for piece in pieces for value in piece[key]] for key in keys + ["protected"]})
    return rows


def truncate_prompts(rows, limit, bos_token_id, placeholder_ids) -> list[dict]:
    """Each row cut to `limit` tokens by dropping its earliest unprotected (text) tokens (a leading `bos_token_id`,
    also one the chat template writes itself, is kept). Raises `PromptTooLongError` for a row whose protected
    tokens alone exceed `limit`, counting its placeholders (`placeholder_ids`: token -> id)."""
    truncated = []
    for index, row in enumerate(rows):
        excess = len(row["input_ids"]) - limit
        if excess <= 0:
            truncated.append(row)
            continue
        protected = list(row["protected"])
        if row["input_ids"] and row["input_ids"][0] == bos_token_id:
            protected[0] = True
        droppable = [position for position, keep in enumerate(protected) if not keep]
        if len(droppable) < excess:
            counts = {token: row["input_ids"].count(token_id) for token, token_id in placeholder_ids.items()}
            listed = ", ".join(f"{count} {token}" for token, count in counts.items() if count)
            kept = len(row["input_ids"]) - len(droppable)
            raise PromptTooLongError(
                f"Sample {index} cannot be truncated to {limit} tokens: its media and special tokens alone take "
                f"{kept} tokens ({listed or 'no media'}), and truncation drops only text (the earliest first), "
                "never media placeholders, which the model needs all of. Raise `max_length`, or pass fewer or "
                "shorter media."
            )
        dropped = set(droppable[:excess])
        truncated.append({key: [v for i, v in enumerate(values) if i not in dropped] for key, values in row.items()})
    return truncated


def pad_prompts(rows, text_kwargs, tokenizer, max_length=None) -> dict:
    """The rows as batch lists, padded as `padding` asks (as the tokenizer pads: pad id, attention 0, offsets (0, 0),
    special-tokens mask 1; `padding="max_length"` pads to `max_length` when the call gives none), with
    `attention_mask` and, when asked, `length`."""
    padding = text_kwargs.get("padding", False)
    lengths = [len(row["input_ids"]) for row in rows]
    if padding is True or padding == "longest":
        target = max(lengths)
    elif padding == "max_length":
        target = text_kwargs.get("max_length") or max_length
        if target is None:
            raise UniMoEProcessingError(
                "`padding='max_length'` was given without `max_length`, and the processor knows no context length "
                "to pad to. Pass `max_length=...`, or `padding=True` to pad to the longest sample."
            )
    elif padding in (False, None, "do_not_pad"):
        target = None
    else:
        raise UniMoEProcessingError(
            f"`padding` must be True / 'longest', 'max_length' or False / 'do_not_pad', got {padding!r}."
        )
    multiple = text_kwargs.get("pad_to_multiple_of")
    if target is not None and multiple:
        target = math.ceil(target / multiple) * multiple
    side = text_kwargs.get("padding_side") or tokenizer.padding_side
    if side not in ("left", "right"):
        raise UniMoEProcessingError(f"`padding_side` must be 'left' or 'right', got {side!r}.")
    fill = {
        "input_ids": tokenizer.pad_token_id,
        "offset_mapping": (0, 0),
        "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0),
        "special_tokens_mask": 1,
        "attention_mask": 0,
    }
    out = {key: [] for key in rows[0] if key != "protected"} | {"attention_mask": []}
    for row, length in zip(rows, lengths, strict=True):
        missing = max(0, (target or 0) - length)
        if missing and fill["input_ids"] is None:
            raise UniMoEProcessingError(
                "Padding was asked for, but the tokenizer has no pad token. Set one, e.g. "
                "`processor.tokenizer.pad_token = processor.tokenizer.unk_token` (the original LLaMA setting)."
            )
        padded = dict(row, attention_mask=[1] * length)
        for key in out:
            extra = [fill[key]] * missing
            out[key].append(extra + padded[key] if side == "left" else padded[key] + extra)
    if text_kwargs.get("return_length"):
        out["length"] = [len(ids) for ids in out["input_ids"]]
    order = ["input_ids", "attention_mask", "offset_mapping", "token_type_ids", "special_tokens_mask", "length"]
    return {key: out[key] for key in order if key in out}


def to_tensor(value, return_tensors, name):
    """`value` as a "pt" / "np" tensor (int64 for ids and masks), or as it is with `return_tensors=None`."""
    if return_tensors is None:
        return value
    if return_tensors not in ("pt", "np"):
        raise UniMoEProcessingError(f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}.")
    try:
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
    except ValueError:
        array = np.empty(0, dtype=object)
    if array.dtype == object:
        lengths = sorted({len(row) for row in value}) if isinstance(value, (list, tuple)) else []
        raise UniMoEProcessingError(
            f"`{name}` has rows of different lengths ({', '.join(map(str, lengths))}) and cannot be one tensor. Pad "
            'the batch: `processor(..., padding=True)`, or with `apply_chat_template` `processor_kwargs={"padding": '
            "True}` (the form that logs no warning; a `padding=True` keyword of `apply_chat_template` works too, with "
            "a warning that processor arguments belong in `processor_kwargs`)."
        )
    if name in ("input_ids", "attention_mask", "sound_features_mask", "mm_token_type_ids", "offset_mapping"):
        array = array.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(array)) if return_tensors == "pt" else array


# --- chats ------------------------------------------------------------------------------------------------------------
def normalize_conversations(conversation):
    """(chats, whether a batch was given): None-valued message keys dropped (APIs send `content=None`), OpenAI
    `{"type": "image_url", "image_url": {"url": ...}}` blocks turned into `{"type": "image", "url": ...}`. The
    caller's dicts are not modified."""
    is_batched = (
        isinstance(conversation, (list, tuple))
        and bool(conversation)
        and (isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "content"))
    )
    normalized = []
    for chat in conversation if is_batched else [conversation]:
        messages = []
        for message in chat:
            message = {key: value for key, value in message.items() if value is not None}
            if isinstance(message.get("content"), list):
                blocks = []
                for block in message["content"]:
                    if isinstance(block, dict) and block.get("type") == "image_url" and "image_url" in block:
                        url = block["image_url"]
                        block = {"type": "image", "url": url.get("url", "") if isinstance(url, dict) else url}
                    blocks.append(block)
                message["content"] = blocks
            messages.append(message)
        normalized.append(messages)
    return normalized, is_batched


def assistant_masks(offset_mapping, replacement_offsets, input_ids, generation_indices):
    """1 on the tokens of the template's `{% generation %}` spans (assistant replies), placeholders expanded."""
    masks = []
    for i in range(len(input_ids)):
        mask = [0] * len(input_ids[i])
        replaced = replacement_offsets[i] if replacement_offsets else []
        placeholder_ends = [r["span"][1] for r in replaced]
        chars_gained = [0] + [r["new_span"][1] - r["span"][1] for r in replaced]
        for span in generation_indices[i]:
            # shift the span past the placeholders expanded before it
            start, end = (char + chars_gained[bisect.bisect_right(placeholder_ends, char)] for char in span)
            # every token overlapping the span (zero-width tokens, i.e. padding and added specials, never do)
            for position, (token_start, token_end) in enumerate(offset_mapping[i]):
                if token_start < end and token_end > start:
                    mask[position] = 1
        masks.append(mask)
    return masks


def template_variables(chat_template: str):
    """The variables a chat template reads, or None where this transformers cannot tell (before 5.19)."""
    try:
        from transformers.utils.chat_template_utils import _get_template_variables

        return frozenset(_get_template_variables(chat_template))
    except Exception:  # a private helper of transformers: missing or changed
        return None


class UniMoEChatTemplateMixin:
    """`apply_chat_template` of `UniMoEProcessor`, the same on every transformers version (ProcessorMixin's own differs
    from one version to the next); its arguments are those of transformers 5's."""

    def apply_chat_template(self, conversation, chat_template=None, tools=None, documents=None,
                            add_generation_prompt=False, continue_final_message=False,
                            return_assistant_tokens_mask=False, tokenize=False, return_tensors="auto",
                            return_dict=False, load_audio_from_video=False, processor_kwargs=None,
                            sanitize_control_tokens=False, **kwargs):  # fmt: skip
        r"""
        Render chats with the chat template and, with `tokenize=True`, run the processor on the prompt and the chats'
        media (content blocks `{"type": "image" | "video" | "audio" | "sound", <"path" | "url" | "image" | "video" |
        "audio" | "sound">: ...}`; arrays of audio blocks take the block's `sampling_rate`).

        `processor_kwargs` go to the processor call (keyword arguments the template does not read go there too, as in
        transformers 4); `return_dict=True` returns the processor's `BatchFeature` (with `assistant_masks` when
        `return_assistant_tokens_mask=True`), else the `input_ids`. `load_audio_from_video` is ignored (Uni-MoE reads
        no audio track of a video).
        """
        processor_kwargs = dict(processor_kwargs or {})
        chat_template = self._resolve_chat_template(chat_template)
        # keyword arguments the template does not read go to the processor call (all of them where this transformers
        # cannot tell, as transformers 4 did)
        variables = template_variables(chat_template)
        legacy = {key: value for key, value in kwargs.items() if variables is None or key not in variables}
        if legacy and variables is not None:
            logger.warning_once(
                "Keyword arguments for the processor call should be passed to `apply_chat_template` in "
                f"`processor_kwargs`, not as keyword arguments: {sorted(legacy)}."
            )
        processor_kwargs.update(legacy)
        if continue_final_message:
            if add_generation_prompt:
                raise ValueError(
                    "continue_final_message and add_generation_prompt are not compatible. Use continue_final_message "
                    "when you want the model to continue the final message, and add_generation_prompt when you want "
                    "to add a header that will prompt it to start a new assistant message instead."
                )
            if return_assistant_tokens_mask:
                raise ValueError("continue_final_message is not compatible with return_assistant_tokens_mask.")
        if return_assistant_tokens_mask:
            backend = getattr(self.tokenizer, "backend", None)
            is_fast = backend == "tokenizers" if backend is not None else getattr(self.tokenizer, "is_fast", False)
            if not is_fast:
                raise ValueError(
                    "`return_assistant_tokens_mask` needs a fast (tokenizers) tokenizer: it reads token offsets."
                )
            processor_kwargs["return_offsets_mapping"] = True
            processor_kwargs["return_text_replacement_offsets"] = True
        audio_kwargs = processor_kwargs.get("audio_kwargs") or {}
        sampling_rate = processor_kwargs.get("sampling_rate", audio_kwargs.get("sampling_rate"))
        if sampling_rate is None:
            sampling_rate = getattr(self.feature_extractor, "sampling_rate", SAMPLING_RATE)
        conversations, is_batched = normalize_conversations(conversation)
        if tokenize:
            batch_images, batch_videos, batch_audios, additional_inputs = self._multimodal_inputs_from_conversations(
                conversations, {"sampling_rate": sampling_rate}
            )
        if sanitize_control_tokens:
            if not hasattr(self.tokenizer, "_mark_chat_inputs"):
                raise ValueError("`sanitize_control_tokens=True` needs a newer transformers (5.23 or later).")
            conversations, tools, documents, kwargs = self.tokenizer._mark_chat_inputs(
                chat_template, conversations, tools, documents, kwargs, tokenize, return_assistant_tokens_mask
            )
            processor_kwargs["sanitize_control_tokens"] = True

        from transformers.utils.chat_template_utils import render_jinja_template

        prompt, generation_indices = render_jinja_template(
            conversations=conversations,
            tools=tools,
            documents=documents,
            chat_template=chat_template,
            return_assistant_tokens_mask=return_assistant_tokens_mask,
            continue_final_message=continue_final_message,
            add_generation_prompt=add_generation_prompt,
            **{**self.tokenizer.special_tokens_map, **kwargs},
        )
        if not is_batched:
            prompt = prompt[0]
        if not tokenize:
            return prompt

        # a template that writes the BOS itself: the tokenizer must not add another
        first = prompt[0] if is_batched else prompt
        if self.tokenizer.bos_token is not None and first.startswith(self.tokenizer.bos_token):
            processor_kwargs["add_special_tokens"] = False
        if return_tensors != "auto":
            processor_kwargs["return_tensors"] = return_tensors
        else:
            return_tensors = None
        if batch_audios:  # arrays in audio blocks are read at this rate
            if "sampling_rate" in audio_kwargs:
                processor_kwargs["audio_kwargs"] = {**audio_kwargs, "sampling_rate": sampling_rate}
            else:
                processor_kwargs["sampling_rate"] = sampling_rate
        images = processor_kwargs.pop("images", None)  # templates may place images given here
        if images:
            batch_images = images if is_batched else [images]
        images_exist = any(image is not None for sample in batch_images for image in sample)
        videos_exist = any(video is not None for sample in batch_videos for video in sample)
        out = self(
            text=prompt,
            images=batch_images if images_exist else None,
            videos=batch_videos if videos_exist else None,
            audio=batch_audios or None,
            **additional_inputs,
            **processor_kwargs,
        )
        if not return_dict:
            return out["input_ids"]
        if return_assistant_tokens_mask:
            out["assistant_masks"] = assistant_masks(
                out.pop("offset_mapping"), out.pop("text_replacement_offsets", None), out["input_ids"],
                generation_indices,
            )  # fmt: skip
            out.convert_to_tensors(tensor_type=return_tensors)
        return out

    def _resolve_chat_template(self, chat_template=None) -> str:
        """The template to render: `chat_template` itself, or the processor's (by name when it holds several)."""
        templates = self.chat_template
        if chat_template is not None:
            if isinstance(templates, dict) and chat_template in templates:
                return templates[chat_template]
            return chat_template
        if isinstance(templates, dict):
            if "default" in templates:
                return templates["default"]
            raise ValueError(
                "The processor has several chat templates and none is named 'default': pass `chat_template=` (one "
                f"of {', '.join(templates)})."
            )
        if templates is None:
            raise ValueError("Cannot use apply_chat_template because this processor does not have a chat template.")
        return templates

    def _multimodal_inputs_from_conversations(self, conversations, audio_loading_params=None, *args, **kwargs):
        """Collect the media of chat content blocks in the order the chat template places their placeholders (per
        message: images, audio, sounds, videos). Files are decoded later, by the processor call."""
        batch_images, batch_videos, batch_audio, batch_sound = [], [], [], []
        sound_list = batch_sound if "sound" in self._placeholders else batch_audio
        sampling_rate = (audio_loading_params or {}).get("sampling_rate")
        for conversation in conversations:
            images, videos = [], []
            for message in conversation:
                content = message.get("content")
                if not isinstance(content, (list, tuple)):
                    continue
                blocks = [block for block in content if isinstance(block, dict)]
                for kind, target, keys in (
                    ("image", images, ("image", "url", "path", "base64")),
                    ("audio", batch_audio, ("audio", "url", "path")),
                    ("sound", sound_list, ("sound", "audio", "url", "path")),
                    ("video", videos, ("video", "url", "path")),
                ):
                    for block in (block for block in blocks if block.get("type") == kind):
                        media = next((block[key] for key in keys if block.get(key) is not None), None)
                        if media is None:
                            continue
                        if kind == "sound" and "sound" not in self.audio_paths.values():
                            raise PlaceholderCountError(
                                "A {'type': 'sound'} block was given, but this model has no sound tower; use an "
                                "{'type': 'audio'} block for speech."
                            )
                        if kind in ("audio", "sound") and isinstance(media, (np.ndarray, torch.Tensor, list)):
                            media = {"array": media, "sampling_rate": block.get("sampling_rate", sampling_rate)}
                        target.append(media)
            batch_images.append(images)
            batch_videos.append(videos)
        return batch_images, batch_videos, batch_audio, ({"sound": batch_sound} if batch_sound else {})


# --- loading a tokenizer under transformers 4.x -----------------------------------------------------------------------
try:
    from transformers import TokenizersBackend  # noqa: F401  (transformers 5)
except ImportError:  # transformers 4.x: folders saved by 5.x name this class
    from transformers import PreTrainedTokenizerFast

    class TokenizersBackend(PreTrainedTokenizerFast):
        """transformers 5's generic tokenizer (all of it in tokenizer.json), for transformers 4.x."""

        model_input_names = ["input_ids", "attention_mask"]


def load_tokenizer(pretrained_model_name_or_path, **kwargs):
    """The tokenizer of a folder saved by any transformers, for transformers 4.x (5.x loads it with AutoTokenizer).

    transformers 5 writes `extra_special_tokens` as a list (4.x takes a dict of named tokens: they are passed as
    `additional_special_tokens`) and may name its generic `TokenizersBackend` class, unknown to 4.x: tokenizer.json is
    all a fast tokenizer needs, and `TokenizersBackend` above reads it under that name."""
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import get_tokenizer_config, tokenizer_class_from_name

    config = get_tokenizer_config(pretrained_model_name_or_path, **kwargs)
    overrides = {}
    extra = config.get("extra_special_tokens")
    if isinstance(extra, (list, tuple)):
        additional = list(config.get("additional_special_tokens") or [])
        overrides["additional_special_tokens"] = additional + [token for token in extra if token not in additional]
        overrides["extra_special_tokens"] = {}
    name = config.get("tokenizer_class")
    if name and tokenizer_class_from_name(name) is None and tokenizer_class_from_name(f"{name}Fast") is None:
        return TokenizersBackend.from_pretrained(pretrained_model_name_or_path, **{**kwargs, **overrides})
    return AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **{**kwargs, **overrides})


__all__ = [
    "UniMoEChatTemplateMixin",
    "assistant_masks",
    "audio_kind_for_question",
    "encode_prompts",
    "expand_placeholders",
    "load_tokenizer",
    "normalize_conversations",
    "pad_prompts",
    "template_variables",
    "to_tensor",
    "truncate_prompts",
]
