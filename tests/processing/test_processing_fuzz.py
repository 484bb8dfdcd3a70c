"""Property test: random mixes of text, placeholders and media (valid, broken and mismatched) through UniMoEProcessor.

Every drawn input carries the fault it was drawn with: None for a valid one, else the error class it must cause
(`MediaDecodeError` for a broken file or array, `PlaceholderCountError` for one medium too many or too few,
`NotEnoughFramesError` for a short video without `short_video="repeat"`, `PromptTooLongError` where truncation to
`max_length` may not fit the media). An example without faults must give a batch whose placeholder token counts equal
the feature vectors the tiny model produces for it (checked by running the model: its merge raises on any mismatch);
an example with faults must raise an instance of one of its faults' classes; nothing else, never a hang (hypothesis
deadline per example, pytest-timeout overall). Over a run, at least `MIN_VALID_SHARE` of the examples must be
valid batches, so a processor that refuses everything fails.
"""

import collections
import functools
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from modeling_unimoe import UniMoEForCausalLM
from modeling_unimoe.processing.media_unimoe import (
    MediaDecodeError,
    NotEnoughFramesError,
    PlaceholderCountError,
    PromptTooLongError,
    UniMoEProcessingError,
)
from tests.processing.processing_helpers import (
    sine,
    tiny_config,
    tiny_processor,
    truncated_copy,
    write_audio,
    write_garbage,
    write_image,
    write_video,
)


FUZZ_SETTINGS = dict(
    deadline=timedelta(seconds=30),
    derandomize=True,  # the same examples on every run (CI)
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MIN_VALID_SHARE = 0.25  # of the examples of one run (about 40% are valid batches with these strategies)
PLACEHOLDERS = {"image": "<image>", "video": "<video>", "audio": "<audio>", "sound": "<sound>"}
ARGUMENT = {"image": "images", "video": "videos", "audio": "audio", "sound": "sound"}
WORDS = [
    "USER:",
    "ASSISTANT:",
    "What",
    "color",
    "is",
    "the",
    "shape?",
    "\n",
    " ",
    "beeps",
    "</s>",
    "<s>",
    "<unk>",
    "é",
]


@functools.lru_cache(maxsize=1)
def media_files() -> dict[str, str]:
    """Valid and broken media files, written once per session."""
    folder = Path(tempfile.mkdtemp(prefix="unimoe-fuzz-"))
    files = {
        "png": write_image(folder / "ok.png", (0, 200, 0), (40, 30)),
        "jpg": write_image(folder / "ok.jpg", (10, 20, 250), (33, 50)),
        "wav": write_audio(folder / "ok.wav", np.stack([sine(1.0, 22050), sine(1.0, 22050, 300)], 1), 22050),
        "flac": write_audio(folder / "ok.flac", sine(0.5, 8000), 8000, format="FLAC"),
        "empty_wav": write_audio(folder / "empty.wav", np.zeros(0, np.float32)),
        "mp4": write_video(folder / "ok.mp4", num_frames=12),
        "short_mp4": write_video(folder / "short.mp4", num_frames=4),
        "garbage": write_garbage(folder / "garbage.bin"),
        "bad_png": write_garbage(folder / "bad.png", header=b"\x89PNG\r\n\x1a\n"),
        "bad_wav": write_garbage(folder / "bad.wav", header=b"RIFF\x24\x00\x00\x00WAVEfmt "),
        "bad_mp4": write_garbage(folder / "bad.mp4", header=b"\x00\x00\x00\x18ftypmp42"),
        "missing": str(folder / "missing.png"),
        "directory": str(folder),
    }
    files["cut_png"] = truncated_copy(files["png"], folder / "cut.png", 0.4)
    files["cut_wav"] = truncated_copy(files["wav"], folder / "cut.wav", 0.02)
    files["cut_mp4"] = truncated_copy(files["mp4"], folder / "cut.mp4", 0.5)
    return files


@functools.lru_cache(maxsize=4)
def tiny_model(variant: str):
    torch.manual_seed(0)
    return UniMoEForCausalLM(tiny_config(variant)).eval()


def valid(strategy):
    return strategy.map(lambda value: (value, None))


def broken(strategy, fault=MediaDecodeError):
    return strategy.map(lambda value: (value, fault))


def file_item(names):
    return st.sampled_from(names).map(lambda name: media_files()[name])


def arrays(shape, dtype, low, high):
    return st.builds(
        lambda seed, sh: np.random.default_rng(seed).uniform(low, high, sh).astype(dtype),
        st.integers(0, 2**16),
        shape,
    )


def image_items():
    sizes, positive = st.integers(0, 48), st.integers(1, 48)
    good = valid(
        st.one_of(
            file_item(["png", "jpg"]),
            st.builds(lambda w, h: Image.new("RGB", (w, h), (1, 2, 3)), positive, positive),
            arrays(st.tuples(positive, positive, st.sampled_from([1, 3, 4])), np.uint8, 0, 255),
            arrays(st.tuples(st.sampled_from([1, 3]), positive, positive), np.float32, 0, 1),
        )
    )
    bad = broken(
        st.one_of(
            file_item(["bad_png", "cut_png", "garbage", "missing", "directory", "mp4"]),
            st.builds(lambda w, h: Image.new("RGB", (w, h)), sizes, st.just(0)),
            arrays(st.tuples(sizes, st.just(0), st.sampled_from([1, 3, 4])), np.uint8, 0, 255),
            arrays(st.tuples(sizes, sizes, st.sampled_from([2, 5])), np.uint8, 0, 255),
            arrays(st.tuples(st.sampled_from([1, 3]), sizes, sizes), np.float32, 1.01, 1.5),
            arrays(
                st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)), np.uint8, 0, 9
            ),
            st.sampled_from([None, 3, "not a file", b"\x00\x01"]),
        )
    )
    return st.one_of(good, good, bad)


def waveform_items():
    lengths, positive = st.integers(0, 32000), st.integers(1, 32000)
    good = valid(
        st.one_of(
            arrays(st.tuples(positive), np.float32, -1, 1),
            arrays(st.tuples(positive), np.int16, -30000, 30000),
            arrays(st.tuples(st.integers(1, 3), positive), np.float64, -1, 1),
            st.builds(
                lambda n, rate: {"array": np.ones(n, np.float32) * 0.1, "sampling_rate": rate},
                positive,
                st.sampled_from([8000, 16000, 44100]),
            ),
            st.just(sine(31.0)),  # two 30 s chunks
            st.lists(st.floats(-1, 1), min_size=1, max_size=50),
            file_item(["wav", "flac"]),
        )
    )
    bad = broken(
        st.one_of(
            arrays(st.tuples(st.just(0), st.integers(1, 12)), np.float32, -1, 1),
            arrays(st.tuples(st.integers(4, 12), st.integers(4, 32000)), np.float32, -1, 1),
            st.builds(lambda n: np.full(n, np.nan, np.float32), st.integers(1, 100)),
            st.builds(
                lambda n, rate: {"array": np.ones(n, np.float32), "sampling_rate": rate},
                lengths,
                st.sampled_from([12, 10**7, 16000.5, None]),
            ),
            st.just(np.zeros(0, np.float32)),
            file_item(["empty_wav", "bad_wav", "cut_wav", "garbage", "missing", "mp4", "png"]),
            st.sampled_from([None, "no such audio", 7, [[0.1, 0.2], [0.3]]]),
        )
    )
    return st.one_of(good, good, bad)


def video_items():
    frame = arrays(st.tuples(st.integers(1, 24), st.integers(1, 24), st.just(3)), np.uint8, 0, 255)
    full, short = st.integers(8, 12), st.integers(1, 7)  # the tiny model samples 8 frames
    good = st.one_of(
        valid(st.one_of(file_item(["mp4"]), st.lists(frame, min_size=8, max_size=12))),
        valid(arrays(st.tuples(full, st.just(16), st.just(16), st.just(3)), np.uint8, 0, 255)),
        broken(  # valid with short_video="repeat"
            st.one_of(
                file_item(["short_mp4"]),
                st.lists(frame, min_size=1, max_size=7),
                arrays(st.tuples(short, st.just(16), st.just(16), st.just(3)), np.uint8, 0, 255),
            ),
            NotEnoughFramesError,
        ),
    )
    bad = broken(
        st.one_of(
            file_item(["bad_mp4", "cut_mp4", "garbage", "wav", "missing"]),
            st.just([]),
            arrays(st.tuples(st.integers(1, 3), st.integers(1, 3)), np.uint8, 0, 255),
            st.sampled_from([None, 5]),
        )
    )
    return st.one_of(good, good, bad)


ITEMS = {"image": image_items(), "video": video_items(), "audio": waveform_items(), "sound": waveform_items()}


def check_batch(processor, model, batch):
    """A valid batch: placeholder counts equal the features, and the model runs on it."""
    ids = batch["input_ids"]
    assert ids.dtype == torch.int64 and ids.shape == batch["attention_mask"].shape
    counts = {kind: int((ids == token_id).sum()) for kind, (_, token_id, _) in processor._placeholders.items()}
    features = {
        "image": ("pixel_values", processor.image_seq_length),
        "video": ("pixel_values_videos", processor.image_seq_length),
        "audio": (
            ("input_features", processor.num_speech_query_tokens)
            if processor.audio_paths.get("audio") == "speech"
            else ("sound_features", processor.num_sound_query_tokens)
        ),
        "sound": ("sound_features", processor.num_sound_query_tokens),
    }
    for kind, count in counts.items():
        name, per_item = features[kind]
        assert count == (len(batch[name]) * per_item if name in batch else 0), (kind, count)
    if "pixel_values" in batch:
        assert batch["pixel_values"].shape[1:] == (3, 48, 48)
    if "pixel_values_videos" in batch:
        assert batch["pixel_values_videos"].shape[1:] == (processor.num_video_frames, 3, 48, 48)
    if "sound_features" in batch:
        mask = batch["sound_features_mask"]
        assert mask.shape == batch["sound_features"].shape[:2] and (mask[:, 0] == 1).all()
    for name in ("pixel_values", "pixel_values_videos", "input_features", "sound_features"):
        if name in batch:
            assert torch.isfinite(batch[name]).all(), name
    with torch.no_grad():  # the model's merge raises if any count differs
        logits = model(**batch).logits
    assert logits.shape[:2] == ids.shape


def fuzz_once(variant, data) -> str:
    """One example: "valid" (a checked batch) or the name of the error class raised for one of its faults."""
    processor = tiny_processor(variant)
    kinds = list(processor._placeholders)
    num_texts = data.draw(st.integers(1, 3), label="num_texts")
    texts, totals, faults = [], dict.fromkeys(PLACEHOLDERS, 0), set()
    for _ in range(num_texts):
        pieces = data.draw(
            st.lists(st.sampled_from(WORDS + [PLACEHOLDERS[k] for k in kinds] * 2), max_size=8), label="pieces"
        )
        if data.draw(st.sampled_from([False] * 9 + [True]), label="stray sound token"):
            pieces.append("<sound>")  # a placeholder that a variant without a sound tower cannot fill
            if "sound" not in kinds:
                faults.add(PlaceholderCountError)
        for piece in pieces:
            for kind in kinds:
                totals[kind] += piece == PLACEHOLDERS[kind]
        texts.append(" ".join(pieces))
    options = data.draw(
        st.fixed_dictionaries(
            {},
            optional={
                "sampling_rate": st.sampled_from([16000, 44100, 8000]),
                "short_video": st.sampled_from(["error", "repeat", "repeat"]),
                "truncate_sound": st.booleans(),
                "truncation": st.just(True),
                "max_length": st.integers(4, 400),
            },
        ),
        label="options",
    )
    kwargs = {}
    for kind in PLACEHOLDERS:
        delta = data.draw(st.sampled_from([0] * 12 + [1, -1]), label=f"{kind} delta")
        count = max(0, totals[kind] + delta)
        if count != totals[kind]:
            faults.add(PlaceholderCountError)
        if count:
            items = data.draw(st.lists(ITEMS[kind], min_size=count, max_size=count), label=kind)
            kwargs[ARGUMENT[kind]] = [value for value, _ in items]
            for _, fault in items:
                if fault is NotEnoughFramesError and options.get("short_video") == "repeat":
                    continue
                if fault is not None:
                    faults.add(fault)
    if options.get("truncation") and "max_length" in options:
        faults.add(PromptTooLongError)  # the media may not fit max_length (truncation drops text only)
    text = texts[0] if num_texts == 1 and data.draw(st.booleans(), label="plain str") else texts
    try:
        batch = processor(text=text, padding=True, return_tensors="pt", **kwargs, **options)
    except UniMoEProcessingError as error:
        if not faults:
            raise AssertionError(f"an input without faults was refused: {type(error).__name__}: {error}") from error
        expected = tuple(faults)
        assert isinstance(error, expected), f"{type(error).__name__}: {error}; expected one of {expected}"
        assert str(error)
        event(f"outcome: {type(error).__name__}")  # shown by --hypothesis-show-statistics
        return type(error).__name__
    check_batch(processor, tiny_model(variant), batch)
    event(
        "outcome: valid batch with " + ", ".join(sorted(k for k in batch if k not in ("input_ids", "attention_mask")))
    )
    return "valid"


def run_fuzz(variant: str, max_examples: int) -> collections.Counter:
    outcomes = collections.Counter()

    @settings(max_examples=max_examples, **FUZZ_SETTINGS)
    @given(data=st.data())
    def one(data):
        outcomes[fuzz_once(variant, data)] += 1

    one()
    return outcomes


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("variant", "max_examples"),
    [("all", 60), ("sound_only", 60), pytest.param("all", 400, marks=pytest.mark.slow, id="all-400-slow")],
)
def test_fuzz_processor(variant, max_examples):
    outcomes = run_fuzz(variant, max_examples)
    share = outcomes["valid"] / sum(outcomes.values())
    assert share >= MIN_VALID_SHARE, f"only {share:.0%} of the examples gave a batch: {dict(outcomes)}"
    assert len(outcomes) >= 3, f"too few distinct outcomes to exercise the error paths: {dict(outcomes)}"
