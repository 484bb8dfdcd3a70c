# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""The demo's uploaded files: what each one is (image, video, speech or sound), and what went wrong with one, in a
demo user's terms (no server paths, no advice about code)."""

from __future__ import annotations

import mimetypes
import re
import sys
from pathlib import Path


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".m4a", ".aac", ".opus")
AUDIO_CHOICES = ("auto", "speech", "sound")
_SPEECH_QUESTION = re.compile(
    r"\b(say|says|said|saying|spoken|speak|speaks|speaker|word|words|number|digit|transcribe|transcript|speech|voice|"
    r"language)\b",
    re.IGNORECASE,
)
# absolute paths in error texts (server paths such as gradio's upload cache): shown as their last part
_ABSOLUTE_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s'\"/\\:]+)+[/\\]([^\s'\"/\\:]+)")


class DemoInputError(ValueError):
    """A chat message the demo cannot turn into model inputs (unknown file type, nothing asked)."""


def file_path(item) -> str | None:
    """The server path of a file of gradio's messages (a path, a {"path"} or {"file": {"path"}} dict, a FileData)."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        if isinstance(item.get("file"), dict):
            return item["file"].get("path")
        return item.get("path")
    return getattr(item, "path", None)


def media_kind(path: str) -> str:
    """The kind of an uploaded file, "image", "video" or "audio", from its suffix (else its MIME type)."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    mime = (mimetypes.guess_type(path)[0] or "").split("/")[0]
    if mime in ("image", "video", "audio"):
        return mime
    raise DemoInputError(
        f"Cannot use the file {Path(path).name!r} (type {suffix or 'unknown'}): expected an image "
        f"({', '.join(IMAGE_SUFFIXES)}), a video ({', '.join(VIDEO_SUFFIXES)}) or audio ({', '.join(AUDIO_SUFFIXES)}). "
        "Convert it to one of these and upload it again."
    )


def audio_block_type(processor, audio_is: str, question: str) -> str:
    """The content block type of an audio file, as the "Audio is" control says: "audio" (the `<audio>` placeholder,
    speech) or "sound" (`<sound>`); "auto" takes speech when the question is about what is said, sound otherwise."""
    if audio_is not in AUDIO_CHOICES:
        raise DemoInputError(f"'Audio is' was {audio_is!r}; expected one of {', '.join(AUDIO_CHOICES)}.")
    if not processor.audio_paths:
        raise DemoInputError("This model has no speech or sound tower, so it cannot take audio. Ask without audio.")
    if len(processor.audio_paths) == 1:  # one audio path: `<audio>` goes to it (Whisper or BEATs)
        return "audio"
    if audio_is == "auto":
        audio_is = "speech" if _SPEECH_QUESTION.search(question or "") else "sound"
    return "audio" if audio_is == "speech" else "sound"


def processor_error_class(processor, name: str) -> type | None:
    """The error class `name` of the processor's own module (the remote-code copy of processing_unimoe when loaded
    with trust_remote_code); None where that module has no such class."""
    found = getattr(sys.modules.get(type(processor).__module__), name, None)
    return found if isinstance(found, type) else None


def processing_errors(processor) -> tuple[type[BaseException], ...]:
    """The input errors of a message: the processor's (`UniMoEProcessingError`) and the demo's own."""
    base = processor_error_class(processor, "UniMoEProcessingError")
    return (DemoInputError,) + ((base,) if base is not None else ())


def _is_processor_error(error: BaseException, processor, name: str) -> bool:
    cls = processor_error_class(processor, name)
    return cls is not None and isinstance(error, cls)


def plain_text(text: str) -> str:
    """An error text for a demo user: paths shown by their last part (no server paths), and without the sentences
    that advise code (processor arguments in backticks, `name=value`)."""
    text = _ABSOLUTE_PATH.sub(lambda match: match.group(1), text)
    text = re.sub(r"\s*\(`[^`]*`\)", "", text)  # "(`max_image_pixels`)": the argument behind a limit
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", text.strip())
    kept = [s for s in sentences if "`" not in s and not re.search(r"\b\w+=\S", s)]
    return " ".join(kept or sentences[:1]).strip()


def explain_file_error(error: BaseException, name: str, kind: str, processor, context: int) -> str:
    """What went wrong with one uploaded file (`kind`: its content block type), in a demo user's terms."""
    kind = {"audio": "audio clip", "sound": "sound"}.get(kind, kind)
    if _is_processor_error(error, processor, "EmptyAudioError"):
        return f"Could not use {name!r}: the {kind} holds no sound. Record or upload it again."
    if _is_processor_error(error, processor, "TooManyChunksError"):
        extractor = processor.feature_extractor
        seconds = processor.max_sound_chunks * extractor.n_samples / extractor.sampling_rate
        return (
            f"Could not use {name!r}: the {kind} is longer than the {seconds:g} s of sound this model listens to. "
            "Upload a shorter clip."
        )
    if _is_processor_error(error, processor, "PlaceholderCountError"):
        return f"Could not use {name!r}: this model cannot take {kind}s. Ask without it, or use another model."
    if _is_processor_error(error, processor, "PromptTooLongError"):
        return (
            f"Could not use {name!r}: the {kind} alone is too long for the model's context of {context} tokens. "
            "Upload a shorter one."
        )
    if _is_processor_error(error, processor, "MediaTooLargeError"):
        limit = re.search(r"at most ([\d,.]+ (?:pixels|frames|s))\b", str(error))
        return (
            f"Could not use {name!r}: the {kind} is too large for this model"
            + (f" (it takes at most {limit.group(1)})" if limit else "")
            + ". Upload a smaller or shorter one."
        )
    if _is_processor_error(error, processor, "MediaDecodeError"):
        article = "an" if kind[0] in "aeiou" else "a"
        return (
            f"Could not read {name!r} as {article} {kind}: the file is damaged or in a format this server cannot "
            "decode. Upload another file, or convert it (e.g. to PNG, MP4 or WAV)."
        )
    return f"Could not use {name!r}: {plain_text(str(error))}"
