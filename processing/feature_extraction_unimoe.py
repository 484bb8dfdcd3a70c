# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE's audio at the model's rate: resampling to 16 kHz, the one chunking rule of both audio paths, and their
features (Whisper log-mels for speech, the BEATs kaldi fbank for sounds).

A Hub file beside `processing_unimoe.py`: it imports only torch, numpy, transformers and the standard library, and no
sibling (`media_unimoe.py` resamples with it, `processing_unimoe.py` extracts features with it).

Both audio paths cut a 16 kHz waveform with `audio_chunks`: the speech path (`speech_features`) feeds each chunk to
transformers' `WhisperFeatureExtractor`, the sound path (`UniMoEBEATsFeatureExtractor`) turns each chunk into a kaldi
fbank. How many chunks an input may take is checked while it is read (`media_unimoe.AudioLimit`).
"""

import functools
import importlib
import math

import numpy as np
import torch
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature


SAMPLING_RATE = 16_000  # the rate inside the model (Whisper and BEATs features)
CHUNK_SECONDS = 30
CHUNK_SAMPLES = SAMPLING_RATE * CHUNK_SECONDS  # 480,000: one Whisper / BEATs input
# the original's sound path keeps this many chunks of a longer sound (and drops the rest without a word)
ORIGINAL_MAX_SOUND_CHUNKS = 20
SOUND_CHUNK_PADDINGS = ("zeros", "last_sample")
RESAMPLERS = ("soxr_hq", "windowed_sinc")


# --- resampling -------------------------------------------------------------------------------------------------------
def resampled_length(num_samples: int, orig_sr: int, target_sr: int = SAMPLING_RATE) -> int:
    """Samples after resampling `num_samples` samples from `orig_sr` to `target_sr` (librosa's length:
    ceil(num_samples * target_sr / orig_sr))."""
    if orig_sr == target_sr:
        return int(num_samples)
    return int(np.ceil(num_samples * (float(target_sr) / orig_sr)))


def resample_audio(
    waveform: np.ndarray, orig_sr: int, target_sr: int = SAMPLING_RATE, method: str = "soxr_hq"
) -> np.ndarray:
    """Resampling as the original Uni-MoE's `librosa.load(sr=16000)`: python-soxr at high quality ("HQ", librosa's
    default `soxr_hq`) on float32 samples, cut or zero-padded to `resampled_length` samples (librosa's `fix_length`).
    Needs the `soxr` package unless the rates are equal; `method="windowed_sinc"` resamples in torch instead
    (`windowed_sinc_resample`). Returns float32."""
    if method not in RESAMPLERS:
        raise ValueError(f"method must be one of {RESAMPLERS}, got {method!r}.")
    if method == "windowed_sinc":
        return windowed_sinc_resample(waveform, orig_sr, target_sr)
    waveform = np.asarray(waveform, dtype=np.float32)
    if orig_sr == target_sr or waveform.size == 0:
        return waveform
    try:
        soxr = importlib.import_module("soxr")
    except ImportError:
        raise ImportError(
            f"Resampling audio from {orig_sr} Hz to {target_sr} Hz needs the `soxr` package (python-soxr, the "
            "resampler librosa uses), which is not installed. Install it with `pip install soxr`, or pass audio "
            f"sampled at {target_sr} Hz."
        ) from None
    out = soxr.resample(np.ascontiguousarray(waveform), orig_sr, target_sr, quality="HQ")
    length = resampled_length(len(waveform), orig_sr, target_sr)
    if len(out) < length:
        out = np.concatenate([out, np.zeros(length - len(out), out.dtype)])
    return np.ascontiguousarray(out[:length], dtype=np.float32)


def windowed_sinc_resample(waveform: np.ndarray, orig_sr: int, target_sr: int = SAMPLING_RATE) -> np.ndarray:
    """Band-limited resampling (Hann-windowed sinc, 6 zero crossings, cutoff 0.99 x the lower Nyquist rate), for any
    pair of integer rates, in torch. Output length is ceil(len * target_sr / orig_sr)."""
    if orig_sr == target_sr or waveform.size == 0:
        return waveform.astype(np.float32, copy=False)
    zero_crossings, rolloff = 6, 0.99
    x = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float64))
    beta = rolloff * min(orig_sr, target_sr) / orig_sr  # cutoff in cycles per input sample, times 2
    half_width = math.ceil(zero_crossings / beta)  # kernel half width in input samples
    num_out = math.ceil(len(x) * target_sr / orig_sr)
    taps = torch.arange(-half_width, half_width + 1, dtype=torch.int64).double()  # [taps]
    windows = torch.nn.functional.pad(x, (half_width, half_width + 1)).unfold(0, len(taps), 1)  # [len + 1, taps]
    out = torch.empty(num_out, dtype=torch.float64)
    block = 1 << 15
    for start in range(0, num_out, block):
        j = torch.arange(start, min(start + block, num_out), dtype=torch.int64)
        base = (j * orig_sr) // target_sr  # input sample at or left of each output instant
        # its offset from that sample: one of at most target_sr values, so the kernel is computed once per offset seen
        offsets, which = torch.unique((j * orig_sr) % target_sr, return_inverse=True)
        t = (offsets.double() / target_sr)[:, None] - taps[None, :]  # [offsets, taps]: distance to each input sample
        kernel = beta * torch.sinc(beta * t) * torch.cos(t * (math.pi * beta / (2 * zero_crossings))).pow(2)
        kernel = kernel * ((beta * t).abs() <= zero_crossings)
        out[start : start + len(j)] = (windows[base] * kernel[which]).sum(-1)
    return out.numpy().astype(np.float32)


class AudioLimit:
    """How much of one audio input is used: at most `max_samples` samples at 16 kHz. A longer input raises
    `error(message(what, seconds, at_least))` (the caller's error class and message: they depend on the audio path;
    `at_least` where the length was counted while decoding and decoding stopped at the limit), or with
    `truncate=True` keeps its first `max_samples` samples. Files are checked from their header, before decoding, and
    only the kept part (plus one second that the resampler's filter reads past the cut) is decoded."""

    def __init__(self, max_samples: int, truncate: bool = False, message=None, error=ValueError):
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}.")
        self.max_samples, self.truncate, self.message, self.error = int(max_samples), truncate, message, error

    @property
    def seconds(self) -> float:
        return self.max_samples / SAMPLING_RATE

    def too_long(self, num_samples: int, rate: int) -> bool:
        return resampled_length(num_samples, rate) > self.max_samples

    def frames_to_read(self, rate: int) -> int:
        """Frames at `rate` that give the kept samples exactly, with the resampler's look-ahead."""
        if rate == SAMPLING_RATE:
            return self.max_samples
        return math.ceil(self.max_samples * rate / SAMPLING_RATE) + int(rate)

    def frames_to_decode(self, frames: int | None, rate: int, what: str, seconds: float | None = None) -> int:
        """For a file of `frames` frames at `rate` (None: not in its header): refused here when too long (and not
        truncated), else the frames to decode: the kept ones plus one, to tell a longer file."""
        if frames is not None and self.too_long(frames, rate) and not self.truncate:
            raise self.refuse(frames / rate if seconds is None else seconds, what)
        return self.frames_to_read(rate) + 1

    def refuse(self, seconds: float, what: str, at_least: bool = False) -> Exception:
        if self.message is not None:
            return self.error(self.message(what, seconds, at_least))
        more = "more than " if at_least else ""
        return self.error(
            f"{what} lasts {more}{seconds:.1f} s; at most {self.seconds:g} s are taken. Cut it to {self.seconds:g} s."
        )


# --- chunks -----------------------------------------------------------------------------------------------------------
def audio_chunks(
    wave: np.ndarray, chunk_samples: int, stride: int | None = None, padding: str = "zeros"
) -> tuple[np.ndarray, list[int]]:
    """Cut a 16 kHz waveform into model chunks, for both audio paths: chunk k holds samples [k * stride, k * stride +
    chunk_samples), `stride` defaulting to `chunk_samples`; there are ceil(len / stride) chunks (at least one). The
    original speech path cuts 480,001-sample pieces and keeps 480,000 of each (stride 480,001), its sound path cuts
    480,000-sample chunks. A chunk shorter than `chunk_samples` is padded with zeros (`padding="zeros"`, as Whisper
    pads) or by repeating its last sample (`"last_sample"`, the original's BEATs path).

    Returns the chunks [chunks, chunk_samples] float32 and the number of real samples in each."""
    if padding not in SOUND_CHUNK_PADDINGS:
        raise ValueError(f"padding must be one of {SOUND_CHUNK_PADDINGS}, got {padding!r}.")
    stride = int(stride or chunk_samples)
    count = num_audio_chunks(len(wave), chunk_samples, stride)
    chunks = np.zeros((count, chunk_samples), np.float32)
    real = []
    for index in range(count):
        piece = wave[index * stride : index * stride + chunk_samples]
        chunks[index, : len(piece)] = piece
        if padding == "last_sample" and 0 < len(piece) < chunk_samples:
            chunks[index, len(piece) :] = piece[-1]
        real.append(len(piece))
    return chunks, real


def num_audio_chunks(num_samples: int, chunk_samples: int, stride: int | None = None) -> int:
    """The number of chunks `audio_chunks` cuts `num_samples` samples into."""
    return max(1, math.ceil(num_samples / int(stride or chunk_samples)))


def too_many_chunks_message(chunk_samples: int, max_chunks: int, what: str, seconds: float, at_least=False) -> str:
    """Why a sound of `seconds` is refused on the sound path, which takes at most `max_chunks` chunks (`at_least`:
    the length was counted while decoding, which stopped at the limit)."""
    chunks = num_audio_chunks(round(seconds * SAMPLING_RATE), chunk_samples)
    chunk, most = chunk_samples / SAMPLING_RATE, max_chunks * chunk_samples / SAMPLING_RATE
    more, least = ("more than ", "at least ") if at_least else ("", "")
    return (
        f"{what} lasts {more}{seconds:.1f} s, i.e. {least}{chunks} chunks of {chunk:g} s, but the sound path takes at "
        f"most {max_chunks} chunks ({most:g} s). Cut it, or pass `truncate_sound=True` to keep its first {most:g} s. "
        f"(The original Uni-MoE keeps the first {ORIGINAL_MAX_SOUND_CHUNKS} chunks, {ORIGINAL_MAX_SOUND_CHUNKS * 30} "
        "s, of a longer sound and drops the rest without a word; this processor asks first.)"
    )


def speech_too_long_message(chunk_samples: int, stride: int, tokens_per_chunk: int, context: int, what: str,
                            seconds: float, at_least=False) -> str:  # fmt: skip
    """Why a speech input of `seconds` is refused: its chunks (`stride` apart) take more tokens than the context."""
    chunks = num_audio_chunks(round(seconds * SAMPLING_RATE), chunk_samples, stride)
    most = max(1, context // tokens_per_chunk)
    more, least = ("more than ", "at least ") if at_least else ("", "")
    return (
        f"{what} lasts {more}{seconds:.1f} s: {least}{chunks} chunks of {chunk_samples / SAMPLING_RATE:g} s at "
        f"{tokens_per_chunk} tokens each, {least}{chunks * tokens_per_chunk} tokens, more than the model's context of "
        f"{context} tokens, which holds at most {most} chunks ({most * stride / SAMPLING_RATE:g} s) of speech. Cut the "
        "audio (to less than that, as the prompt's text and other media take tokens too), or split it over several "
        "questions."
    )


# --- speech: Whisper log-mels ------------------------------------------------------------------------------------------
def speech_features(feature_extractor, waves, stride: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Whisper log-mel features [chunks, mels, frames] of every chunk of every 16 kHz waveform (`audio_chunks` of
    `feature_extractor.n_samples` samples, `stride` apart), and the number of chunks of each waveform."""
    chunks, counts = [], []
    for wave in waves:
        pieces, _ = audio_chunks(wave, feature_extractor.n_samples, stride)
        chunks += list(pieces)
        counts.append(len(pieces))
    features = feature_extractor(chunks, sampling_rate=SAMPLING_RATE, padding="max_length", return_tensors="np")
    return np.asarray(features["input_features"], dtype=np.float32), counts


# --- sound: the BEATs filterbank --------------------------------------------------------------------------------------
def _kaldi_mel(freq):
    return 1127.0 * torch.log1p(freq / 700.0)


def kaldi_mel_banks(num_mel_bins: int = 128, fft_size: int = 512, sampling_rate: int = SAMPLING_RATE,
                    low_freq: float = 20.0, high_freq: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Kaldi's triangular mel filters [num_mel_bins, fft_size // 2 + 1] (triangles in the mel domain, mel(f) = 1127
    ln(1 + f / 700), no Nyquist weight); `high_freq <= 0` counts back from the Nyquist frequency."""
    nyquist = sampling_rate / 2
    high_freq = high_freq if high_freq > 0 else nyquist + high_freq
    mel_low, mel_high = (
        _kaldi_mel(torch.tensor(low_freq, dtype=torch.float64)),
        _kaldi_mel(torch.tensor(high_freq, dtype=torch.float64)),
    )
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    left = mel_low + delta * torch.arange(num_mel_bins, dtype=torch.float64)[:, None]  # [mel, 1]
    center, right = left + delta, left + 2 * delta
    fft_mel = _kaldi_mel(sampling_rate / fft_size * torch.arange(fft_size // 2, dtype=torch.float64))[None, :]
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks = torch.minimum(up, down).clamp_min(0.0)  # [mel, fft_size // 2]
    return torch.nn.functional.pad(banks, (0, 1))  # [mel, fft_size // 2 + 1]: zero weight at Nyquist


def kaldi_fbank(
    waveform: torch.Tensor, num_mel_bins: int = 128, mel_banks: torch.Tensor | None = None
) -> torch.Tensor:
    """Kaldi `compute-fbank-feats` defaults at 16 kHz, as torchaudio.compliance.kaldi.fbank (BEATs' preprocess): 25 ms
    frames every 10 ms (snip edges), DC offset removed, pre-emphasis 0.97, Povey window, 512-point power spectrum,
    log mel energies floored at float32 eps, no dither. [samples] -> [frames, num_mel_bins] float32."""
    frame_length, frame_shift, fft_size = 400, 160, 512
    x = waveform.to(torch.float64)
    if x.numel() < frame_length:
        return torch.zeros(0, num_mel_bins)
    frames = x.unfold(0, frame_length, frame_shift)  # [frames, 400]
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # the first sample is its own predecessor
    frames = frames - 0.97 * previous
    frames = frames * torch.hann_window(frame_length, periodic=False, dtype=torch.float64).pow(0.85)
    power = torch.fft.rfft(frames, n=fft_size).abs().pow(2)  # [frames, 257]
    banks = kaldi_mel_banks(num_mel_bins, fft_size) if mel_banks is None else mel_banks
    mel = power @ banks.T  # [frames, mel]
    return mel.clamp_min(torch.finfo(torch.float32).eps).log().to(torch.float32)


@functools.lru_cache(maxsize=4)
def _cached_mel_banks(num_mel_bins: int) -> torch.Tensor:
    return kaldi_mel_banks(num_mel_bins)


class UniMoEBEATsFeatureExtractor(SequenceFeatureExtractor):
    r"""BEATs inputs for Uni-MoE's sound path: 16 kHz audio cut into chunks of `chunk_samples` (30 s: 480,000 samples;
    the last padded with zeros, or by repeating its last sample with `chunk_padding="last_sample"` as the original
    does), each turned into a 128-bin kaldi fbank of `waveform * 2**15` (2998 frames per 30 s).
    The fbank is not normalised here: the model's BEATs applies (fbank - fbank_mean) / (2 * fbank_std) (its config's
    15.41663 and 6.55582, the original's preprocess constants).

    Returns `sound_features` [chunks, 2998, 128], `sound_features_mask` [chunks, 2998] (1 = frame of real audio: a
    frame is padding when all 160 samples of its hop are padding, as the original BEATs' sample-mask downsampling
    gives) and `sound_chunks` (chunks per input). How many chunks a sound may take is checked where it is read
    (`UniMoEProcessor`'s `max_sound_chunks`).
    """

    model_input_names = ["sound_features", "sound_features_mask"]

    def __init__(self, feature_size=128, sampling_rate=SAMPLING_RATE, padding_value=0.0, chunk_samples=CHUNK_SAMPLES,
                 waveform_scale=2**15, chunk_padding="zeros", **kwargs):  # fmt: skip
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        if chunk_padding not in SOUND_CHUNK_PADDINGS:
            raise ValueError(f"chunk_padding must be one of {SOUND_CHUNK_PADDINGS}, got {chunk_padding!r}.")
        self.chunk_samples = chunk_samples
        self.waveform_scale = waveform_scale
        self.chunk_padding = chunk_padding

    @property
    def frames_per_chunk(self) -> int:
        return 1 + (self.chunk_samples - 400) // 160

    def __call__(self, raw_audio, sampling_rate=None, return_tensors=None, **kwargs):
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(
                f"UniMoEBEATsFeatureExtractor expects {self.sampling_rate} Hz audio, got sampling_rate="
                f"{sampling_rate}. Resample first (UniMoEProcessor does it for you)."
            )
        if isinstance(raw_audio, (np.ndarray, torch.Tensor)) and raw_audio.ndim == 1:
            raw_audio = [raw_audio]
        banks = _cached_mel_banks(self.feature_size)
        features, masks, counts = [], [], []
        for index, wave in enumerate(raw_audio):
            wave = np.asarray(wave, dtype=np.float32)
            if wave.ndim != 1 or wave.size == 0:
                raise ValueError(f"Sound {index} has shape {tuple(wave.shape)}; expected a non-empty 1-D waveform.")
            pieces, real = audio_chunks(wave, self.chunk_samples, padding=self.chunk_padding)
            counts.append(len(pieces))
            for piece, length in zip(pieces, real, strict=True):
                features.append(kaldi_fbank(torch.from_numpy(piece) * self.waveform_scale, self.feature_size, banks))
                mask = torch.zeros(self.frames_per_chunk, dtype=torch.long)
                mask[: min(self.frames_per_chunk, math.ceil(length / 160))] = 1
                masks.append(mask)
        data = {
            "sound_features": torch.stack(features).numpy(),
            "sound_features_mask": torch.stack(masks).numpy(),
            "sound_chunks": counts,
        }
        return BatchFeature(data, tensor_type=return_tensors)


__all__ = [
    "CHUNK_SAMPLES",
    "SAMPLING_RATE",
    "AudioLimit",
    "UniMoEBEATsFeatureExtractor",
    "audio_chunks",
    "kaldi_fbank",
    "num_audio_chunks",
    "resample_audio",
    "speech_features",
    "windowed_sinc_resample",
]
