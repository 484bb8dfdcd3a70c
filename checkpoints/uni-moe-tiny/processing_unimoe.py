# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE processor: text, image, video, speech and sound in, model inputs out.

Uploaded to the Hub next to `modeling_unimoe.py` and loaded with `trust_remote_code=True`. It imports only torch,
numpy, PIL, transformers, the standard library and its siblings: `media_unimoe.py` (reading media, bounded before
decoding, and the input errors), `feature_extraction_unimoe.py` (resampling, the audio chunk rule, speech and sound
features) and `text_unimoe.py` (token ids, truncation, padding, chats). Its outputs are the same bit for bit on
transformers 4.57 to 5.25 (checked: 4.57.6, 5.0, 5.19, 5.23, 5.25): what differs between versions is found by feature
detection. (Where torchvision is installed, transformers 5 loads its torchvision CLIP image processor, whose resize
differs slightly.)

    processor = AutoProcessor.from_pretrained("path/to/uni-moe", trust_remote_code=True)
    inputs = processor(text="USER: <image>\nWhat is this? ASSISTANT:", images=image, return_tensors="pt")

| text      | argument | model input                                         | tokens                                  |
|-----------|----------|-----------------------------------------------------|-----------------------------------------|
| `<image>` | `images` | `pixel_values` [images, 3, S, S]                    | `image_seq_length`                      |
| `<video>` | `videos` | `pixel_values_videos` [videos, frames, 3, S, S]     | `image_seq_length` (frames mean-pooled) |
| `<audio>` | `audio`  | `input_features` [chunks, mels, 3000] (Whisper)     | `num_speech_query_tokens` per chunk     |
| `<sound>` | `sound`  | `sound_features` [chunks, 2998, 128] + mask (BEATs) | `num_sound_query_tokens` per chunk      |

Speech is what Whisper hears and sound what BEATs hears. `audio` is transformers' name for the audio argument; it and
its `<audio>` placeholder feed the speech path, or the sound path in a model without a speech tower (the released BEATs
"audio" variant). `processor.audio_paths` holds that rule as data, e.g. `{"audio": "speech", "sound": "sound"}`.

Rows of every media tensor follow the text: all media of sample 0 in text order, then sample 1, and so on. Every input
problem raises a `UniMoEProcessingError` (a `ValueError`) naming what was received, what was expected and how to fix
it; its subclasses tell the cases apart.
"""

import functools
import inspect
import re

import numpy as np
from PIL import Image
from transformers import WhisperFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import AudioKwargs, ProcessingKwargs, ProcessorMixin, TextKwargs, VideosKwargs
from transformers.utils import logging

from .feature_extraction_unimoe import (
    ORIGINAL_MAX_SOUND_CHUNKS,
    RESAMPLERS,
    SAMPLING_RATE,
    SOUND_CHUNK_PADDINGS,
    AudioLimit,
    UniMoEBEATsFeatureExtractor,
    speech_features,
    speech_too_long_message,
    too_many_chunks_message,
)
from .media_unimoe import (
    MAX_IMAGE_PIXELS,
    MAX_VIDEO_FRAMES,
    EmptyAudioError,
    MediaDecodeError,
    MediaTooLargeError,
    NotEnoughFramesError,
    PlaceholderCountError,
    PromptTooLongError,
    TooManyChunksError,
    UniMoEProcessingError,
    load_audio,
    load_image,
    load_video,
    media_items,
)
from .text_unimoe import (
    SOUND_QUESTION,
    UniMoEChatTemplateMixin,
    audio_kind_for_question,
    encode_prompts,
    expand_placeholders,
    load_tokenizer,
    pad_prompts,
    prompt_texts,
    to_tensor,
    truncate_prompts,
)


try:  # the PIL backend needs no torchvision (which does not install beside every torch)
    from transformers import CLIPImageProcessorPil as _CLIPImageProcessor
except ImportError:  # older transformers: CLIPImageProcessor is the PIL / numpy one (the fast one is ...Fast)
    from transformers import CLIPImageProcessor as _CLIPImageProcessor


logger = logging.get_logger(__name__)

# transformers 5 finds a processor's sub-processors in its `__init__` signature; 4.x in class attributes
# (`attributes`, `image_processor_class`, ...), which 5.x reports as deprecated: they are set only where needed.
_SUB_PROCESSORS_FROM_SIGNATURE = hasattr(ProcessorMixin, "get_attributes")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
ARGUMENTS = {"image": "images", "video": "videos", "audio": "audio", "sound": "sound"}  # placeholder kind -> argument


def make_clip_image_processor(image_size: int):
    """CLIP preprocessing at `image_size`: shortest edge resized (bicubic), centre crop, CLIP mean / std."""
    return _CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, do_resize=True,
        do_center_crop=True, do_rescale=True, do_normalize=True, do_convert_rgb=True, image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD), resample=Image.Resampling.BICUBIC,
    )  # fmt: skip


def _single_token_id(tokenizer, token: str) -> int | None:
    """The id of `token` where the tokenizer encodes it as that one token, else None."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id in (None, tokenizer.unk_token_id) or tokenizer.encode(token, add_special_tokens=False) != [token_id]:
        return None
    return token_id


class UniMoETextKwargs(TextKwargs, total=False):
    return_mm_token_type_ids: bool | None
    return_text_replacement_offsets: bool | None


class UniMoEVideosKwargs(VideosKwargs, total=False):
    short_video: str | None  # "error" or "repeat": what to do with videos shorter than `num_video_frames` frames


class UniMoEAudioKwargs(AudioKwargs, total=False):
    truncate_sound: bool | None  # keep the first `max_sound_chunks` chunks of a longer sound instead of refusing it


class UniMoEProcessorKwargs(ProcessingKwargs, total=False):
    text_kwargs: UniMoETextKwargs
    videos_kwargs: UniMoEVideosKwargs
    audio_kwargs: UniMoEAudioKwargs
    _defaults = {
        "text_kwargs": {"padding": False},
        "videos_kwargs": {"short_video": "error"},
        "audio_kwargs": {"truncate_sound": False},
    }


class UniMoEProcessor(UniMoEChatTemplateMixin, ProcessorMixin):
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
        num_speech_query_tokens / num_sound_query_tokens (`int`, *optional*): tokens per audio chunk of speech / of
            sound (None: no speech / sound tower).
        max_sound_chunks (`int`): most chunks per sound. Longer sounds raise `TooManyChunksError` (from a file's
            header, before decoding) unless the call passes `truncate_sound=True`, which keeps the first
            `max_sound_chunks` chunks (the original keeps the first 20 without a word).
        context_length (`int`, *optional*): the model's context; longer prompts raise `PromptTooLongError` unless the
            call asks for truncation (`truncation=True`, `max_length=`), which drops the earliest text (never media,
            never the end of the prompt). It also bounds one speech input, from the file's header.
        tokenize_text_pieces (`bool`): tokenize the text between placeholders piece by piece, as the original did
            (the released models were trained so: each piece starts with SentencePiece's dummy prefix "▁"). False
            tokenizes the whole prompt at once (the tiny model's way).
        speech_chunk_stride (`int`, *optional*): samples from one speech chunk's start to the next (None: the chunk
            length; the original cuts 480,001-sample pieces and Whisper keeps 480,000 of each).
        sound_chunk_padding (`"zeros"` or `"last_sample"`): how the last sound chunk is padded (the original repeats
            the last sample).
        max_image_pixels / max_video_frames (`int`, *optional*): most pixels of an image or a video frame, most frames
            of a video (from the file's header, before decoding). None: no limit.
        resampler (`"soxr_hq"` or `"windowed_sinc"`): how audio not at 16 kHz is resampled: python-soxr at high
            quality, as the original (librosa's default), or a Hann-windowed sinc resampler in torch (no `soxr`
            package needed; its features differ slightly from soxr's).
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
                load_tokenizer(pretrained_model_name_or_path, **kwargs),
            ]

    def __init__(self, image_processor=None, feature_extractor=None, tokenizer=None, chat_template=None,
                 image_token="<image>", video_token="<video>", audio_token="<audio>", sound_token=None,
                 image_seq_length=None, num_video_frames=8, num_speech_query_tokens=None, num_sound_query_tokens=None,
                 max_sound_chunks=ORIGINAL_MAX_SOUND_CHUNKS, context_length=None, tokenize_text_pieces=False,
                 speech_chunk_stride=None, sound_chunk_padding="zeros", max_image_pixels=MAX_IMAGE_PIXELS,
                 max_video_frames=MAX_VIDEO_FRAMES, resampler="soxr_hq"):  # fmt: skip
        if tokenizer is None:
            raise ValueError("UniMoEProcessor needs a tokenizer.")
        image_processor = image_processor if image_processor is not None else make_clip_image_processor(336)
        if feature_extractor is None:
            feature_extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLING_RATE)
        if sound_token is not None and num_sound_query_tokens and not num_speech_query_tokens:
            raise ValueError(
                f"sound_token={sound_token!r} is only for models with both a speech and a sound tower; without a "
                "speech tower the sound path is fed by `audio_token`. Set sound_token=None."
            )
        if num_video_frames < 1 or max_sound_chunks < 1:
            raise ValueError(
                f"num_video_frames ({num_video_frames}) and max_sound_chunks ({max_sound_chunks}) must be >= 1."
            )
        for name, value, allowed in (("sound_chunk_padding", sound_chunk_padding, SOUND_CHUNK_PADDINGS),
                                     ("resampler", resampler, RESAMPLERS)):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
        if speech_chunk_stride is not None and speech_chunk_stride < 1:
            raise ValueError(f"speech_chunk_stride must be None or >= 1, got {speech_chunk_stride}.")
        for name, value in (("max_image_pixels", max_image_pixels), ("max_video_frames", max_video_frames)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None (no limit) or >= 1, got {value}.")
        self.image_token, self.video_token, self.audio_token, self.sound_token = (
            image_token, video_token, audio_token, sound_token
        )  # fmt: skip
        self.image_seq_length, self.num_video_frames = image_seq_length, num_video_frames
        self.num_speech_query_tokens, self.num_sound_query_tokens = num_speech_query_tokens, num_sound_query_tokens
        self.max_sound_chunks, self.context_length = max_sound_chunks, context_length
        self.tokenize_text_pieces = bool(tokenize_text_pieces)
        self.speech_chunk_stride, self.sound_chunk_padding = speech_chunk_stride, sound_chunk_padding
        self.max_image_pixels, self.max_video_frames, self.resampler = max_image_pixels, max_video_frames, resampler
        super().__init__(image_processor, feature_extractor, tokenizer, chat_template=chat_template)
        # built from the init kwargs (not a saved sub-processor): BEATs' fbank has no settings of its own
        self.sound_feature_extractor = UniMoEBEATsFeatureExtractor(
            chunk_samples=feature_extractor.n_samples, chunk_padding=sound_chunk_padding
        )
        # placeholder kind -> (text token, token id, tokens per item or per chunk); strings the tokenizer knows as one
        # token but that this model cannot fill (e.g. `<sound>` without a sound tower) are refused in a text
        self._placeholders, self._disabled_tokens = {}, {}
        for kind, token, count in (("image", image_token, image_seq_length), ("video", video_token, image_seq_length),
                                   ("audio", audio_token, num_speech_query_tokens or num_sound_query_tokens),
                                   ("sound", sound_token, num_sound_query_tokens)):  # fmt: skip
            if token is None or not count:  # no placeholder, or no tower behind it
                continue
            token_id = _single_token_id(tokenizer, token)
            if token_id is None:
                raise ValueError(
                    f"The tokenizer does not know the placeholder {token!r} as one token (it encodes to "
                    f"{tokenizer.encode(token, add_special_tokens=False)}). Add it: "
                    f"tokenizer.add_special_tokens({{'additional_special_tokens': [{token!r}]}})."
                )
            self._placeholders[kind] = (token, token_id, count)
        self._kind_of_token = {entry[0]: kind for kind, entry in self._placeholders.items()}
        for kind, token in (("image", image_token), ("video", video_token), ("audio", audio_token),
                            ("sound", sound_token or "<sound>")):  # fmt: skip
            if kind not in self._placeholders and token and token not in self._kind_of_token:
                if _single_token_id(tokenizer, token) is not None:
                    self._disabled_tokens[token] = kind
        self._placeholder_ids = {token: token_id for token, token_id, _ in self._placeholders.values()}
        ordered = sorted(self._placeholder_ids, key=len, reverse=True)
        self._placeholder_pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self.image_token_id, self.video_token_id, self.audio_token_id, self.sound_token_id = (
            self._placeholders.get(kind, (None, None))[1] for kind in ("image", "video", "audio", "sound")
        )
        # the one rule for audio: each audio argument (placeholder) -> the tower it feeds. `<audio>` feeds Whisper
        # ("speech"), or BEATs ("sound") in a model without a speech tower; `<sound>` feeds BEATs.
        self.audio_paths = {
            kind: "speech" if kind == "audio" and num_speech_query_tokens else "sound"
            for kind in ("audio", "sound")
            if kind in self._placeholders
        }

    if "legacy_serialization" in inspect.signature(ProcessorMixin.save_pretrained).parameters:  # transformers 4.x

        def save_pretrained(self, save_directory, push_to_hub=False, legacy_serialization=False, **kwargs):
            """As ProcessorMixin's, but the image processor and the feature extractor go into processor_config.json
            as transformers 5 writes them: 4.x's legacy layout saves both to preprocessor_config.json, one over the
            other."""
            return super().save_pretrained(
                save_directory, push_to_hub=push_to_hub, legacy_serialization=legacy_serialization, **kwargs
            )

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "pixel_values_videos", "input_features",
                "sound_features", "sound_features_mask"]  # fmt: skip

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
                dicts or audio files (wav, flac, mp3, ...). Resampled to 16 kHz mono, cut into chunks (30 s in the
                released models).
            sound: the same, for `<sound>` (models with both a speech and a sound tower).
            kwargs (`UniMoEProcessorKwargs`): flat or per modality (`text_kwargs`, `images_kwargs`, ...), merged by
                `ProcessorMixin._merge_kwargs`: `return_tensors` ("pt", "np" or None); `sampling_rate` of the raw
                arrays in `audio` / `sound`; `truncate_sound` (keep the first `max_sound_chunks` chunks of a longer
                sound instead of raising `TooManyChunksError`); `short_video` ("error" or "repeat" the frames of a
                video shorter than `num_video_frames`); `padding` (True / "longest", "max_length"), needed for tensors
                of samples of different lengths; `truncation` with `max_length` (the model's context when not given)
                drops a sample's earliest text tokens, never a placeholder or a special token (`PromptTooLongError`
                where the media alone do not fit); the tokenizer's `pad_to_multiple_of`, `padding_side`,
                `add_special_tokens`, `return_offsets_mapping`, `return_special_tokens_mask`, `return_token_type_ids`,
                `return_length`; `return_mm_token_type_ids`, `return_text_replacement_offsets`; the image
                processor's arguments, for images and video frames.

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` and, when given, `pixel_values`, `pixel_values_videos`,
            `input_features`, `sound_features`, `sound_features_mask`.
        """
        output_kwargs = self._merge_kwargs(UniMoEProcessorKwargs, **kwargs)
        text_kwargs, audio_kwargs = output_kwargs["text_kwargs"], output_kwargs["audio_kwargs"]
        images_kwargs = {k: v for k, v in output_kwargs["images_kwargs"].items() if k != "return_tensors"}
        short_video = output_kwargs["videos_kwargs"].get("short_video", "error")
        if short_video not in ("error", "repeat"):
            raise UniMoEProcessingError(f"`short_video` must be 'error' or 'repeat', got {short_video!r}.")
        media = {"image": images, "video": videos, "audio": audio, "sound": sound}
        texts = prompt_texts(text, any(value is not None for value in media.values()))
        given = {kind: media_items(kind, value, len(texts)) for kind, value in media.items()}
        self._check_placeholders(texts, given)
        self._warn_sound_questions_over_speech(texts)

        data, replacements = {}, {}  # model inputs; per kind, the tokens each item takes
        if given["image"][0]:
            pil = [load_image(item, f"image {i}", self.max_image_pixels) for i, item in enumerate(given["image"][0])]
            data["pixel_values"] = self._pixel_values(pil, images_kwargs)
            replacements["image"] = [self.image_seq_length] * len(pil)
        if given["video"][0]:
            videos = given["video"][0]
            frames = [frame for i, item in enumerate(videos) for frame in load_video(
                item, self.num_video_frames, short_video, f"video {i}", self.max_video_frames, self.max_image_pixels
            )]  # fmt: skip
            pixel_values = self._pixel_values(frames, images_kwargs)
            data["pixel_values_videos"] = pixel_values.reshape(
                len(videos), self.num_video_frames, *pixel_values.shape[1:]
            )
            replacements["video"] = [self.image_seq_length] * len(videos)
        for kind in (kind for kind in self.audio_paths if given[kind][0]):
            sound_path = self.audio_paths[kind] == "sound"
            limit = self._audio_limit(sound_path, bool(audio_kwargs.get("truncate_sound", False)))
            waves = [
                load_audio(item, audio_kwargs.get("sampling_rate"), f"{kind} {i}", limit, self.resampler)
                for i, item in enumerate(given[kind][0])
            ]
            if sound_path:
                out = self.sound_feature_extractor(waves)
                data["sound_features"], data["sound_features_mask"] = out["sound_features"], out["sound_features_mask"]
                replacements[kind] = [n * self.num_sound_query_tokens for n in out["sound_chunks"]]
            else:
                data["input_features"], chunks = speech_features(
                    self.feature_extractor, waves, self.speech_chunk_stride
                )
                replacements[kind] = [n * self.num_speech_query_tokens for n in chunks]

        texts, offsets = expand_placeholders(texts, self._placeholder_pattern, self._kind_of_token, replacements)
        rows = encode_prompts(self.tokenizer, texts, self._placeholder_pattern, self._placeholder_ids, text_kwargs,
                              self.tokenize_text_pieces)  # fmt: skip
        context = self._context_limit()
        limit = text_kwargs.get("max_length") or context
        if text_kwargs.get("truncation") not in (None, False, "do_not_truncate") and limit is not None:
            rows = truncate_prompts(rows, limit, self.tokenizer.bos_token_id, self._placeholder_ids)
        lengths = [len(row["input_ids"]) for row in rows]
        if context is not None and max(lengths) > context:
            raise PromptTooLongError(
                f"The prompt of sample(s) {[i for i, n in enumerate(lengths) if n > context]} takes {max(lengths)} "
                f"tokens with its media expanded, more than the model's context of {context} tokens. Shorten the text "
                "or the media (each image / video and each 30 s of audio take a fixed number of tokens), or pass "
                "`truncation=True, max_length=...` to cut the text."
            )
        out = pad_prompts(rows, text_kwargs, self.tokenizer, context)
        if text_kwargs.get("return_mm_token_type_ids"):
            out["mm_token_type_ids"] = self._mm_token_type_ids(out["input_ids"])
        tensors = {
            key: to_tensor(value, text_kwargs.get("return_tensors"), key) for key, value in {**out, **data}.items()
        }
        if text_kwargs.get("return_text_replacement_offsets"):
            tensors["text_replacement_offsets"] = offsets
        return BatchFeature(tensors)

    def _pixel_values(self, images, images_kwargs) -> np.ndarray:
        pixel_values = self.image_processor(images=images, return_tensors="np", **images_kwargs)["pixel_values"]
        return np.asarray(pixel_values, dtype=np.float32)

    def _mm_token_type_ids(self, input_ids):
        """Per token: 1 image, 2 video, 3 audio placeholder, else 0 (as transformers 5's `create_mm_token_type_ids`,
        which older versions lack)."""
        rows = []
        for ids in input_ids:
            ids, types = np.asarray(ids), np.zeros(len(ids), dtype=np.int64)
            for value, token_id in ((1, self.image_token_id), (2, self.video_token_id), (3, self.audio_token_id)):
                if token_id is not None:
                    types[ids == token_id] = value
            rows.append(types.tolist())
        return rows

    def _context_limit(self) -> int | None:
        if self.context_length:
            return int(self.context_length)
        limit = getattr(self.tokenizer, "model_max_length", None)
        return int(limit) if limit and limit < 10**8 else None

    def _audio_limit(self, sound_path: bool, truncate: bool) -> AudioLimit | None:
        """How much of one audio input the call takes: `max_sound_chunks` chunks on the sound path; on the speech
        path, the chunks the model's context holds (None where the context is unknown)."""
        chunk = self.feature_extractor.n_samples
        if sound_path:
            message = functools.partial(too_many_chunks_message, chunk, self.max_sound_chunks)
            return AudioLimit(self.max_sound_chunks * chunk, truncate, message, TooManyChunksError)
        context, per_chunk = self._context_limit(), self.num_speech_query_tokens
        if not context or not per_chunk:
            return None
        stride = self.speech_chunk_stride or chunk
        message = functools.partial(speech_too_long_message, chunk, stride, per_chunk, context)
        return AudioLimit(max(1, context // per_chunk) * stride, False, message, PromptTooLongError)

    def _warn_sound_questions_over_speech(self, texts):
        """In a model with both a speech and a sound tower, warn about each sample that sends audio to the speech tower
        (`<audio>`) under a question about a sound: nothing in a waveform tells the two apart, so the processor keeps
        what it was given and says how to send it to the sound tower."""
        if self.audio_paths != {"audio": "speech", "sound": "sound"}:
            return
        for index, sample in enumerate(texts):
            if self.audio_token in sample and audio_kind_for_question(sample) == "sound":
                logger.warning(
                    f'Sample {index} gives audio as {self.audio_token} (`audio=`, or {{"type": "audio"}} in a chat), '
                    "which this model reads as speech (Whisper), but its text asks about a sound "
                    f"({SOUND_QUESTION.search(sample).group()!r}). For the sound tower (BEATs) pass it as "
                    f'{self.sound_token} (`sound=`, or {{"type": "sound"}} in a chat); if it is speech, ask what is '
                    "said."
                )

    def _check_placeholders(self, texts, given):
        """Every media item given has a placeholder of its kind in the text, in the model, and in its sample."""
        for kind, (items, _) in given.items():
            if items and kind not in self._placeholders:
                reason = {
                    "image": "no vision tower",
                    "video": "no vision tower",
                    "audio": "no speech or sound tower",
                    "sound": "no separate <sound> placeholder: pass sounds as `audio=`"
                    if self.audio_paths.get("audio") == "sound"
                    else "no sound tower",
                }[kind]
                raise PlaceholderCountError(
                    f"{len(items)} {kind} input(s) were given as `{ARGUMENTS[kind]}=`, but this model has {reason}. "
                    f"Drop `{ARGUMENTS[kind]}=` or use a checkpoint with that modality."
                )
        for sample_index, sample in enumerate(texts):
            for token, kind in self._disabled_tokens.items():
                if token in sample:
                    raise PlaceholderCountError(
                        f"Sample {sample_index} contains {token}, but this model has no {kind} tower, so nothing can "
                        f"fill it. Remove {token} from the text."
                    )
        found = [self._placeholder_pattern.findall(sample) if self._placeholder_pattern else [] for sample in texts]
        for kind, (items, nested_counts) in given.items():
            if kind not in self._placeholders:
                continue
            token = self._placeholders[kind][0]
            in_text = [tokens.count(token) for tokens in found]
            if sum(in_text) != len(items):
                raise PlaceholderCountError(
                    f"The text has {sum(in_text)} {token} placeholder(s) (per sample: {in_text}) but {len(items)} "
                    f"{kind} input(s) were given as `{ARGUMENTS[kind]}=`. Put exactly one {token} in the text for "
                    f"each {kind}, in the order the {kind} inputs are passed."
                )
            if nested_counts is not None and nested_counts != in_text:
                raise PlaceholderCountError(
                    f"The {kind} inputs were given per sample as {nested_counts} item(s) but the texts hold {in_text} "
                    f"{token} placeholder(s). Each sample's list must match its own text."
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
