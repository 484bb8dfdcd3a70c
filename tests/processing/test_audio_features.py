"""Audio features (tests/processing/test_processing.py covers the processor end to end): resampling against soxr and
the windowed-sinc reference, files against arrays, compressed audio, and the BEATs filterbank against transformers'
kaldi reference and the original's mask downsampling."""

import numpy as np
import pytest
import torch

from modeling_unimoe.processing.feature_extraction_unimoe import (
    CHUNK_SAMPLES,
    UniMoEBEATsFeatureExtractor,
    kaldi_fbank,
    kaldi_mel_banks,
    resample_audio,
)
from modeling_unimoe.processing.media_unimoe import (
    load_audio,
)
from tests.processing.processing_helpers import (
    SR,
    sine,
    write_audio,
    write_m4a,
)


PROMPT = "USER: {}What is this? ASSISTANT:"


# --- decoding and resampling ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resampling_keeps_a_tone(sr):
    out = resample_audio(sine(1.0, sr=sr, freq=1000), sr, SR)
    assert len(out) == SR
    expected = sine(1.0, freq=1000)
    np.testing.assert_allclose(out[200:-200], expected[200:-200], atol=2e-3)


@pytest.mark.parametrize(("sr", "target"), [(44100, SR), (16001, SR), (SR, 8000), (8000, 44100)])
def test_windowed_sinc_resampler_equals_its_sum_sample_by_sample(sr, target):
    """The tiny checkpoint's resampler (polyphase) against the formula it computes, output sample by output sample."""
    wave = np.random.default_rng(0).standard_normal(300)
    beta = 0.99 * min(sr, target) / sr
    expected = []
    for j in range(int(np.ceil(len(wave) * target / sr))):
        n = np.arange(len(wave))
        t = j * sr / target - n
        kernel = beta * np.sinc(beta * t) * np.cos(t * np.pi * beta / 12) ** 2 * (np.abs(beta * t) <= 6)
        expected.append((wave * kernel).sum())
    got = resample_audio(wave, sr, target, method="windowed_sinc")
    np.testing.assert_allclose(got, np.array(expected, dtype=np.float32), atol=1e-5)


@pytest.mark.parametrize(("sr", "target"), [(44100, SR), (16001, SR), (SR, 8000), (8000, 44100)])
def test_resampling_is_soxr_hq_with_librosas_length(sr, target):
    """python-soxr at "HQ" (librosa's default), the output cut or zero-padded to ceil(n * target / sr) samples."""
    import soxr

    wave = np.random.default_rng(0).standard_normal(300).astype(np.float32)
    expected = soxr.resample(wave, sr, target, quality="HQ")
    length = int(np.ceil(len(wave) * target / sr))
    expected = np.pad(expected, (0, max(0, length - len(expected))))[:length]
    np.testing.assert_array_equal(resample_audio(wave, sr, target), expected.astype(np.float32))


def test_audio_files_and_arrays_agree(tmp_path):
    wave = sine(1.5, sr=44100, freq=700)
    from_array = load_audio(wave, 44100)
    stereo = np.stack([wave, wave], axis=1)  # [samples, channels], as soundfile reads it
    from_wav = load_audio(write_audio(tmp_path / "stereo.wav", stereo, sr=44100))
    from_pcm16 = load_audio((wave * 32767).astype(np.int16), 44100)
    from_dict = load_audio({"array": wave, "sampling_rate": 44100})
    from_tensor = load_audio(torch.from_numpy(stereo.T.copy()), 44100)  # [channels, samples]
    assert len(from_array) == int(np.ceil(len(wave) * SR / 44100))
    for other in (from_wav, from_pcm16, from_dict, from_tensor):
        np.testing.assert_allclose(other, from_array, atol=2e-4)


def test_compressed_audio_through_soundfile_and_pyav(tmp_path):
    wave = sine(1.0, freq=500)
    mp3 = load_audio(write_audio(tmp_path / "tone.mp3", wave, format="MP3"))
    m4a = load_audio(write_m4a(tmp_path / "tone.m4a", wave))  # AAC: soundfile can't, PyAV can
    for decoded in (mp3, m4a):
        assert abs(len(decoded) - SR) < 0.2 * SR  # codec priming / padding
        spectrum = np.abs(np.fft.rfft(decoded))
        assert abs(np.argmax(spectrum) * SR / len(decoded) - 500) < 5


# --- the BEATs filterbank ---------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")
def test_fbank_matches_transformers_kaldi_reference():
    """transformers' numpy spectrogram with a Povey window and kaldi mel filters (its torchaudio-free kaldi fbank)."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(SR) + sine(1.0, freq=440)) * 2**15
    filters = mel_filter_bank(
        num_frequency_bins=257,
        num_mel_filters=128,
        min_frequency=20,
        max_frequency=SR // 2,
        sampling_rate=SR,
        norm=None,
        mel_scale="kaldi",
        triangularize_in_mel_space=True,
    )
    np.testing.assert_allclose(kaldi_mel_banks().numpy(), filters.T, atol=1e-12)
    reference = spectrogram(
        wave.astype(np.float64),
        window_function(400, "povey", periodic=False),
        frame_length=400,
        hop_length=160,
        fft_length=512,
        power=2.0,
        center=False,
        preemphasis=0.97,
        mel_filters=filters,
        log_mel="log",
        mel_floor=float(np.finfo(np.float32).eps),
        remove_dc_offset=True,
        dtype=np.float64,
    ).T
    ours = kaldi_fbank(torch.from_numpy(wave)).numpy()
    assert ours.shape == (1 + (SR - 400) // 160, 128)
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)


def test_beats_extractor_mask_follows_the_original_downsampling():
    extractor = UniMoEBEATsFeatureExtractor()
    for samples in (1, 159, 160, 161, 16000, CHUNK_SAMPLES - 1, CHUNK_SAMPLES):
        out = extractor([np.ones(samples, np.float32)])
        # BEATs' sample mask [480000] -> drop 480000 % 2998 samples -> 2998 groups of 160 -> padding iff all padding
        sample_mask = np.zeros(CHUNK_SAMPLES, bool)
        sample_mask[samples:] = True
        usable = CHUNK_SAMPLES - CHUNK_SAMPLES % 2998
        reference = ~sample_mask[:usable].reshape(2998, -1).all(-1)
        np.testing.assert_array_equal(out["sound_features_mask"][0].astype(bool), reference)
