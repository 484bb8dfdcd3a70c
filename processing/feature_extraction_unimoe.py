# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE's audio features: one chunking rule for both audio paths, and the BEATs (sound) feature extractor.

A Hub file beside `processing_unimoe.py` (which imports it): it imports only torch, numpy, transformers, the standard
library and `media_unimoe.py`. The speech path's log-mel features are transformers' `WhisperFeatureExtractor`, applied
by the processor to the chunks `audio_chunks` cuts; the sound path's kaldi fbank is `UniMoEBEATsFeatureExtractor`.
"""

import functools
import math

import numpy as np
import torch
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

from .media_unimoe import SAMPLING_RATE, EmptyAudioError, TooManyChunksError, UniMoEProcessingError


logger = logging.get_logger(__name__)

CHUNK_SECONDS = 30
CHUNK_SAMPLES = SAMPLING_RATE * CHUNK_SECONDS  # 480,000: one Whisper / BEATs input
# the original's sound path keeps this many chunks of a longer sound (and drops the rest without a word)
ORIGINAL_MAX_SOUND_CHUNKS = 20
SOUND_CHUNK_PADDINGS = ("zeros", "last_sample")


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
    count = max(1, math.ceil(len(wave) / stride))
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


def too_many_chunks_message(
    what: str, seconds: float, chunks: int, chunk_samples: int, max_chunks: int, at_least: bool = False
) -> str:
    chunk, most = chunk_samples / SAMPLING_RATE, max_chunks * chunk_samples / SAMPLING_RATE
    more, least = ("more than ", "at least ") if at_least else ("", "")
    return (
        f"{what} lasts {more}{seconds:.1f} s, i.e. {least}{chunks} chunks of {chunk:g} s, but the sound path takes at "
        f"most {max_chunks} chunks ({most:g} s). Cut it, or pass `truncate_sound=True` to keep its first {most:g} s. "
        f"(The original Uni-MoE keeps the first {ORIGINAL_MAX_SOUND_CHUNKS} chunks, {ORIGINAL_MAX_SOUND_CHUNKS * 30} "
        "s, of a longer sound and drops the rest without a word; this processor asks first.)"
    )


# --- BEATs filterbank -------------------------------------------------------------------------------------------------
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
    The fbank is NOT normalised: the model's BEATs applies (fbank - 15.41663) / (2 * 6.55582) itself.

    Returns `sound_features` [chunks, 2998, 128], `sound_features_mask` [chunks, 2998] (1 = frame of real audio: a
    frame is padding when all 160 samples of its hop are padding, as the original BEATs' sample-mask downsampling
    gives) and `sound_chunks` (chunks per input). A sound longer than `max_chunks` chunks raises
    `TooManyChunksError`, or keeps its first `max_chunks` chunks when called with `truncation=True` (what the
    original does, without a word, at 20 chunks).
    """

    model_input_names = ["sound_features", "sound_features_mask"]

    def __init__(self, feature_size=128, sampling_rate=SAMPLING_RATE, padding_value=0.0, chunk_samples=CHUNK_SAMPLES,
                 max_chunks=ORIGINAL_MAX_SOUND_CHUNKS, waveform_scale=2**15, chunk_padding="zeros", **kwargs):  # fmt: skip
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        if chunk_padding not in SOUND_CHUNK_PADDINGS:
            raise ValueError(f"chunk_padding must be one of {SOUND_CHUNK_PADDINGS}, got {chunk_padding!r}.")
        self.chunk_samples = chunk_samples
        self.max_chunks = max_chunks
        self.waveform_scale = waveform_scale
        self.chunk_padding = chunk_padding

    @property
    def frames_per_chunk(self) -> int:
        return 1 + (self.chunk_samples - 400) // 160

    def num_chunks(self, num_samples: int) -> int:
        return num_audio_chunks(num_samples, self.chunk_samples)

    def __call__(self, raw_audio, sampling_rate=None, truncation=False, return_tensors=None, **kwargs):
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise UniMoEProcessingError(
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
                raise EmptyAudioError(
                    f"Sound {index} has shape {tuple(wave.shape)}; expected a non-empty 1-D waveform."
                )
            chunks = self.num_chunks(wave.size)
            if chunks > self.max_chunks:
                seconds = wave.size / self.sampling_rate
                if not truncation:
                    raise TooManyChunksError(
                        too_many_chunks_message(f"Sound {index}", seconds, chunks, self.chunk_samples, self.max_chunks)
                    )
                logger.warning(
                    f"Sound {index} ({seconds:.1f} s) is truncated to its first "
                    f"{self.max_chunks * self.chunk_samples / self.sampling_rate:g} s."
                )
                wave = wave[: self.max_chunks * self.chunk_samples]
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
    "UniMoEBEATsFeatureExtractor",
    "audio_chunks",
    "kaldi_fbank",
    "num_audio_chunks",
    "too_many_chunks_message",
]
