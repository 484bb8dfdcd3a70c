"""The processor against the original Uni-MoE's preprocessing, on inputs built here (nothing downloaded):

- prompt ids of a converted folder (a LLaMA-like SentencePiece tokenizer trained in the test: BPE, byte fallback,
  identity normaliser, dummy prefix) equal the original's per-piece tokenization (every text piece between
  placeholders tokenized on its own by SentencePiece), for raw text, the chat template and padded batches, with the
  converter's fast tokenizer and a slow SentencePiece one; the tiny model keeps its whole-prompt ids;
- speech: Whisper features of 480,001-sample pieces (Whisper keeps 480,000 of each);
- sound: the last BEATs chunk padded by repeating its last sample;
- resampling: python-soxr at high quality, as librosa's default;
- the converter writes these settings into the processor config, and the tiny checkpoint keeps its own.
"""

import copy
import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from hub_export.processor_files import save_processor_files
from modeling_unimoe import UniMoEConfig
from modeling_unimoe.configuration_unimoe import PRESETS
from modeling_unimoe.processing.export import (
    ORIGINAL_PREPROCESSING,
    build_processor,
    build_tiny_processor_tokenizer,
    processor_from_config,
)
from modeling_unimoe.processing.feature_extraction_unimoe import CHUNK_SAMPLES, resample_audio, windowed_sinc_resample
from modeling_unimoe.processing.media_unimoe import TooManyChunksError, load_audio
from modeling_unimoe.processing.processing_unimoe import UniMoEProcessor
from modeling_unimoe.processing.tiny_tokenizer import tiny_corpus
from tests.helpers import TINY_CHECKPOINT
from tests.processing.processing_helpers import (
    SR,
    color_image,
    sine,
    tiny_config,
    tiny_processor,
    video_frames,
    write_audio,
)


PLACEHOLDERS = ("<image>", "<audio>", "<video>")
WORDS = ["What", "is", "this?", "a red circle", "12 plus 30", "ünïcödé 漢字 🙂", "Two  spaces", "tab\there", "\n"]


# --- a LLaMA-like SentencePiece release ------------------------------------------------------------------------------
def write_release_tokenizer(folder: Path) -> Path:
    """A release's tokenizer folder: tokenizer.model (LLaMA's SentencePiece settings: BPE, byte fallback, identity
    normaliser, dummy prefix, whitespace kept) and tokenizer_config.json (the slow LlamaTokenizer, legacy off)."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    corpus = tiny_corpus() + [" ".join(WORDS)] * 3
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=700,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "legacy": False,
        "model_max_length": 4096,
        "padding_side": "right",
        "tokenizer_class": "LlamaTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def write_converted_processor(folder: Path, release: Path) -> Path:
    """The processor files the converter writes for the release's tokenizer (on the tiny model's towers)."""
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(release / "tokenizer.model")).get_piece_size()
    save_processor_files(converted_config(vocab), release, folder)
    return folder


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release_tokenizer(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def sp(release):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(release / "tokenizer.model"))


def converted_config(vocab: int) -> UniMoEConfig:
    """The tiny model's towers with a converted speech variant's vocabulary layout: placeholders right after the
    SentencePiece vocabulary, 30 s audio chunks."""
    text = copy.deepcopy(PRESETS["tiny"]["text_config"])
    text["vocab_size"] = vocab + len(PLACEHOLDERS)
    return UniMoEConfig.from_preset(
        "tiny",
        text_config=text,
        image_token_id=vocab,
        speech_token_id=vocab + 1,
        video_token_id=vocab + 2,
        sound_token_id=None,
        sound_config=None,
        sound_qformer_config=None,
        audio_chunk_seconds=30,
    )


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    """The processor folder the converter writes for that release."""
    return write_converted_processor(tmp_path_factory.mktemp("converted"), release)


@pytest.fixture(scope="module")
def fast(converted):
    return UniMoEProcessor.from_pretrained(converted)


@pytest.fixture(scope="module")
def slow(release, sp):
    """A slow SentencePiece tokenizer (each piece between special tokens encoded by SentencePiece itself, as the
    original's transformers 4.31 LlamaTokenizer did) behind the same processor settings."""
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    tokenizer = SentencePieceBackend(
        vocab_file=str(release / "tokenizer.model"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        legacy=True,
        special_tokens_pattern="bos",
        padding_side="right",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(PLACEHOLDERS)})
    assert not getattr(tokenizer, "is_fast", False)
    return build_processor(converted_config(sp.get_piece_size()), tokenizer, **ORIGINAL_PREPROCESSING)


@pytest.fixture(params=["fast", "slow"])
def processor(request):
    return request.getfixturevalue(request.param)


def reference_ids(sp, processor, prompt: str) -> list[int]:
    """The original's `tokenizer_image_audio_video_token`: <s>, then each text piece between placeholders encoded by
    SentencePiece on its own (so each starts with the dummy prefix), each placeholder expanded to its feature
    count."""
    vocab = sp.get_piece_size()
    token_ids = dict(zip(PLACEHOLDERS, range(vocab, vocab + 3), strict=True))
    counts = {"<image>": processor.image_seq_length, "<video>": processor.image_seq_length}
    counts["<audio>"] = processor.num_speech_query_tokens  # one chunk: each audio here is 1 s
    ids = [sp.bos_id()]
    for piece in re.split("(<image>|<audio>|<video>)", prompt):
        ids += [token_ids[piece]] * counts[piece] if piece in token_ids else sp.encode(piece)
    return ids


def media_for(prompt: str) -> dict:
    n_image, n_audio, n_video = (prompt.count(token) for token in PLACEHOLDERS)
    media = {"sampling_rate": SR}
    if n_image:
        media["images"] = [color_image((40 * i, 0, 0)) for i in range(n_image)]
    if n_audio:
        media["audio"] = [sine(1.0, freq=300 + 100 * i) for i in range(n_audio)]
    if n_video:
        media["videos"] = [video_frames(8) for _ in range(n_video)]
    return media


def prompts() -> list[str]:
    """Prompts with 0-3 placeholders of each kind, in random places between random text (also none, a space or a
    newline around them, at the start and at the end)."""
    rng = random.Random(0)
    out = []
    for n_image, n_audio, n_video in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 1, 3), (3, 3, 3), (1, 2, 0),
                                      (0, 3, 2), (3, 0, 1), (2, 2, 2)]:  # fmt: skip
        tokens = ["<image>"] * n_image + ["<audio>"] * n_audio + ["<video>"] * n_video
        rng.shuffle(tokens)
        parts = ["USER:"]
        for token in tokens:
            parts += [rng.choice(["", " ", "\n", " " + rng.choice(WORDS) + " "]), token]
        parts += [rng.choice(["\n", " ", ""]), rng.choice(WORDS), " ASSISTANT:"]
        out.append("".join(parts))
    out += ["<image>\nWhat is this?", " leading space <audio>", "<video><video><image><audio>"]
    return out


# --- prompt ids ------------------------------------------------------------------------------------------------------
def test_converter_writes_the_original_preprocessing(converted):
    saved = json.loads((converted / "processor_config.json").read_text())
    assert saved["tokenize_text_pieces"] is True
    assert saved["speech_chunk_stride"] == 480_001
    assert saved["sound_chunk_padding"] == "last_sample"
    assert saved["max_sound_chunks"] == 20


def test_tiny_checkpoint_keeps_its_own_preprocessing():
    saved = json.loads((TINY_CHECKPOINT / "processor_config.json").read_text())
    processor = UniMoEProcessor.from_pretrained(TINY_CHECKPOINT)
    assert not processor.tokenize_text_pieces and saved.get("tokenize_text_pieces", False) is False
    assert processor.speech_chunk_stride is None and processor.feature_extractor.n_samples == 3 * SR
    assert processor.sound_chunk_padding == "zeros"
    assert processor.resampler == saved["resampler"] == tiny_processor().resampler == "soxr_hq"


def test_resampler_setting_is_kept_and_used(tmp_path):
    """`resampler="windowed_sinc"` survives a save and load and gives the windowed-sinc features; soxr's differ."""
    UniMoEProcessor.from_pretrained(TINY_CHECKPOINT, resampler="windowed_sinc").save_pretrained(tmp_path / "sinc")
    processor = UniMoEProcessor.from_pretrained(tmp_path / "sinc")
    assert processor.resampler == "windowed_sinc"
    wave = sine(2.0, sr=22050, freq=1200)
    path = write_audio(tmp_path / "tone.wav", wave, sr=22050, subtype="FLOAT")
    got = processor(text="<sound>", sound=path, return_tensors="np")["sound_features"]
    sinc = processor.sound_feature_extractor(windowed_sinc_resample(wave, 22050, SR))["sound_features"]
    soxr = processor.sound_feature_extractor(resample_audio(wave, 22050, SR))["sound_features"]
    np.testing.assert_allclose(got, sinc, atol=1e-4, rtol=0)
    assert np.abs(got - soxr).max() > 1e-2


@pytest.mark.parametrize("prompt", prompts())
def test_raw_text_ids_equal_the_per_piece_sentencepiece_reference(processor, sp, prompt):
    ids = processor(text=prompt, **media_for(prompt))["input_ids"][0]
    assert ids == reference_ids(sp, processor, prompt)


def test_per_piece_ids_differ_from_whole_prompt_ids(fast, sp):
    """The setting matters: tokenized whole, a converted LLaMA tokenizer drops the "▁" after each placeholder."""
    prompt = "USER: <image>\n<audio>\n<video>\nWhat is this? ASSISTANT:"
    whole = processor_from_config(converted_config(sp.get_piece_size()), fast.tokenizer, tokenize_text_pieces=False)(
        text=prompt, **media_for(prompt)
    )["input_ids"][0]
    per_piece = fast(text=prompt, **media_for(prompt))["input_ids"][0]
    assert per_piece == reference_ids(sp, fast, prompt)
    assert len(per_piece) == len(whole) + 3  # one dummy prefix per piece after a placeholder
    placeholders = set(range(sp.get_piece_size(), sp.get_piece_size() + 3))
    after = [
        i for i in range(1, len(per_piece)) if per_piece[i - 1] in placeholders and per_piece[i] not in placeholders
    ]
    assert [per_piece[i] for i in after] == [sp.piece_to_id("▁")] * 3
    assert [token for i, token in enumerate(per_piece) if i not in after] == whole


def test_chat_template_ids_equal_the_reference(processor, sp):
    for n in range(4):  # 0-3 placeholders of each kind in one user message
        content = [{"type": "image", "image": color_image()}] * n + [{"type": "audio", "audio": sine(1.0)}] * n
        content += [{"type": "video", "video": video_frames(8)}] * n + [{"type": "text", "text": "What is it? 12"}]
        chat = [{"role": "user", "content": content}]
        rendered = processor.apply_chat_template(chat, add_generation_prompt=True)
        assert rendered.count("<image>") == rendered.count("<audio>") == rendered.count("<video>") == n
        batch = processor.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=True, return_dict=True, processor_kwargs={"sampling_rate": SR}
        )
        assert batch["input_ids"][0] == reference_ids(sp, processor, rendered), n


def test_padded_batch_rows_equal_the_reference(processor, sp):
    texts = prompts()[:4]
    media = {"images": [], "audio": [], "videos": []}
    for text in texts:
        for key, items in media_for(text).items():
            if key != "sampling_rate":
                media[key] += items
    batch = processor(text=texts, padding=True, padding_side="left", sampling_rate=SR, return_tensors="pt", **media)
    width = batch["input_ids"].shape[1]
    for row, mask, text in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), texts, strict=True):
        expected = reference_ids(sp, processor, text)
        assert row == [processor.tokenizer.pad_token_id] * (width - len(expected)) + expected
        assert mask == [0] * (width - len(expected)) + [1] * len(expected)


def test_assistant_masks_cover_the_replies_with_per_piece_ids(fast, sp):
    chat = [
        {"role": "user", "content": [{"type": "image", "image": color_image()}, {"type": "text", "text": "Color?"}]},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": [{"type": "audio", "audio": sine(1.0)}, {"type": "text", "text": "And?"}]},
        {"role": "assistant", "content": "a tone"},
    ]
    batch = fast.apply_chat_template(
        chat,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        processor_kwargs={"sampling_rate": SR},
    )
    ids, mask = batch["input_ids"][0], batch["assistant_masks"][0]
    masked = fast.tokenizer.decode([token for token, keep in zip(ids, mask, strict=True) if keep])
    assert masked.replace(" ", "") == "red</s>atone</s>"
    assert not any(keep for token, keep in zip(ids, mask, strict=True) if token >= sp.get_piece_size())


def test_tiny_tokenizer_ids_unchanged():
    """The tiny model was trained on whole-prompt ids of its byte-level BPE: the processor gives exactly those."""
    processor = UniMoEProcessor.from_pretrained(TINY_CHECKPOINT)
    prompt = "A chat. USER: <image>\n<audio>\nWhat color is the shape? ASSISTANT:"
    ids = processor(text=prompt, images=color_image(), audio=sine(1.0), sampling_rate=SR)["input_ids"][0]
    expanded = prompt.replace("<image>", "<image>" * 36).replace("<audio>", "<audio>" * 8)
    assert ids == processor.tokenizer(expanded)["input_ids"]
    assert ids[:6] == [1, 39, 341, 20, 367, 32] and ids[-8:] == [311, 453, 368, 287, 381, 37, 300, 32]  # pinned


# --- audio -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def original_audio():
    """The tiny model's towers at 30 s chunks with the original's preprocessing (the tokenizer is irrelevant here)."""
    config = tiny_config(audio_chunk_seconds=30)
    return build_processor(config, build_tiny_processor_tokenizer(config), **ORIGINAL_PREPROCESSING)


def test_speech_of_65_seconds_equals_whisper_on_480001_sample_pieces(original_audio):
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(65 * SR) + sine(65.0, freq=330)).astype(np.float32)
    got = original_audio(text="<audio>", audio=wave, sampling_rate=SR, return_tensors="np")["input_features"]
    whisper = WhisperFeatureExtractor(feature_size=80, sampling_rate=SR)
    pieces = [wave[start : start + CHUNK_SAMPLES + 1] for start in range(0, len(wave), CHUNK_SAMPLES + 1)]
    expected = np.concatenate(
        [whisper(piece, sampling_rate=SR, return_tensors="np")["input_features"] for piece in pieces]
    )
    assert got.shape == expected.shape == (3, 80, 3000)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # cutting at 480,000 samples gives other features for chunks 2 and 3
    shifted = whisper(wave[CHUNK_SAMPLES : 2 * CHUNK_SAMPLES], sampling_rate=SR, return_tensors="np")["input_features"]
    assert np.abs(got[1] - shifted[0]).max() > 1e-3


@pytest.mark.parametrize(("samples", "chunks"), [(CHUNK_SAMPLES, 1), (CHUNK_SAMPLES + 1, 1), (CHUNK_SAMPLES + 2, 2)])
def test_speech_chunk_count_at_the_piece_boundary(original_audio, samples, chunks):
    batch = original_audio(text="<audio>", audio=np.full(samples, 0.1, np.float32), sampling_rate=SR)
    assert len(batch["input_features"]) == chunks
    assert (
        batch["input_ids"][0].count(original_audio.audio_token_id) == chunks * original_audio.num_speech_query_tokens
    )


@pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")
def test_sound_of_40_seconds_equals_the_repeat_padded_fbank(original_audio):
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    rng = np.random.default_rng(1)
    wave = (0.2 * rng.standard_normal(40 * SR) + sine(40.0, freq=700)).astype(np.float32)
    wave[-1] = 0.7  # the sample the last chunk repeats
    batch = original_audio(text="<sound>", sound=wave, sampling_rate=SR, return_tensors="np")
    filters = mel_filter_bank(
        num_frequency_bins=257, num_mel_filters=128, min_frequency=20, max_frequency=SR // 2, sampling_rate=SR,
        norm=None, mel_scale="kaldi", triangularize_in_mel_space=True,
    )  # fmt: skip

    def fbank(chunk):
        return spectrogram(
            chunk.astype(np.float64) * 2**15, window_function(400, "povey", periodic=False), frame_length=400,
            hop_length=160, fft_length=512, power=2.0, center=False, preemphasis=0.97, mel_filters=filters,
            log_mel="log", mel_floor=float(np.finfo(np.float32).eps), remove_dc_offset=True, dtype=np.float64,
        ).T  # fmt: skip

    last = np.full(CHUNK_SAMPLES, wave[-1], np.float32)
    last[: len(wave) - CHUNK_SAMPLES] = wave[CHUNK_SAMPLES:]
    assert batch["sound_features"].shape == (2, 2998, 128)
    np.testing.assert_allclose(batch["sound_features"][0], fbank(wave[:CHUNK_SAMPLES]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(batch["sound_features"][1], fbank(last), atol=1e-4, rtol=0)
    assert batch["sound_features_mask"].sum(-1).tolist() == [2998, 10 * SR // 160]
    zero_padded = np.zeros(CHUNK_SAMPLES, np.float32)
    zero_padded[: len(wave) - CHUNK_SAMPLES] = wave[CHUNK_SAMPLES:]
    assert np.abs(batch["sound_features"][1] - fbank(zero_padded)).max() > 1.0  # the padding is what changed


def test_long_sound_message_states_the_original_limit(original_audio):
    with pytest.raises(TooManyChunksError, match=r"at most 20 chunks \(600 s\).*original Uni-MoE keeps the first 20"):
        original_audio(text="<sound>", sound=np.zeros(21 * CHUNK_SAMPLES, np.float32), sampling_rate=SR)


def soxr_hq(wave, rate):
    """librosa.load(sr=16000)'s resampling: soxr "HQ" on float32, the length fixed to ceil(n * 16000 / rate)."""
    import soxr

    out = soxr.resample(np.asarray(wave, np.float32), rate, SR, quality="HQ")
    length = int(np.ceil(len(wave) * SR / rate))
    return np.pad(out, (0, max(0, length - len(out))))[:length]


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_equals_soxr_hq(rate):
    wave = (np.random.default_rng(rate).standard_normal(rate * 3) * 0.2).astype(np.float32)
    got = resample_audio(wave, rate, SR)
    assert got.dtype == np.float32 and len(got) == int(np.ceil(len(wave) * SR / rate))
    np.testing.assert_allclose(got, soxr_hq(wave, rate), atol=1e-6, rtol=0)


def test_stereo_file_at_44100_is_averaged_then_resampled_like_librosa(tmp_path):
    import soundfile

    rng = np.random.default_rng(2)
    stereo = (rng.standard_normal((44100 * 2, 2)) * 0.2).astype(np.float32)
    path = write_audio(tmp_path / "stereo.flac", stereo, sr=44100, format="FLAC", subtype="PCM_24")
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    np.testing.assert_allclose(load_audio(path), soxr_hq(data.mean(axis=1), rate), atol=1e-6, rtol=0)


def test_missing_soxr_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "soxr", None)
    with pytest.raises(ImportError, match=r"needs the `soxr` package.*pip install soxr"):
        resample_audio(np.ones(100, np.float32), 44100, SR)
    assert resample_audio(np.ones(100, np.float32), SR, SR).tolist() == [1.0] * 100  # 16 kHz needs no resampler


def test_synthetic_data_resamples_with_the_processor_function():
    from modeling_unimoe.training.synthetic_media import resample

    wave = np.random.default_rng(3).standard_normal(22050).astype(np.float32)
    np.testing.assert_array_equal(resample(wave, 22050), resample_audio(wave, 22050, SR))
