# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""The demo's chat: gradio's multimodal message and messages-format history -> chat messages for the processor's chat
template (typed placeholders kept as text), and the most recent of them that fit the model's context."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from media import DemoInputError, audio_block_type, file_path, media_kind


ERROR_MARK = "⚠️"  # starts the chat message of a request that failed; such turns are left out of later prompts
NOTE_MARK = "ℹ️"  # starts the paragraph of an answer that says which earlier turns were left out
WORD_JOINER = "\u2060"


@dataclass
class Exchange:
    """One earlier question (its texts and files) and its answer."""

    texts: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    answer: str = ""


def control_strings(processor) -> list[str]:
    """The strings that typed text must not produce as tokens: the processor's placeholders and every added token of
    the tokenizer (special tokens such as `</s>`), longest first."""
    strings = set(getattr(processor.tokenizer, "get_added_vocab", dict)())
    for name in ("image_token", "video_token", "audio_token", "sound_token"):
        if getattr(processor, name, None):
            strings.add(getattr(processor, name))
    return sorted((s for s in strings if len(s) > 1 and not s.isspace()), key=len, reverse=True)


def escape_text(text: str, controls) -> str:
    """`text` with a word joiner (U+2060, invisible) after the first character of each control string in it, so
    that the tokenizer reads them as characters: a typed `<image>` is text, not a media placeholder."""
    if not controls or not text:
        return text
    pattern = re.compile("|".join(re.escape(s) for s in controls))
    return pattern.sub(lambda match: match.group()[0] + WORD_JOINER + match.group()[1:], text)


def _strip_note(answer: str) -> str:
    """An answer without the leading note paragraph (`NOTE_MARK ...`) the demo adds when turns were left out."""
    while answer.startswith(NOTE_MARK):
        answer = answer.split("\n\n", 1)[1] if "\n\n" in answer else ""
    return answer.strip()


def parse_history(history) -> list[Exchange]:
    """Gradio's messages-format history -> the answered exchanges, oldest first. Consecutive entries of one role
    are merged (a file then its question is one question); failed exchanges (the answer starts with ERROR_MARK) and
    questions without an answer (a stopped request) are left out; notes are stripped from answers."""
    turns: list[tuple[str, list, list]] = []  # (role, texts, files)
    for entry in history or []:
        role = entry.get("role") if isinstance(entry, dict) else getattr(entry, "role", None)
        content = entry.get("content") if isinstance(entry, dict) else getattr(entry, "content", None)
        if role not in ("user", "assistant"):
            continue
        texts, files = [], []
        for item in content if isinstance(content, (list, tuple)) else [content]:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, dict) and item.get("type") == "text":
                texts.append(str(item.get("text", "")))
            elif role == "user" and file_path(item):
                files.append(file_path(item))
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(texts)
            turns[-1][2].extend(files)
        else:
            turns.append((role, texts, files))
    exchanges = []
    for question, answer in zip(turns, turns[1:], strict=False):
        if question[0] != "user" or answer[0] != "assistant":
            continue
        text = " ".join(t for t in answer[1] if t).strip()
        if text.startswith(ERROR_MARK):
            continue
        exchanges.append(Exchange(list(question[1]), list(question[2]), _strip_note(text)))
    return exchanges


def message_parts(message) -> tuple[str, list[str]]:
    """The text and file paths of gradio's multimodal message (or a plain string)."""
    if isinstance(message, str):
        message = {"text": message, "files": []}
    if message is not None and not isinstance(message, dict):
        raise DemoInputError(
            f"The message is a {type(message).__name__}; expected {{'text': ..., 'files': [...]}} or a string."
        )
    text = str((message or {}).get("text") or "").strip()
    files = [file_path(item) for item in (message or {}).get("files") or []]
    if any(not isinstance(path, str) or not path for path in files):
        raise DemoInputError("A file of the message has no path: upload it again (gradio_client: handle_file(path)).")
    if not text and not files:
        raise DemoInputError("The message is empty: type a question, attach a file, or both.")
    return text, files


def user_message(texts, files, processor, audio_is: str, controls) -> dict:
    """A user chat message with content blocks for the processor's chat template (files first, then the text)."""
    question = " ".join(t for t in texts if t).strip()
    content = []
    for path in files:
        kind = media_kind(path)
        if kind == "audio":
            kind = audio_block_type(processor, audio_is, question)
        content.append({"type": kind, "path": path})
    if question:
        content.append({"type": "text", "text": escape_text(question, controls)})
    return {"role": "user", "content": content}


def assistant_message(answer: str, controls) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": escape_text(answer, controls)}]}


def to_chat_messages(message, history, processor, audio_is: str = "auto", use_history: bool = True) -> list[dict]:
    """Gradio's multimodal message and messages-format history -> chat messages for the processor's chat template
    (the whole history when `use_history`; `fit_to_context` leaves out what does not fit)."""
    controls = control_strings(processor)
    text, files = message_parts(message)
    messages = []
    for exchange in parse_history(history) if use_history else []:
        messages.append(user_message(exchange.texts, exchange.files, processor, audio_is, controls))
        messages.append(assistant_message(exchange.answer, controls))
    messages.append(user_message([text], files, processor, audio_is, controls))
    return messages


@dataclass
class Fitted:
    """What `fit_to_context` chose: the encoded prompt, how many of the earlier exchanges it left out, and the new
    tokens the answer may take."""

    inputs: object
    dropped: int
    max_new_tokens: int


class ContextOverflowError(DemoInputError):
    """The new message alone does not fit the model's context."""


def fit_to_context(
    encode, exchanges: list[list[dict]], current: dict, context: int, max_new_tokens: int, too_long=()
) -> Fitted:
    """The prompt of the most recent exchanges (each a [user, assistant] message pair, oldest first) and `current`
    that leaves room for `max_new_tokens` in the `context`: the oldest exchanges are left out first (a binary search
    over how many, each probe one `encode(messages)`). With no exchange left, the answer's room shrinks to what the
    context leaves; a message that alone fills the context raises `ContextOverflowError`. `too_long`: the exception
    classes `encode` raises for a prompt longer than the context."""
    probes = {}

    def probe(dropped: int):
        if dropped not in probes:
            messages = [m for pair in exchanges[dropped:] for m in pair] + [current]
            try:
                inputs = encode(messages)
                probes[dropped] = (inputs, int(inputs["input_ids"].shape[-1]))
            except too_long:
                probes[dropped] = (None, None)
        inputs, length = probes[dropped]
        return inputs if length is not None and length + max_new_tokens <= context else None

    if probe(0) is not None:
        return Fitted(probes[0][0], 0, max_new_tokens)
    n = len(exchanges)
    if probe(n) is None:
        inputs, length = probes[n]
        if length is None or length >= context:
            raise ContextOverflowError(
                f"This message is too long for the model: with its files it takes more than the model's context of "
                f"{context} tokens. Send fewer or shorter files, or a shorter question."
            )
        return Fitted(inputs, n, context - length)
    low, high = 1, n  # probe(n) fits, probe(0) does not: the fewest left out that fits is in [1, n]
    while low < high:
        middle = (low + high) // 2
        if probe(middle) is not None:
            high = middle
        else:
            low = middle + 1
    return Fitted(probes[low][0], low, max_new_tokens)
