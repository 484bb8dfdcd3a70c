# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE's media inputs: reading images, videos and audio, bounded before decoding, and the input errors.

A Hub file beside `processing_unimoe.py` (which imports it): it imports only torch, numpy, PIL, transformers, the
standard library and `feature_extraction_unimoe.py` (resampling). Decoding audio and video files needs `soundfile`
and/or `av` (PyAV), resampling audio that is not at 16 kHz needs `soxr` (python-soxr); they are imported when needed,
with an error naming the package if missing.

Media are bounded before they are decoded: an image file's pixel count (`max_pixels`) and a video's frame count and
frame size (`max_frames`, `max_pixels`) are read from the file's header, an audio file's duration from its header
(`AudioLimit`), and only what will be used is decoded (the sampled frames' part of a video, the kept part of a
truncated sound).

Every input problem raises a `UniMoEProcessingError` (a `ValueError`) naming what was received, what was expected and
how to fix it; its subclasses tell the cases apart.
"""

import importlib
import io
import os
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.utils import logging

from .feature_extraction_unimoe import SAMPLING_RATE, AudioLimit, resample_audio


logger = logging.get_logger(__name__)

MIN_SAMPLING_RATE, MAX_SAMPLING_RATE = 1_000, 384_000
MAX_IMAGE_PIXELS = 8192 * 8192  # per image file and per video frame: a 48 MP photo or an 8K frame fits
MAX_VIDEO_FRAMES = 36_000  # 20 minutes at 30 frames per second
_UNKNOWN_FRAMES = 1 << 62  # libsndfile's frame count of a file whose length it cannot tell


# --- errors ---------------------------------------------------------------------------------------------------------
class UniMoEProcessingError(ValueError):
    """Base class of every input error the Uni-MoE processor raises (a `ValueError`)."""


class PlaceholderCountError(UniMoEProcessingError):
    """The text's media placeholders do not match the media given (or the model has no tower for a modality)."""


class MediaDecodeError(UniMoEProcessingError):
    """An image, audio or video could not be read or has an unusable shape, type or value."""


class EmptyAudioError(MediaDecodeError):
    """An audio input has no samples."""


class NotEnoughFramesError(MediaDecodeError):
    """A video has fewer frames than the model samples (and `short_video="repeat"` was not asked for)."""


class MediaTooLargeError(MediaDecodeError):
    """An image or video file has more pixels or frames than the processor's limits (read from its header, before
    decoding)."""


class TooManyChunksError(UniMoEProcessingError):
    """A sound is longer than `max_sound_chunks` chunks (and `truncate_sound=True` was not asked for)."""


class PromptTooLongError(UniMoEProcessingError):
    """The expanded prompt is longer than the model's context (or than `max_length` with `truncation=True`, once all
    its text that truncation may drop is dropped), or one speech input alone takes more than the context."""


# --- reading media ----------------------------------------------------------------------------------------------------
def _optional_module(name: str, purpose: str | None = None):
    """The module `name`; where it is not installed, None, or with a `purpose` an ImportError naming the package."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if purpose is None:
            return None
        raise ImportError(
            f"{purpose} needs the `{name}` package, which is not installed. Install it with `pip install {name}`, "
            "or pass the decoded media (arrays / PIL images) instead of a file."
        ) from None


def _is_url(value) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def is_path_like(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def describe_source(value) -> str:
    """A short description of an input for error messages."""
    if isinstance(value, (str, os.PathLike)):
        return repr(str(value))
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, Image.Image):
        return f"PIL image {value.size[0]}x{value.size[1]} mode {value.mode}"
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    return type(value).__name__


def _open_source(source, what: str):
    """A path (str) or a file object for `source`: a path, an http(s) URL (fetched) or raw bytes."""
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(bytes(source))
    if _is_url(source):
        try:
            with urllib.request.urlopen(source, timeout=30) as response:
                return io.BytesIO(response.read())
        except Exception as error:
            raise MediaDecodeError(f"Could not download {what} from {source!r}: {error}.") from None
    path = Path(source)
    if not path.is_file():
        reason = "it is a directory" if path.is_dir() else "no such file"
        raise MediaDecodeError(f"Could not read {what} {str(source)!r}: {reason}. Pass an existing file path.")
    return str(path)


def _rewind(source) -> None:
    if hasattr(source, "seek"):
        source.seek(0)


def _check_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise MediaTooLargeError(
            f"{what} is {width}x{height} = {width * height:,} pixels (read from its header, before decoding); the "
            f"processor takes at most {max_pixels:,} pixels per image or video frame (`max_image_pixels`). Pass a "
            "smaller image (the model sees it at a few hundred pixels a side), or raise `max_image_pixels` on the "
            "processor."
        )


def _array_to_pil(array, what: str) -> Image.Image:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.size == 0:
        raise MediaDecodeError(f"{what} is an empty array (shape {array.shape}); expected an image with pixels.")
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise MediaDecodeError(
            f"{what} has shape {array.shape}; expected (height, width), (height, width, 1|3|4) or (1|3|4, height, "
            "width)."
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise MediaDecodeError(f"{what} contains NaN or infinite values; expected finite pixel values.")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise MediaDecodeError(
                f"{what} is a float array with values in [{low:.3g}, {high:.3g}]; float images must lie in [0, 1]. "
                "Pass uint8 pixels (0..255) or divide by 255."
            )
        array = np.round(array * 255.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise MediaDecodeError(
                f"{what} is an integer array with values in [{low}, {high}]; expected uint8 pixels in 0..255."
            )
        array = array.astype(np.uint8)
    else:
        raise MediaDecodeError(f"{what} has dtype {array.dtype}; expected uint8 or float pixels.")
    image = Image.fromarray(np.ascontiguousarray(array))
    return image.convert("RGB")


def load_image(image, what: str = "image", max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """An RGB PIL image from a PIL image, an array / tensor (HWC or CHW, uint8 or float in [0, 1]), a file path, an
    http(s) URL, bytes or a `{"path": ...}` / `{"bytes": ...}` dict. Raises `MediaDecodeError` naming `what`, and
    `MediaTooLargeError` for a file of more than `max_pixels` pixels (its size is read before its pixels are)."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path") or image.get("url") or image.get("image")
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise MediaDecodeError(f"{what} has size {image.size}; expected an image with pixels.")
        return image.convert("RGB")
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return _array_to_pil(image, what)
    if is_path_like(image) or isinstance(image, (bytes, bytearray)):
        source = _open_source(image, what)
        name = f"{what} ({describe_source(image)})"
        try:
            with warnings.catch_warnings():  # PIL's own, larger bomb limit: the size is checked below
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(source)
            with opened:
                _check_pixels(opened.width, opened.height, max_pixels, name)
                opened.load()
                return opened.convert("RGB")
        except UniMoEProcessingError:
            raise
        except Image.DecompressionBombError as error:  # over twice PIL's limit: refused by PIL before ours
            raise MediaTooLargeError(
                f"{name} is too large to decode: {error} Pass a smaller image (the model sees it at a few hundred "
                "pixels a side)."
            ) from None
        except Exception as error:  # PIL raises many types on corrupt data
            raise MediaDecodeError(
                f"Could not decode {name} as an image: {type(error).__name__}: {error}. Expected a readable "
                "image file (PNG, JPEG, ...)."
            ) from None
    raise MediaDecodeError(
        f"{what} is a {type(image).__name__}; expected a PIL image, a numpy array / torch tensor, a file path or URL."
    )


# --- audio ------------------------------------------------------------------------------------------------------------
def _mono(block: np.ndarray) -> np.ndarray:
    """[samples, channels] float32 -> [samples], the channels averaged (librosa's `to_mono`)."""
    if block.shape[1] == 1:
        return np.ascontiguousarray(block[:, 0])
    return block.mean(axis=1, dtype=np.float32)


def _decode_audio_file(source, what: str, limit: AudioLimit | None = None) -> tuple[np.ndarray, int]:
    """Mono float32 samples (channels averaged) and the sampling rate, with soundfile (wav, flac, ogg, mp3) or else
    PyAV. With a `limit`, the duration in the file's header is checked before any sample is decoded, and at most the
    frames the limit keeps (plus one, to tell a longer file) are decoded."""
    errors, soundfile = [], _optional_module("soundfile")
    if soundfile is not None:
        try:
            _rewind(source)
            opened = soundfile.SoundFile(source)
        except Exception as error:
            errors.append(f"soundfile: {error}")
        else:
            try:
                with opened:
                    return _read_with_soundfile(opened, what, limit)
            except UniMoEProcessingError:
                raise
            except Exception as error:  # readable header, unreadable data: PyAV may still decode it
                errors.append(f"soundfile: {error}")
    av = _optional_module("av")
    if av is not None:
        try:
            _rewind(source)
            return _decode_audio_with_av(av, source, what, limit)
        except UniMoEProcessingError:
            raise
        except Exception as error:
            errors.append(f"PyAV: {type(error).__name__}: {error}")
    if soundfile is None and av is None:
        _optional_module("soundfile", "Decoding audio files")
    raise MediaDecodeError(
        f"Could not decode {what} as audio: {'; '.join(errors)}. Expected a readable audio file (wav, flac, mp3, "
        "ogg, ...) or a waveform array with `sampling_rate`."
    )


def _check_file_rate(rate, what: str) -> int:
    if not rate or not MIN_SAMPLING_RATE <= int(rate) <= MAX_SAMPLING_RATE:
        raise MediaDecodeError(
            f"The sampling rate of {what} is {rate} Hz (from its header); expected {MIN_SAMPLING_RATE}.."
            f"{MAX_SAMPLING_RATE} Hz. Pass a regular audio file."
        )
    return int(rate)


def _read_with_soundfile(opened, what: str, limit: AudioLimit | None) -> tuple[np.ndarray, int]:
    rate = _check_file_rate(opened.samplerate, what)
    frames = opened.frames if 0 <= opened.frames < _UNKNOWN_FRAMES else None
    cap = None if limit is None else limit.frames_to_decode(frames, rate, what)
    block = 1 << 20  # frames per read: the channels are averaged block by block
    pieces, count = [], 0
    while cap is None or count < cap:
        data = opened.read(block if cap is None else min(block, cap - count), dtype="float32", always_2d=True)
        if not len(data):
            break
        pieces.append(_mono(data))
        count += len(data)
    return _finish_decoded(pieces, rate, frames, what, limit)


def _finish_decoded(pieces, rate: int, frames, what: str, limit: AudioLimit | None) -> tuple[np.ndarray, int]:
    wave = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if limit is not None and limit.too_long(len(wave), rate):
        if not limit.truncate:  # the header understated the length (or had none): decoding stopped at the limit
            raise limit.refuse(len(wave) / rate, what, at_least=True)
        total = frames / rate if frames is not None else None
        logger.warning(
            f"{what} lasts {f'{total:.1f} s' if total is not None else f'more than {limit.seconds:g} s'}: only its "
            f"first {limit.seconds:g} s are used (truncate_sound=True)."
        )
    return wave, rate


def _decode_audio_with_av(av, source, what: str, limit: AudioLimit | None) -> tuple[np.ndarray, int]:
    with av.open(source) as container:
        if not container.streams.audio:
            raise ValueError("the file has no audio stream")
        stream = container.streams.audio[0]
        rate = _check_file_rate(stream.rate, what)
        seconds = None
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / 1_000_000  # AV_TIME_BASE
        frames = None if seconds is None else int(round(seconds * rate))
        cap = None if limit is None else limit.frames_to_decode(frames, rate, what, seconds)
        converter = av.AudioResampler(format="fltp")  # planar float32, native layout and rate
        pieces, count = [], 0

        def keep(converted):
            nonlocal count, rate
            samples = converted.to_ndarray()  # [channels, samples]
            pieces.append(_mono(samples.T.astype(np.float32, copy=False)))
            count += samples.shape[1]
            rate = converted.sample_rate

        for frame in container.decode(stream):
            for converted in converter.resample(frame):
                keep(converted)
            if cap is not None and count >= cap:
                break
        else:
            for converted in converter.resample(None):
                keep(converted)
    return _finish_decoded(pieces, int(rate), frames, what, limit)


def load_audio(audio, sampling_rate: int | None = None, what: str = "audio", limit: AudioLimit | None = None,
               resampler: str = "soxr_hq") -> np.ndarray:  # fmt: skip
    """A mono float32 waveform at 16 kHz from a 1-D array / tensor / list (at `sampling_rate`, 16 kHz if None), a
    2-D [channels, samples] or [samples, channels] array (averaged to mono), a `{"array", "sampling_rate"}` dict, a
    file path, URL or bytes (decoded at the file's rate). Integer PCM is scaled to [-1, 1). Resampled with
    `resample_audio` (`resampler`: its `method`). With a `limit`, a longer input is refused (files: from their header,
    before decoding) or, with `limit.truncate`, cut to `limit.max_samples`. Raises `MediaDecodeError` /
    `EmptyAudioError` naming `what`."""
    if isinstance(audio, dict):
        array = audio.get("array", audio.get("raw"))
        if array is None:
            source = audio.get("path") or audio.get("bytes") or audio.get("url") or audio.get("audio")
            return load_audio(source, audio.get("sampling_rate", sampling_rate), what, limit, resampler)
        audio, sampling_rate = array, audio.get("sampling_rate", sampling_rate)
    if is_path_like(audio) or isinstance(audio, (bytes, bytearray)):
        name = f"{what} ({describe_source(audio)})"
        array, sampling_rate = _decode_audio_file(_open_source(audio, what), name, limit)
    elif isinstance(audio, (np.ndarray, torch.Tensor, list, tuple)):
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().float().numpy()
        try:
            array = np.asarray(audio)
        except Exception as error:
            raise MediaDecodeError(f"{what} could not be read as an array: {error}.") from None
        if sampling_rate is None:
            logger.warning_once(
                "An audio array was given without `sampling_rate`: it is taken as 16000 Hz. Pass "
                "`sampling_rate=` to the processor to have it resampled correctly."
            )
            sampling_rate = SAMPLING_RATE
    else:
        raise MediaDecodeError(
            f"{what} is a {type(audio).__name__}; expected a waveform array / tensor (with `sampling_rate`), a dict "
            "with 'array' and 'sampling_rate', or an audio file path / URL."
        )

    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)):
        raise MediaDecodeError(f"The sampling rate of {what} is {sampling_rate!r}; expected an integer in Hz.")
    if not MIN_SAMPLING_RATE <= int(sampling_rate) <= MAX_SAMPLING_RATE:
        raise MediaDecodeError(
            f"The sampling rate of {what} is {sampling_rate} Hz; expected {MIN_SAMPLING_RATE}..{MAX_SAMPLING_RATE} Hz."
        )
    sampling_rate = int(sampling_rate)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise MediaDecodeError(f"{what} has dtype {array.dtype}; expected a numeric waveform.")
    if np.iscomplexobj(array):
        raise MediaDecodeError(f"{what} is complex-valued; expected a real waveform.")
    if array.size == 0:
        raise EmptyAudioError(f"{what} has no samples (length 0); expected at least one sample of audio.")
    if array.ndim == 2:  # the shorter axis holds the channels
        if min(array.shape) > 8:
            raise MediaDecodeError(
                f"{what} has shape {array.shape}: neither axis looks like channels (at most 8). Pass a 1-D mono "
                "waveform or a [channels, samples] array."
            )
        array = array.mean(axis=0 if array.shape[0] <= array.shape[1] else 1)
    elif array.ndim != 1:
        raise MediaDecodeError(f"{what} has shape {array.shape}; expected a 1-D waveform (or [channels, samples]).")
    if limit is not None and limit.too_long(len(array), sampling_rate):
        if not limit.truncate:
            raise limit.refuse(len(array) / sampling_rate, what)
        array = array[: limit.frames_to_read(sampling_rate)]
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        array = array.astype(np.float64) / float(-info.min if info.min < 0 else info.max)
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise MediaDecodeError(f"{what} contains NaN or infinite samples; expected a finite waveform.")
    wave = resample_audio(array, sampling_rate, SAMPLING_RATE, resampler)
    if limit is not None and len(wave) > limit.max_samples:  # truncate=True (a longer input was refused above)
        wave = wave[: limit.max_samples]
    return wave


# --- video ------------------------------------------------------------------------------------------------------------
def sample_frame_indices(total: int, num_frames: int) -> list[int]:
    """The reference's uniform sampling: every `total // num_frames`-th frame from frame 0 (needs total >= num_frames)."""
    step = total // num_frames
    return [i * step for i in range(num_frames)]


def _short_video_indices(total: int, num_frames: int, short_video: str, what: str) -> list[int]:
    if total == 0:
        raise MediaDecodeError(f"{what} has no frames; expected a video with at least one decodable frame.")
    if total >= num_frames:
        return sample_frame_indices(total, num_frames)
    if short_video == "repeat":
        logger.warning(
            f"{what} has {total} frames, fewer than the {num_frames} the model samples: frames are repeated."
        )
        return [i * total // num_frames for i in range(num_frames)]
    raise NotEnoughFramesError(
        f"{what} has {total} frames but the model samples {num_frames} frames per video. Pass a longer video, or "
        "`short_video='repeat'` to repeat its frames evenly (each frame about num_frames / total times)."
    )


def _too_many_frames(what: str, frames: int, max_frames: int, counted: bool, estimated: bool = False):
    source = "counted while decoding" if counted else "from its header, before decoding"
    amount = "more than " if counted else "about " if estimated else ""
    return MediaTooLargeError(
        f"{what} has {amount}{frames:,} frames ({source}); the processor takes videos of at "
        f"most {max_frames:,} frames (`max_video_frames`), of which the model samples only a few. Cut the video, "
        "or raise `max_video_frames` on the processor."
    )


def _decode_video_file(source, num_frames: int, short_video: str, what: str, max_frames: int | None = None,
                       max_pixels: int | None = None) -> list[Image.Image]:  # fmt: skip
    av = _optional_module("av", "Decoding video files")

    def open_stream():
        _rewind(source)
        container = av.open(source)
        if not container.streams.video:
            container.close()
            raise MediaDecodeError(f"{what} has no video stream; expected a video file (mp4, webm, avi, ...).")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return container, stream

    def decode(wanted: set[int]) -> tuple[dict[int, Image.Image], int]:
        """The wanted frames (all frames are counted when `wanted` is empty) and the number of frames decoded. Only
        the wanted frames are converted to images, and decoding stops after the last of them."""
        container, stream = open_stream()
        frames, count, last = {}, 0, max(wanted) if wanted else None
        try:
            for frame in container.decode(stream):
                if count in wanted:
                    _check_pixels(frame.width, frame.height, max_pixels, f"frame {count} of {what}")
                    frames[count] = frame.to_image()
                count += 1
                if last is not None and count > last:
                    break
                if max_frames is not None and count > max_frames:
                    raise _too_many_frames(what, max_frames, max_frames, counted=True)
        finally:
            container.close()
        return frames, count

    try:
        container, stream = open_stream()
        try:
            total = int(stream.frames or 0)
            estimate = total  # without a frame count: the duration times the frame rate
            if total <= 0 and stream.average_rate:
                if stream.duration and stream.time_base:
                    estimate = int(float(stream.duration * stream.time_base * stream.average_rate))
                elif container.duration:
                    estimate = int(container.duration / 1_000_000 * float(stream.average_rate))  # AV_TIME_BASE
            width, height = stream.codec_context.width, stream.codec_context.height
        finally:
            container.close()
        _check_pixels(width or 0, height or 0, max_pixels, what)
        if max_frames is not None and estimate > max_frames:
            raise _too_many_frames(what, estimate, max_frames, counted=False, estimated=total <= 0)
        if total <= 0:  # no frame count in the container: count by decoding
            _, total = decode(set())
        indices = _short_video_indices(total, num_frames, short_video, what)
        frames, decoded = decode(set(indices))
        if len(frames) < len(set(indices)):  # the container overstated its frame count
            indices = _short_video_indices(decoded, num_frames, short_video, what)
            frames, _ = decode(set(indices))
    except UniMoEProcessingError:
        raise
    except Exception as error:  # FFmpeg / container errors on corrupt data
        raise MediaDecodeError(
            f"Could not decode {what} as a video: {type(error).__name__}: {error}. Expected a readable video file "
            "(mp4, webm, avi, ...) or a list of frames."
        ) from None
    if len(frames) < len(set(indices)):
        raise MediaDecodeError(f"Could not decode frames {sorted(set(indices) - set(frames))} of {what}.")
    return [frames[i] for i in indices]


def load_video(video, num_frames: int, short_video: str = "error", what: str = "video",
               max_frames: int | None = MAX_VIDEO_FRAMES, max_pixels: int | None = MAX_IMAGE_PIXELS
               ) -> list[Image.Image]:  # fmt: skip
    """`num_frames` RGB frames sampled uniformly as in the reference (every total // num_frames-th frame from 0) from
    a video file path / URL / bytes (decoded with PyAV), a list of frames (anything `load_image` reads) or a 4-D
    array / tensor [frames, H, W, C] or [frames, C, H, W]. A file of more than `max_frames` frames or `max_pixels`
    pixels per frame raises `MediaTooLargeError` (from its header where it has them, before decoding)."""
    if short_video not in ("error", "repeat"):
        raise UniMoEProcessingError(f"`short_video` must be 'error' or 'repeat', got {short_video!r}.")
    if isinstance(video, dict):
        video = video.get("path") or video.get("bytes") or video.get("url") or video.get("video")
    if is_path_like(video) or isinstance(video, (bytes, bytearray)):
        name = f"{what} ({describe_source(video)})"
        return _decode_video_file(_open_source(video, what), num_frames, short_video, name, max_frames, max_pixels)
    if isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim != 4:
        raise MediaDecodeError(
            f"{what} is an array of shape {tuple(video.shape)}; expected 4-D frames [frames, height, width, "
            "channels] (or [frames, channels, height, width]), a list of frames or a video file."
        )
    if not isinstance(video, (np.ndarray, torch.Tensor, list, tuple)):
        raise MediaDecodeError(
            f"{what} is a {type(video).__name__}; expected a video file path / URL, a list of frames or a 4-D array."
        )
    frames = list(video)
    indices = _short_video_indices(len(frames), num_frames, short_video, what)
    loaded = {i: load_image(frames[i], f"frame {i} of {what}", max_pixels) for i in sorted(set(indices))}
    return [loaded[i] for i in indices]


# --- the processor's media arguments ---------------------------------------------------------------------------
def _is_single(kind: str, value) -> bool:
    """Whether `value` is one media item of `kind` (rather than a list of items)."""
    if is_path_like(value) or isinstance(value, (bytes, bytearray, dict, Image.Image)):
        return True
    if isinstance(value, (np.ndarray, torch.Tensor)):  # a batch only with one more dim than an item
        return value.ndim != {"image": 4, "video": 5}.get(kind, -1)
    if isinstance(value, (list, tuple)) and value and kind == "video":  # a video given as its frames
        return all(
            isinstance(frame, Image.Image) or (isinstance(frame, (np.ndarray, torch.Tensor)) and frame.ndim in (2, 3))
            for frame in value
        )
    if isinstance(value, (list, tuple)) and value and kind in ("audio", "sound"):  # a waveform as a list of numbers
        return all(isinstance(sample, (int, float, np.number)) for sample in value)
    return False


def media_items(kind: str, value, num_texts: int) -> tuple[list, list[int] | None]:
    """The items of one media argument as a flat list, plus the per-sample counts when it was given nested (one list
    per text)."""
    if value is None:
        return [], None
    if _is_single(kind, value) or not isinstance(value, (list, tuple, np.ndarray, torch.Tensor)):
        return [value], None  # what is not an item is rejected with a precise message when it is read
    items = list(value)
    nested = (
        isinstance(value, (list, tuple))
        and len(items) == num_texts
        and all(isinstance(item, (list, tuple)) and not _is_single(kind, item) for item in items)
        and any(len(item) for item in items)
    )
    if nested:
        return [media for sample in items for media in sample], [len(sample) for sample in items]
    return items, None


__all__ = [
    "AudioLimit",
    "EmptyAudioError",
    "MediaDecodeError",
    "MediaTooLargeError",
    "NotEnoughFramesError",
    "PlaceholderCountError",
    "PromptTooLongError",
    "TooManyChunksError",
    "UniMoEProcessingError",
    "load_audio",
    "load_image",
    "load_video",
    "media_items",
    "sample_frame_indices",
]
