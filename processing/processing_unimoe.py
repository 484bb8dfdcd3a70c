# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE processor: text, image, video, speech and sound in, model inputs out.

This file is uploaded to the Hub next to `modeling_unimoe.py` and loaded with `trust_remote_code=True`: it imports only
torch, numpy, PIL, transformers, the standard library and its two siblings, `media_unimoe.py` (reading media, bounded
before decoding, and the input errors) and `feature_extraction_unimoe.py` (audio chunks and the BEATs fbank).

It works unchanged, with the same outputs bit for bit, on transformers 4.57 and 5.x (checked: 4.57.6, 5.0, 5.19, 5.23,
5.25): what differs between versions is found by feature detection (sub-processor declaration and loading, the save
layout, a tokenizer saved by 5.x), and `apply_chat_template` is the processor's own, the same everywhere. (Where
torchvision is installed, transformers 5 loads its torchvision CLIP image processor, whose resize differs slightly.)

    processor = AutoProcessor.from_pretrained("path/to/uni-moe", trust_remote_code=True)
    inputs = processor(text="USER: <image>\nWhat is this? ASSISTANT:", images=image, return_tensors="pt")
    output_ids = model.generate(**inputs, max_new_tokens=20)

Placeholders and what fills them (each expands to the number of LLM positions its features take):

| text        | argument  | model input                                          | tokens                                  |
|-------------|-----------|------------------------------------------------------|-----------------------------------------|
| `<image>`   | `images`  | `pixel_values` [images, 3, S, S]                     | `image_seq_length`                      |
| `<video>`   | `videos`  | `pixel_values_videos` [videos, frames, 3, S, S]      | `image_seq_length` (frames mean-pooled) |
| `<audio>`   | `audio`   | `input_features` [chunks, mels, 3000] (Whisper)      | `num_speech_query_tokens` per chunk    |
| `<sound>`   | `sound`   | `sound_features` [chunks, 2998, 128] + mask (BEATs)  | `num_sound_query_tokens` per chunk     |

A model without a speech tower (the released BEATs "audio" variant) sends `<audio>` / `audio=` to the sound path.
Rows of every media tensor follow the text: all media of sample 0 in text order, then sample 1, and so on.

Preprocessing of the released models (the settings `hub_export` writes into a converted folder's processor config):

- prompt ids: `tokenize_text_pieces=True` tokenizes the text between placeholders piece by piece, as the original's
  `tokenizer_image_audio_video_token` did, so every piece after a placeholder starts with the LLaMA tokenizer's dummy
  prefix "▁" (e.g. 29871 before "\n");
- speech: cut into pieces of `speech_chunk_stride` = 480,001 samples, each cut to Whisper's 480,000 (the original's
  WhisperProcessor call keeps 480,000 samples of each piece);
- sound: chunks of 480,000 samples, the last padded by repeating its last sample (`sound_chunk_padding="last_sample"`);
  at most `max_sound_chunks` = 20 chunks (the original keeps the first 20 of a longer sound without a word; here a
  longer sound is refused unless the call passes `truncate_sound=True`);
- resampling: python-soxr at high quality, stereo averaged to mono first, as the original's `librosa.load(sr=16000)`
  (`resampler="soxr_hq"`, the default; the tiny checkpoint keeps the windowed-sinc resampler it was trained with).

Media are bounded before they are decoded (`max_image_pixels`, `max_video_frames`; audio at most `max_sound_chunks`
chunks on the sound path, at most what the model's context holds on the speech path): see `media_unimoe.py`.

Every input problem raises a `UniMoEProcessingError` (a `ValueError`) naming what was received, what was expected and
how to fix it; its subclasses tell the cases apart.
"""

import bisect
import inspect
import math
import re

import numpy as np
import torch
from PIL import Image
from transformers import WhisperFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .feature_extraction_unimoe import (
    CHUNK_SECONDS,
    ORIGINAL_MAX_SOUND_CHUNKS,
    SOUND_CHUNK_PADDINGS,
    UniMoEBEATsFeatureExtractor,
    audio_chunks,
    num_audio_chunks,
    too_many_chunks_message,
)
from .media_unimoe import (
    MAX_IMAGE_PIXELS,
    MAX_VIDEO_FRAMES,
    RESAMPLERS,
    SAMPLING_RATE,
    AudioLimit,
    EmptyAudioError,
    MediaDecodeError,
    MediaTooLargeError,
    NotEnoughFramesError,
    PlaceholderCountError,
    PromptTooLongError,
    TooManyChunksError,
    UniMoEProcessingError,
    describe_source,
    is_path_like,
    load_audio,
    load_image,
    load_video,
)


try:  # the PIL backend needs no torchvision (which does not install beside every torch)
    from transformers import CLIPImageProcessorPil as _CLIPImageProcessor
except ImportError:  # older transformers: CLIPImageProcessor is the PIL / numpy one (the fast one is ...Fast)
    from transformers import CLIPImageProcessor as _CLIPImageProcessor


logger = logging.get_logger(__name__)

# transformers 5 finds a processor's sub-processors in its `__init__` signature; 4.x in class attributes
# (`attributes`, `image_processor_class`, ...), which 5.x reports as deprecated: they are set only where needed.
_SUB_PROCESSORS_FROM_SIGNATURE = hasattr(ProcessorMixin, "get_attributes")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# A question about what is said (speech: Whisper) or about a sound (BEATs). In a model with both towers `<audio>` /
# `audio=` / {"type": "audio"} feed Whisper and `<sound>` / `sound=` / {"type": "sound"} feed BEATs; an `<audio>`
# input under a sound question was most likely meant as a sound (`audio_kind_for_question`).
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
    if speech == sound:
        return None
    return "speech" if speech else "sound"


# --- the processor ----------------------------------------------------------------------------------------------------
_TEXT_KWARGS = (
    "padding",
    "truncation",
    "max_length",
    "pad_to_multiple_of",
    "padding_side",
    "add_special_tokens",
    "return_attention_mask",
    "return_offsets_mapping",
    "return_token_type_ids",
    "return_special_tokens_mask",
    "return_length",
    "verbose",
)
_PROCESSOR_KWARGS = (
    "return_tensors",
    "sampling_rate",
    "truncate_sound",
    "short_video",
    "return_text_replacement_offsets",
    "return_mm_token_type_ids",
)
_NESTED_KWARGS = ("text_kwargs", "audio_kwargs", "videos_kwargs", "common_kwargs")


def _is_frame(value) -> bool:
    return isinstance(value, Image.Image) or (isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim in (2, 3))


def _is_single(kind: str, value) -> bool:
    """Whether `value` is one media item of `kind` (rather than a list of items)."""
    if value is None:
        return False
    if is_path_like(value) or isinstance(value, (bytes, bytearray, dict, Image.Image)):
        return True
    if isinstance(value, (np.ndarray, torch.Tensor)):  # a batch only with one more dim than an item
        return value.ndim != {"image": 4, "video": 5}.get(kind, -1)
    if isinstance(value, (list, tuple)) and value:
        if kind == "video":  # a video given as its frames
            return all(_is_frame(frame) for frame in value)
        if kind in ("audio", "sound"):  # a waveform given as a list of numbers
            return all(isinstance(sample, (int, float, np.number)) for sample in value)
    return False


def _media_list(kind: str, value, num_texts: int) -> tuple[list, list[int] | None]:
    """The items of one media argument as a flat list, plus the per-sample counts when it was given nested (one list
    per text)."""
    if value is None:
        return [], None
    if _is_single(kind, value):
        return [value], None
    if isinstance(value, (np.ndarray, torch.Tensor)):  # images [n, H, W, C] or videos [n, frames, H, W, C]
        return list(value), None
    if not isinstance(value, (list, tuple)):
        return [value], None  # rejected with a precise message when it is read
    items = list(value)
    nested = (
        len(items) == num_texts
        and all(isinstance(item, (list, tuple)) and not _is_single(kind, item) for item in items)
        and any(len(item) for item in items)
    )
    if nested:
        return [media for sample in items for media in sample], [len(sample) for sample in items]
    return items, None


try:
    from transformers import TokenizersBackend as _TokenizersBackend  # noqa: F401  (transformers 5)
except ImportError:  # transformers 4.x: folders saved by 5.x name this class
    from transformers import PreTrainedTokenizerFast

    class TokenizersBackend(PreTrainedTokenizerFast):
        """transformers 5's generic tokenizer (all of it in tokenizer.json), for transformers 4.x."""

        model_input_names = ["input_ids", "attention_mask"]


def _load_tokenizer(pretrained_model_name_or_path, **kwargs):
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


def _template_variables(chat_template: str):
    """The variables a chat template reads, or None where this transformers cannot tell (before 5.19)."""
    try:
        from transformers.utils.chat_template_utils import _get_template_variables

        return frozenset(_get_template_variables(chat_template))
    except Exception:  # a private helper of transformers: missing or changed
        return None


class UniMoEProcessor(ProcessorMixin):
    r"""
    Processor for Uni-MoE: the tokenizer, a CLIP image processor (images and video frames), a Whisper feature
    extractor (speech) and a BEATs filterbank extractor (sounds) behind one call.

    Args:
        image_processor (`CLIPImageProcessor`, *optional*): defaults to CLIP ViT-L/14-336's settings.
        feature_extractor (`WhisperFeatureExtractor`, *optional*): defaults to whisper-small's (80 mel bins, 30 s).
            Its `chunk_length` is the audio chunk of both audio paths (the config's `audio_chunk_seconds`).
        tokenizer: the model's tokenizer, with the placeholder strings below as single (special) tokens.
        chat_template (`str`, *optional*): the vicuna_v1 template (chat_template.jinja).
        image_token / video_token / audio_token / sound_token (`str` or `None`): placeholder strings. `audio_token`
            feeds the speech path (Whisper) when `num_speech_query_tokens` is set, else the sound path (BEATs);
            `sound_token` feeds the sound path in models that have both. `None` turns a placeholder off.
        image_seq_length (`int`, *optional*): tokens per image and per video (None: the model has no vision tower).
        num_video_frames (`int`): frames sampled per video.
        num_speech_query_tokens (`int`, *optional*): tokens per audio chunk of speech (None: no speech tower).
        num_sound_query_tokens (`int`, *optional*): tokens per audio chunk of sound (None: no sound tower).
        max_sound_chunks (`int`): most chunks per sound. Longer sounds raise `TooManyChunksError` (from a file's
            header, before decoding) unless the call passes `truncate_sound=True`, which keeps the first
            `max_sound_chunks` chunks (the original keeps the first 20 without a word).
        context_length (`int`, *optional*): the model's context (max_position_embeddings); longer prompts raise
            `PromptTooLongError` unless the call asks for truncation (`truncation=True`, `max_length=`), which drops
            the earliest text (never media, never the end of the prompt). It also bounds one speech input: audio
            longer than the context holds is refused from the file's header, before decoding.
        tokenize_text_pieces (`bool`, default False): tokenize the text between placeholders piece by piece, as the
            original Uni-MoE did (each piece then starts with a SentencePiece tokenizer's dummy prefix "▁"; the
            released models were trained so). False tokenizes the whole prompt at once (the tiny model's way).
        speech_chunk_stride (`int`, *optional*): samples from one speech chunk's start to the next; None: the chunk
            length. The original cuts 480,001-sample pieces and Whisper keeps 480,000 of each (stride 480,001).
        sound_chunk_padding (`"zeros"` or `"last_sample"`): how the last sound chunk is padded to the chunk length;
            the original repeats the last sample.
        max_image_pixels (`int`, *optional*): most pixels of an image file or a video frame (checked from the
            header, before decoding). None: no limit.
        max_video_frames (`int`, *optional*): most frames of a video file (from the header where it has them,
            before decoding). None: no limit.
        resampler (`"soxr_hq"` or `"windowed_sinc"`): how audio not at 16 kHz is resampled: python-soxr at high
            quality, as the original (librosa's default), or the windowed-sinc resampler the tiny checkpoint's
            training data went through.
    """

    if not _SUB_PROCESSORS_FROM_SIGNATURE:  # transformers 4.x
        attributes = ["image_processor", "feature_extractor", "tokenizer"]
        image_processor_class = _CLIPImageProcessor.__name__
        feature_extractor_class = "WhisperFeatureExtractor"
        tokenizer_class = "AutoTokenizer"  # checked as any PreTrainedTokenizerBase

        @classmethod
        def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
            return [
                _CLIPImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs),
                WhisperFeatureExtractor.from_pretrained(pretrained_model_name_or_path, **kwargs),
                _load_tokenizer(pretrained_model_name_or_path, **kwargs),
            ]

    def __init__(
        self,
        image_processor=None,
        feature_extractor=None,
        tokenizer=None,
        chat_template=None,
        image_token="<image>",
        video_token="<video>",
        audio_token="<audio>",
        sound_token=None,
        image_seq_length=None,
        num_video_frames=8,
        num_speech_query_tokens=None,
        num_sound_query_tokens=None,
        max_sound_chunks=ORIGINAL_MAX_SOUND_CHUNKS,
        context_length=None,
        tokenize_text_pieces=False,
        speech_chunk_stride=None,
        sound_chunk_padding="zeros",
        max_image_pixels=MAX_IMAGE_PIXELS,
        max_video_frames=MAX_VIDEO_FRAMES,
        resampler="soxr_hq",
    ):
        if tokenizer is None:
            raise ValueError("UniMoEProcessor needs a tokenizer.")
        if image_processor is None:
            image_processor = make_clip_image_processor(336)
        if feature_extractor is None:
            feature_extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLING_RATE)
        self.image_seq_length = image_seq_length
        self.num_video_frames = num_video_frames
        self.num_speech_query_tokens = num_speech_query_tokens
        self.num_sound_query_tokens = num_sound_query_tokens
        self.max_sound_chunks = max_sound_chunks
        self.context_length = context_length
        self.tokenize_text_pieces = bool(tokenize_text_pieces)
        self.speech_chunk_stride = speech_chunk_stride
        self.sound_chunk_padding = sound_chunk_padding
        self.max_image_pixels = max_image_pixels
        self.max_video_frames = max_video_frames
        self.resampler = resampler
        self.image_token, self.video_token = image_token, video_token
        self.audio_token, self.sound_token = audio_token, sound_token
        if sound_token is not None and num_sound_query_tokens and not num_speech_query_tokens:
            raise ValueError(
                f"sound_token={sound_token!r} is only for models with both a speech and a sound tower; without a "
                "speech tower the sound path is fed by `audio_token`. Set sound_token=None."
            )
        if num_video_frames < 1 or max_sound_chunks < 1:
            raise ValueError(
                f"num_video_frames ({num_video_frames}) and max_sound_chunks ({max_sound_chunks}) must be >= 1."
            )
        if sound_chunk_padding not in SOUND_CHUNK_PADDINGS:
            raise ValueError(
                f"sound_chunk_padding must be one of {SOUND_CHUNK_PADDINGS}, got {sound_chunk_padding!r}."
            )
        if resampler not in RESAMPLERS:
            raise ValueError(f"resampler must be one of {RESAMPLERS}, got {resampler!r}.")
        if speech_chunk_stride is not None and speech_chunk_stride < 1:
            raise ValueError(f"speech_chunk_stride must be None or >= 1, got {speech_chunk_stride}.")
        for name, value in (("max_image_pixels", max_image_pixels), ("max_video_frames", max_video_frames)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None (no limit) or >= 1, got {value}.")
        super().__init__(image_processor, feature_extractor, tokenizer, chat_template=chat_template)
        # built from the init kwargs (not a saved sub-processor): BEATs' fbank has no settings of its own
        self.sound_feature_extractor = UniMoEBEATsFeatureExtractor(
            chunk_samples=feature_extractor.n_samples, max_chunks=max_sound_chunks, chunk_padding=sound_chunk_padding
        )
        # placeholder kind -> (text token, token id, tokens per item or per chunk)
        self._placeholders = {}
        for kind, token, count in (
            ("image", image_token, image_seq_length),
            ("video", video_token, image_seq_length),
            ("audio", audio_token, num_speech_query_tokens or num_sound_query_tokens),
            ("sound", sound_token, num_sound_query_tokens),
        ):
            if token is None or not count:  # no placeholder, or no tower behind it
                continue
            token_id = tokenizer.convert_tokens_to_ids(token)
            encoded = tokenizer.encode(token, add_special_tokens=False)
            if token_id is None or token_id == tokenizer.unk_token_id or encoded != [token_id]:
                raise ValueError(
                    f"The tokenizer does not know the placeholder {token!r} as one token (it encodes to {encoded}). "
                    f"Add it: tokenizer.add_special_tokens({{'additional_special_tokens': [{token!r}]}})."
                )
            self._placeholders[kind] = (token, token_id, count)
        self.image_token_id = self._placeholders.get("image", (None, None))[1]
        self.video_token_id = self._placeholders.get("video", (None, None))[1]
        self.audio_token_id = self._placeholders.get("audio", (None, None))[1]
        self.sound_token_id = self._placeholders.get("sound", (None, None))[1]
        ordered = sorted((entry[0] for entry in self._placeholders.values()), key=len, reverse=True)
        self._placeholder_pattern = re.compile("|".join(re.escape(token) for token in ordered)) if ordered else None
        self._kind_of_token = {entry[0]: kind for kind, entry in self._placeholders.items()}
        # placeholder strings the tokenizer knows but this model cannot fill (e.g. `<sound>` without a sound tower)
        self._disabled_tokens = {}
        for kind, token in (("image", image_token), ("video", video_token), ("audio", audio_token),
                            ("sound", sound_token or "<sound>")):  # fmt: skip
            if kind in self._placeholders or not token or token in self._kind_of_token:
                continue
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != tokenizer.unk_token_id:
                if tokenizer.encode(token, add_special_tokens=False) == [token_id]:
                    self._disabled_tokens[token] = kind

    if "legacy_serialization" in inspect.signature(ProcessorMixin.save_pretrained).parameters:  # transformers 4.x

        def save_pretrained(self, save_directory, push_to_hub=False, legacy_serialization=False, **kwargs):
            """As ProcessorMixin's, but the image processor and the feature extractor go into processor_config.json
            as transformers 5 writes them: 4.x's legacy layout saves both to preprocessor_config.json, one over the
            other."""
            return super().save_pretrained(
                save_directory, push_to_hub=push_to_hub, legacy_serialization=legacy_serialization, **kwargs
            )

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config, tokenizer, chat_template=None, **overrides) -> "UniMoEProcessor":
        """The processor matching a `UniMoEConfig` (or any object with its attributes): placeholder strings come from
        the tokenizer at the config's token ids, the counts from the config, the image size from its vision config."""

        def token_of(token_id):
            return None if token_id is None else tokenizer.convert_ids_to_tokens(int(token_id))

        vision = getattr(config, "vision_config", None)
        speech = getattr(config, "speech_config", None)
        sound = getattr(config, "audio_config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config.text_config
        image_seq_length = None
        if vision is not None:
            image_seq_length = (vision.image_size // vision.patch_size) ** 2
        kwargs = dict(
            image_processor=make_clip_image_processor(vision.image_size if vision is not None else 336),
            feature_extractor=WhisperFeatureExtractor(
                feature_size=speech.num_mel_bins if speech is not None else 80,
                sampling_rate=SAMPLING_RATE,
                chunk_length=getattr(config, "audio_chunk_seconds", CHUNK_SECONDS),
            ),
            tokenizer=tokenizer,
            chat_template=chat_template,
            image_token=token_of(config.image_token_id) or "<image>",
            video_token=token_of(config.video_token_id) or "<video>",
            audio_token=token_of(config.audio_token_id if speech is not None else config.sound_token_id) or "<audio>",
            sound_token=token_of(config.sound_token_id) if (speech is not None and sound is not None) else None,
            image_seq_length=image_seq_length,
            num_video_frames=config.num_video_frames,
            num_speech_query_tokens=config.num_speech_query_tokens if speech is not None else None,
            num_sound_query_tokens=config.num_sound_query_tokens if sound is not None else None,
            max_sound_chunks=config.max_sound_chunks,
            context_length=getattr(text_config, "max_position_embeddings", None),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def audio_path(self) -> str | None:
        """Where `audio=` / `<audio>` goes: "speech" (Whisper), "sound" (BEATs, models without a speech tower) or
        None."""
        if "audio" not in self._placeholders:
            return None
        return "speech" if self.num_speech_query_tokens else "sound"

    @property
    def model_input_names(self) -> list[str]:
        return [
            "input_ids",
            "attention_mask",
            "pixel_values",
            "pixel_values_videos",
            "input_features",
            "sound_features",
            "sound_features_mask",
        ]

    # --- call ---------------------------------------------------------------------------------------------------
    def __call__(self, images=None, text=None, videos=None, audio=None, sound=None, **kwargs) -> BatchFeature:
        r"""
        Tokenize `text` with its media placeholders expanded, and turn the media into model inputs.

        Args:
            images: one image or a list (flat, or one list per text) of PIL images, arrays, paths or URLs.
            text (`str` or `list[str]`): prompts with `<image>`, `<video>`, `<audio>` (and `<sound>`) placeholders,
                one placeholder per media item, matched in order across the batch.
            videos: one video or a list of videos: file paths / URLs (decoded with PyAV), lists of frames or 4-D
                arrays. `num_video_frames` frames are sampled uniformly.
            audio: one waveform or a list: arrays / tensors (with `sampling_rate`), `{"array", "sampling_rate"}`
                dicts or audio files (wav, flac, mp3, ...). Resampled to 16 kHz mono, cut into chunks (30 s in the released models).
            sound: the same, for `<sound>` (models with both a speech and a sound tower).
            sampling_rate (`int`, *optional*): rate of the raw arrays in `audio` / `sound` (16000 if not given).
            return_tensors (`str`, *optional*): "pt" or "np".
            padding (`bool` or `str`): `True` / `"longest"` pads the batch to its longest sample, `"max_length"` to
                `max_length`; needed for `return_tensors` when the samples' lengths differ. With `apply_chat_template`
                pass it as `processor_kwargs={"padding": True}`.
            truncation (`bool`), max_length (`int`): truncation cuts a sample to `max_length` tokens (the model's
                context when not given) by dropping its earliest text tokens: media placeholders and the tokenizer's
                special tokens are never dropped, so the end of the prompt (the question and `ASSISTANT:`) is kept. A
                sample whose media alone do not fit raises `PromptTooLongError`.
            pad_to_multiple_of, padding_side, add_special_tokens, return_offsets_mapping, return_special_tokens_mask,
                return_token_type_ids, return_length: as for the tokenizer.
            truncate_sound (`bool`, default False): keep the first `max_sound_chunks` chunks of longer sounds instead
                of raising `TooManyChunksError` (only that part of a file is decoded).
            short_video (`"error"` or `"repeat"`, default "error"): what to do with videos shorter than
                `num_video_frames` frames.
            images_kwargs (`dict`, *optional*): passed to the image processor.

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` and, when given, `pixel_values`, `pixel_values_videos`,
            `input_features`, `sound_features`, `sound_features_mask`.
        """
        options, text_kwargs, images_kwargs = self._split_kwargs(kwargs)
        return_tensors = options.get("return_tensors")
        sampling_rate = options.get("sampling_rate")

        if text is None:
            if any(media is not None for media in (images, videos, audio, sound)):
                raise PlaceholderCountError(
                    "Media were given without `text`. Uni-MoE reads media through placeholders in the prompt: pass "
                    "text with one `<image>` / `<video>` / `<audio>` per item, e.g. "
                    "text='USER: <image>\\nWhat is this? ASSISTANT:'."
                )
            raise UniMoEProcessingError("UniMoEProcessor needs `text`: a string or a list of strings.")
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise UniMoEProcessingError(
                f"`text` must be a string or a non-empty list of strings, got {describe_source(text)}"
                + (f" with items {[type(t).__name__ for t in texts][:5]}" if isinstance(texts, (list, tuple)) else "")
                + "."
            )
        texts = list(texts)

        given = {
            kind: _media_list(kind, value, len(texts))
            for kind, value in (("image", images), ("video", videos), ("audio", audio), ("sound", sound))
        }
        self._check_placeholders(texts, given)
        self._warn_sound_questions_over_speech(texts)

        data, replacements = {}, {}
        if given["image"][0]:
            pil = [load_image(item, f"image {i}", self.max_image_pixels) for i, item in enumerate(given["image"][0])]
            pixel_values = self.image_processor(images=pil, return_tensors="np", **images_kwargs)["pixel_values"]
            data["pixel_values"] = np.asarray(pixel_values, dtype=np.float32)
            replacements["image"] = [self.image_seq_length] * len(pil)
        if given["video"][0]:
            frames = []
            for i, item in enumerate(given["video"][0]):
                frames += load_video(
                    item, self.num_video_frames, options.get("short_video", "error"), f"video {i}",
                    self.max_video_frames, self.max_image_pixels,
                )  # fmt: skip
            pixel_values = self.image_processor(images=frames, return_tensors="np", **images_kwargs)["pixel_values"]
            pixel_values = np.asarray(pixel_values, dtype=np.float32)
            data["pixel_values_videos"] = pixel_values.reshape(
                len(given["video"][0]), self.num_video_frames, *pixel_values.shape[1:]
            )
            replacements["video"] = [self.image_seq_length] * len(given["video"][0])
        # `<audio>` feeds Whisper, or BEATs in a model without a speech tower (then `sound=` is refused above)
        sound_kind = "audio" if self.audio_path == "sound" else "sound"
        truncate_sound = bool(options.get("truncate_sound", False))
        for kind in ("audio", "sound"):
            if not given[kind][0]:
                continue
            waves = []
            for i, item in enumerate(given[kind][0]):
                limit = self._audio_limit(kind == sound_kind, truncate_sound)
                waves.append(load_audio(item, sampling_rate, f"{kind} {i}", limit, self.resampler))
            if kind == sound_kind:
                out = self.sound_feature_extractor(waves, truncation=truncate_sound)
                data["sound_features"] = out["sound_features"]
                data["sound_features_mask"] = out["sound_features_mask"]
                replacements[kind] = [n * self.num_sound_query_tokens for n in out["sound_chunks"]]
            else:
                data["input_features"], chunks = self._speech_features(waves)
                replacements[kind] = [n * self.num_speech_query_tokens for n in chunks]

        expanded, offsets = self._expand(texts, replacements)
        rows = self._truncate(self._encode_texts(expanded, text_kwargs), text_kwargs)
        self._check_context(rows)
        out = self._pad(rows, text_kwargs)
        if options.get("return_mm_token_type_ids"):
            out["mm_token_type_ids"] = self._mm_token_type_ids(out["input_ids"])
        tensors = {key: _to_tensor(value, return_tensors, key) for key, value in {**out, **data}.items()}
        if options.get("return_text_replacement_offsets"):
            tensors["text_replacement_offsets"] = offsets
        return BatchFeature(tensors)

    def _split_kwargs(self, kwargs):
        kwargs = dict(kwargs)
        images_kwargs = dict(kwargs.pop("images_kwargs", None) or {})
        for nested in _NESTED_KWARGS:
            for key, value in (kwargs.pop(nested, None) or {}).items():
                kwargs.setdefault(key, value)
        options = {key: kwargs.pop(key) for key in _PROCESSOR_KWARGS if key in kwargs}
        text_kwargs = {key: kwargs.pop(key) for key in _TEXT_KWARGS if key in kwargs}
        text_kwargs["return_attention_mask"] = True
        for key in ("return_tensors", "sanitize_control_tokens"):
            kwargs.pop(key, None)
        if kwargs:
            logger.warning_once(f"UniMoEProcessor ignores the keyword arguments {sorted(kwargs)}.")
        if options.get("short_video", "error") not in ("error", "repeat"):
            raise UniMoEProcessingError(f"`short_video` must be 'error' or 'repeat', got {options['short_video']!r}.")
        return options, text_kwargs, images_kwargs

    def _mm_token_type_ids(self, input_ids):
        """Per token: 1 image, 2 video, 3 audio placeholder, else 0 (as transformers 5's
        `create_mm_token_type_ids`, which older versions lack)."""
        kinds = ((1, self.image_token_id), (2, self.video_token_id), (3, self.audio_token_id))
        rows = []
        for ids in input_ids:
            ids = np.asarray(ids)
            types = np.zeros(ids.shape, dtype=np.int64)
            for value, token_id in kinds:
                if token_id is not None:
                    types[ids == token_id] = value
            rows.append(types.tolist())
        return rows

    def _speech_features(self, waves):
        """Whisper log-mel features of every chunk (`audio_chunks` with `speech_chunk_stride`), and the chunks per
        waveform."""
        chunks, counts = [], []
        for wave in waves:
            pieces, _ = audio_chunks(wave, self.feature_extractor.n_samples, self.speech_chunk_stride)
            chunks += list(pieces)
            counts.append(len(pieces))
        features = self.feature_extractor(
            chunks, sampling_rate=SAMPLING_RATE, padding="max_length", return_tensors="np"
        )["input_features"]
        return np.asarray(features, dtype=np.float32), counts  # [chunks, mels, 3000]

    def _audio_limit(self, sound_path: bool, truncate: bool) -> AudioLimit | None:
        """How much of one audio input the call takes: `max_sound_chunks` chunks on the sound path; on the speech
        path, the chunks the model's context holds (None where the context is unknown)."""
        chunk = self.feature_extractor.n_samples
        if sound_path:

            def error(what, seconds, at_least):
                chunks = num_audio_chunks(round(seconds * SAMPLING_RATE), chunk)
                return TooManyChunksError(
                    too_many_chunks_message(what, seconds, chunks, chunk, self.max_sound_chunks, at_least)
                )

            return AudioLimit(self.max_sound_chunks * chunk, truncate, error)
        context, per_chunk = self._context_limit(), self.num_speech_query_tokens
        if not context or not per_chunk:
            return None
        stride = self.speech_chunk_stride or chunk
        most = max(1, context // per_chunk)

        def error(what, seconds, at_least):
            chunks = num_audio_chunks(round(seconds * SAMPLING_RATE), chunk, stride)
            more, least = ("more than ", "at least ") if at_least else ("", "")
            return PromptTooLongError(
                f"{what} lasts {more}{seconds:.1f} s: {least}{chunks} chunks of {chunk / SAMPLING_RATE:g} s at "
                f"{per_chunk} tokens each, {least}{chunks * per_chunk} tokens, more than the model's context of "
                f"{context} tokens, which holds "
                f"at most {most} chunks ({most * stride / SAMPLING_RATE:g} s) of speech. Cut the audio (to less than "
                f"that, as the prompt's text and other media take tokens too), or split it over several questions."
            )

        return AudioLimit(most * stride, False, error)

    def _count(self, sample: str) -> dict[str, int]:
        counts = dict.fromkeys(self._placeholders, 0)
        if self._placeholder_pattern is not None:
            for match in self._placeholder_pattern.finditer(sample):
                counts[self._kind_of_token[match.group()]] += 1
        return counts

    def _warn_sound_questions_over_speech(self, texts):
        """In a model with both a speech and a sound tower, warn about each sample that sends audio to the speech tower
        (`<audio>`) under a question about a sound: nothing in a waveform tells the two apart, so the processor keeps
        what it was given and says how to send a sound to the sound tower."""
        if self.audio_path != "speech" or "sound" not in self._placeholders:
            return
        for index, sample in enumerate(texts):
            if self.audio_token in sample and audio_kind_for_question(sample) == "sound":
                word = SOUND_QUESTION.search(sample).group()
                logger.warning(
                    f'Sample {index} gives audio as {self.audio_token} (`audio=`, or {{"type": "audio"}} in a chat), '
                    f"which this model reads as speech (Whisper), but its text asks about a sound ({word!r}). For the "
                    f'sound tower (BEATs) pass it as {self.sound_token} (`sound=`, or {{"type": "sound"}} in a chat); '
                    "if it is speech, ask what is said."
                )

    def _check_placeholders(self, texts, given):
        per_sample = [self._count(sample) for sample in texts]
        arguments = {"image": "images", "video": "videos", "audio": "audio", "sound": "sound"}
        for kind, (items, _) in given.items():
            if items and kind not in self._placeholders:
                reason = {
                    "image": "no vision tower",
                    "video": "no vision tower",
                    "audio": "no speech or sound tower",
                    "sound": "no separate <sound> placeholder: pass sounds as `audio=`"
                    if self.audio_path == "sound"
                    else "no sound tower",
                }[kind]
                raise PlaceholderCountError(
                    f"{len(items)} {kind} input(s) were given as `{arguments[kind]}=`, but this model has {reason}. "
                    f"Drop `{arguments[kind]}=` or use a checkpoint with that modality."
                )
        for sample_index, sample in enumerate(texts):
            for token, kind in self._disabled_tokens.items():
                if token in sample:
                    raise PlaceholderCountError(
                        f"Sample {sample_index} contains {token}, but this model has no {kind} tower, so nothing can "
                        f"fill it. Remove {token} from the text."
                    )
        for kind, (items, nested_counts) in given.items():
            if kind not in self._placeholders:
                continue
            token = self._placeholders[kind][0]
            in_text = [counts[kind] for counts in per_sample]
            if sum(in_text) != len(items):
                raise PlaceholderCountError(
                    f"The text has {sum(in_text)} {token} placeholder(s) (per sample: {in_text}) but {len(items)} "
                    f"{kind} input(s) were given as `{arguments[kind]}=`. Put exactly one {token} in the text for "
                    f"each {kind}, in the order the {kind} inputs are passed."
                )
            if nested_counts is not None and nested_counts != in_text:
                raise PlaceholderCountError(
                    f"The {kind} inputs were given per sample as {nested_counts} item(s) but the texts hold {in_text} "
                    f"{token} placeholder(s). Each sample's list must match its own text."
                )

    def _expand(self, texts, replacements):
        """Replace each placeholder by as many copies as its item takes; also the replacement offsets
        (`apply_chat_template`'s assistant masks need them)."""
        iterators = {kind: iter(counts) for kind, counts in replacements.items()}
        expanded, offsets = [], []
        for sample in texts:
            pieces, sample_offsets, last, shift = [], [], 0, 0
            if self._placeholder_pattern is not None:
                for match in self._placeholder_pattern.finditer(sample):
                    token = match.group()
                    kind = self._kind_of_token[token]
                    replacement = token * next(iterators[kind])
                    start, end = match.span()
                    pieces.append(sample[last:start])
                    pieces.append(replacement)
                    sample_offsets.append(
                        {
                            "type": kind,
                            "span": (start, end),
                            "new_span": (start + shift, start + shift + len(replacement)),
                            "text": token,
                            "replacement": replacement,
                        }
                    )
                    shift += len(replacement) - (end - start)
                    last = end
            pieces.append(sample[last:])
            expanded.append("".join(pieces))
            offsets.append(sample_offsets)
        return expanded, offsets

    def _special_affixes(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer adds before and after a text (LLaMA: [<s>] and [])."""
        bare = self.tokenizer.encode("a", add_special_tokens=False)
        full = self.tokenizer.encode("a", add_special_tokens=True)
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []

    def _space_prefix(self) -> str:
        """What to put before a text piece that starts with a space so that the tokenizer gives it SentencePiece's
        dummy prefix: "▁" for a Metaspace tokenizer that does not prefix such a text (a converted LLaMA tokenizer:
        " z" and "z" tokenize alike, where SentencePiece gives " z" an extra "▁"), else nothing."""
        plain = self.tokenizer.encode("z", add_special_tokens=False)
        spaced = self.tokenizer.encode(" z", add_special_tokens=False)
        first = self.tokenizer.convert_ids_to_tokens(plain[:1])
        return "▁" if first and first[0].startswith("▁") and spaced == plain else ""

    def _encode_texts(self, texts, text_kwargs) -> list[dict]:
        """Per text, its token ids and (when asked) offsets, special-tokens mask and token type ids, as lists, neither
        truncated nor padded, and `protected`: the positions truncation keeps (the tokenizer's added special tokens
        and the placeholders).

        With `tokenize_text_pieces`, the text between placeholders is tokenized piece by piece (each piece on its own,
        without special tokens) and the placeholders and the tokenizer's added special tokens are put around them:
        the original's `tokenizer_image_audio_video_token` (a piece gets the dummy prefix "▁" of a SentencePiece
        tokenizer, also where it starts with a space). Else the whole text is tokenized at once."""
        add_special_tokens = text_kwargs.get("add_special_tokens", True)
        asked = {
            key: text_kwargs[key]
            for key in ("return_offsets_mapping", "return_special_tokens_mask", "return_token_type_ids")
            if text_kwargs.get(key) is not None
        }
        prefix, suffix = self._special_affixes() if add_special_tokens else ([], [])
        placeholder_ids = {entry[1] for entry in self._placeholders.values()}
        if not self.tokenize_text_pieces:
            encoding = self.tokenizer(list(texts), add_special_tokens=add_special_tokens, verbose=False, **asked)
            keys = [
                k for k in ("input_ids", "offset_mapping", "token_type_ids", "special_tokens_mask") if k in encoding
            ]
            rows = []
            for index in range(len(texts)):
                row = {key: list(encoding[key][index]) for key in keys}
                ids = row["input_ids"]
                head = len(prefix) if ids[: len(prefix)] == prefix else 0
                tail = (
                    len(suffix) if suffix and len(ids) - head >= len(suffix) and ids[-len(suffix) :] == suffix else 0
                )
                row["protected"] = [
                    position < head or position >= len(ids) - tail or token in placeholder_ids
                    for position, token in enumerate(ids)
                ]
                rows.append(row)
            return rows

        asked.setdefault("return_token_type_ids", "token_type_ids" in self.tokenizer.model_input_names)
        layouts, segments = [], []
        for text in texts:
            parts, last = [], 0  # ("text", start, segment index) or ("token", start, end, token id)
            matches = self._placeholder_pattern.finditer(text) if self._placeholder_pattern is not None else ()
            for match in matches:
                if match.start() > last:
                    parts.append(("text", last, len(segments)))
                    segments.append(text[last : match.start()])
                token_id = self._placeholders[self._kind_of_token[match.group()]][1]
                parts.append(("token", match.start(), match.end(), token_id))
                last = match.end()
            if last < len(text):
                parts.append(("text", last, len(segments)))
                segments.append(text[last:])
            layouts.append(parts)
        space_prefix = self._space_prefix() if any(segment.startswith(" ") for segment in segments) else ""
        shifts = [len(space_prefix) if segment.startswith(" ") else 0 for segment in segments]
        segments = [space_prefix * bool(shift) + segment for shift, segment in zip(shifts, segments, strict=True)]
        encoding = self.tokenizer(segments, add_special_tokens=False, verbose=False, **asked) if segments else {}
        special_ids = set(self.tokenizer.all_special_ids)
        keys = ["input_ids"]
        keys += ["offset_mapping"] if asked.get("return_offsets_mapping") else []
        keys += ["token_type_ids"] if asked.get("return_token_type_ids") else []
        keys += ["special_tokens_mask"] if asked.get("return_special_tokens_mask") else []

        def added(ids, span):  # tokens the processor puts in itself: placeholders and the tokenizer's affixes
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

    def _truncate(self, rows, text_kwargs) -> list[dict]:
        """With `truncation`, each sample cut to `max_length` (else the model's context) tokens by dropping its
        earliest unprotected (text) tokens."""
        if text_kwargs.get("truncation") in (None, False, "do_not_truncate"):
            return rows
        limit = text_kwargs.get("max_length") or self._context_limit()
        if limit is None:
            return rows
        truncated = []
        for index, row in enumerate(rows):
            excess = len(row["input_ids"]) - limit
            if excess <= 0:
                truncated.append(row)
                continue
            protected = list(row["protected"])
            if row["input_ids"] and row["input_ids"][0] == self.tokenizer.bos_token_id:
                protected[0] = True  # also a <s> the chat template writes itself
            droppable = [position for position, keep in enumerate(protected) if not keep]
            if len(droppable) < excess:
                media = {kind: 0 for kind in self._placeholders}
                for token in row["input_ids"]:
                    for kind, (_, token_id, _) in self._placeholders.items():
                        media[kind] += token == token_id
                listed = ", ".join(f"{count} {self._placeholders[kind][0]}" for kind, count in media.items() if count)
                kept = len(row["input_ids"]) - len(droppable)
                raise PromptTooLongError(
                    f"Sample {index} cannot be truncated to {limit} tokens: its media and special tokens alone take "
                    f"{kept} tokens ({listed or 'no media'}), and truncation drops only text (the earliest first), "
                    "never media placeholders, which the model needs all of. Raise `max_length`, or pass fewer or "
                    "shorter media."
                )
            dropped = set(droppable[:excess])
            truncated.append(
                {key: [v for i, v in enumerate(values) if i not in dropped] for key, values in row.items()}
            )
        return truncated

    def _context_limit(self) -> int | None:
        if self.context_length:
            return int(self.context_length)
        limit = getattr(self.tokenizer, "model_max_length", None)
        return int(limit) if limit and limit < 10**8 else None

    def _check_context(self, rows):
        lengths = [len(row["input_ids"]) for row in rows]
        limit = self._context_limit()
        if limit is not None and max(lengths) > limit:
            too_long = [i for i, n in enumerate(lengths) if n > limit]
            raise PromptTooLongError(
                f"The prompt of sample(s) {too_long} takes {max(lengths)} tokens with its media expanded, more than "
                f"the model's context of {limit} tokens. Shorten the text or the media (each image / video and each "
                "30 s of audio take a fixed number of tokens), or pass `truncation=True, max_length=...` to cut "
                "the text."
            )

    def _pad(self, rows, text_kwargs) -> dict:
        """The rows as batch lists, padded as `padding` asks (as the tokenizer pads: pad id, attention 0, offsets
        (0, 0), special-tokens mask 1), with `attention_mask` and, when asked, `length`."""
        padding = text_kwargs.get("padding", False)
        lengths = [len(row["input_ids"]) for row in rows]
        if padding is True or padding == "longest":
            target = max(lengths)
        elif padding == "max_length":
            target = text_kwargs.get("max_length") or self._context_limit()
            if target is None:
                raise UniMoEProcessingError(
                    "`padding='max_length'` was given without `max_length`, and the processor knows no context "
                    "length to pad to. Pass `max_length=...`, or `padding=True` to pad to the longest sample."
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
        side = text_kwargs.get("padding_side") or self.tokenizer.padding_side
        if side not in ("left", "right"):
            raise UniMoEProcessingError(f"`padding_side` must be 'left' or 'right', got {side!r}.")
        keys = [key for key in rows[0] if key != "protected"]
        fill = {
            "input_ids": self.tokenizer.pad_token_id,
            "offset_mapping": (0, 0),
            "token_type_ids": getattr(self.tokenizer, "pad_token_type_id", 0),
            "special_tokens_mask": 1,
            "attention_mask": 0,
        }
        out = {key: [] for key in keys + ["attention_mask"]}
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

    # --- chat ---------------------------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        conversation,
        chat_template=None,
        tools=None,
        documents=None,
        add_generation_prompt=False,
        continue_final_message=False,
        return_assistant_tokens_mask=False,
        tokenize=False,
        return_tensors="auto",
        return_dict=False,
        load_audio_from_video=False,
        processor_kwargs=None,
        sanitize_control_tokens=False,
        **kwargs,
    ):
        r"""
        Render chats with the chat template and, with `tokenize=True`, run the processor on the prompt and the chats'
        media (content blocks `{"type": "image" | "video" | "audio" | "sound", <"path" | "url" | "image" | "video" |
        "audio" | "sound">: ...}`; arrays of audio blocks take the block's `sampling_rate`).

        The same on every transformers version (ProcessorMixin's own differs from one version to the next): the
        arguments are those of transformers 5's `ProcessorMixin.apply_chat_template`. `processor_kwargs` go to the
        processor call (keyword arguments the template does not read go there too, as in transformers 4);
        `return_dict=True` returns the processor's `BatchFeature` (with `assistant_masks` when
        `return_assistant_tokens_mask=True`), else the `input_ids`. `load_audio_from_video` is ignored (Uni-MoE
        reads no audio track of a video).
        """
        processor_kwargs = dict(processor_kwargs or {})
        chat_template = self._resolve_chat_template(chat_template)
        # keyword arguments the template does not read go to the processor call (all of them where this
        # transformers cannot tell, as transformers 4 did)
        template_variables = _template_variables(chat_template)
        legacy = {k: v for k, v in kwargs.items() if template_variables is None or k not in template_variables}
        if legacy and template_variables is not None:
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
        audio_loading_params = {"sampling_rate": sampling_rate}
        conversations, is_batched = _normalize_conversations(conversation)

        if tokenize:
            batch_images, batch_videos, batch_audios, additional_inputs = self._multimodal_inputs_from_conversations(
                conversations, audio_loading_params
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
            out["assistant_masks"] = _assistant_masks(
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
        """Collect the media of chat content blocks in the order the chat template places their placeholders
        (per message: images, audio, sounds, videos). Files are decoded later, by `__call__`."""
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
                    for block in blocks:
                        if block.get("type") != kind:
                            continue
                        media = next((block[key] for key in keys if block.get(key) is not None), None)
                        if media is None:
                            continue
                        if kind == "sound" and "sound" not in self._placeholders and self.audio_path != "sound":
                            raise PlaceholderCountError(
                                "A {'type': 'sound'} block was given, but this model has no sound tower; use an "
                                "{'type': 'audio'} block for speech."
                            )
                        if kind in ("audio", "sound") and isinstance(media, (np.ndarray, torch.Tensor, list)):
                            media = {"array": media, "sampling_rate": block.get("sampling_rate", sampling_rate)}
                        target.append(media)
            batch_images.append(images)
            batch_videos.append(videos)
        extra = {"sound": batch_sound} if batch_sound else {}
        return batch_images, batch_videos, batch_audio, extra


def _normalize_conversations(conversation):
    """(chats, whether a batch was given): None-valued message keys dropped (APIs send `content=None`), OpenAI
    `{"type": "image_url", "image_url": {"url": ...}}` blocks turned into `{"type": "image", "url": ...}`. The
    caller's dicts are not modified."""
    is_batched = (
        isinstance(conversation, (list, tuple))
        and bool(conversation)
        and (isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "content"))
    )
    conversations = conversation if is_batched else [conversation]
    normalized = []
    for chat in conversations:
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


def _assistant_masks(offset_mapping, replacement_offsets, input_ids, generation_indices):
    """1 on the tokens of the template's `{% generation %}` spans (assistant replies), placeholders expanded."""
    masks = []
    if not replacement_offsets:
        replacement_offsets = [[]] * len(input_ids)
    for i in range(len(input_ids)):
        mask = [0] * len(input_ids[i])
        placeholder_ends = [r["span"][1] for r in replacement_offsets[i]]
        chars_gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacement_offsets[i]]
        for span in generation_indices[i]:
            # shift the span past the placeholders expanded before it
            start, end = (char + chars_gained[bisect.bisect_right(placeholder_ends, char)] for char in span)
            # every token overlapping the span (zero-width tokens, i.e. padding and added specials, never do)
            for position, (token_start, token_end) in enumerate(offset_mapping[i]):
                if token_start < end and token_end > start:
                    mask[position] = 1
        masks.append(mask)
    return masks


def _ragged_message(name, value) -> str:
    lengths = sorted({len(row) for row in value}) if isinstance(value, (list, tuple)) else []
    return (
        f"`{name}` has rows of different lengths ({', '.join(map(str, lengths))}) and cannot be one tensor. Pad the "
        'batch: `processor(..., padding=True)`, or with `apply_chat_template` `processor_kwargs={"padding": True}` '
        "(the form that logs no warning; a `padding=True` keyword of `apply_chat_template` works too, with a warning "
        "that processor arguments belong in `processor_kwargs`)."
    )


def _to_tensor(value, return_tensors, name):
    if return_tensors is None:
        return value
    if return_tensors not in ("pt", "np"):
        raise UniMoEProcessingError(f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}.")
    try:
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
    except ValueError:
        raise UniMoEProcessingError(_ragged_message(name, value)) from None
    if array.dtype == object:
        raise UniMoEProcessingError(_ragged_message(name, value))
    if name in ("input_ids", "attention_mask", "sound_features_mask", "mm_token_type_ids", "offset_mapping"):
        array = array.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(array)) if return_tensors == "pt" else array


def make_clip_image_processor(image_size: int):
    """CLIP preprocessing at `image_size`: shortest edge resized (bicubic), centre crop, CLIP mean / std."""
    return _CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        resample=Image.Resampling.BICUBIC,
    )


__all__ = [
    "EmptyAudioError",
    "MediaDecodeError",
    "MediaTooLargeError",
    "NotEnoughFramesError",
    "PlaceholderCountError",
    "PromptTooLongError",
    "TooManyChunksError",
    "UniMoEProcessingError",
    "UniMoEProcessor",
    "audio_kind_for_question",
]
