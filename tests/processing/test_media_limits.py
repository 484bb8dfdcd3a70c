"""Bounded media: duration, frame count and pixel count are read from a file's header and checked before anything is
decoded, with the limit in the error; only what will be used is decoded.

The case from the field: a 1-hour silent 48 kHz stereo FLAC is 673 KB on disk and 1.4 GB as float32 samples. It is
refused on both audio paths without reading one sample (counted by wrapping soundfile's reader) and with a few MB of
Python / numpy allocations (tracemalloc). Its time and peak RSS against a full decode: `python -m
benchmarks.media_limits` (tests assert no time).
"""

import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from modeling_unimoe.processing.feature_extraction_unimoe import CHUNK_SAMPLES, AudioLimit
from modeling_unimoe.processing.media_unimoe import (
    MAX_IMAGE_PIXELS,
    MediaTooLargeError,
    PromptTooLongError,
    TooManyChunksError,
    load_audio,
    load_image,
)
from modeling_unimoe.processing.processing_unimoe import UniMoEProcessor
from tests.helpers import TINY_CHECKPOINT
from tests.processing.processing_helpers import (
    SR,
    color_image,
    sine,
    tiny_processor,
    write_audio,
    write_m4a,
    write_video,
)


HOUR_FRAMES = 3600 * 48_000


def write_silent_flac(path, seconds: int, rate: int = 48_000, channels: int = 2) -> str:
    """Silence written a minute at a time (a few MB of memory whatever the length)."""
    import soundfile

    block = np.zeros((rate * 60, channels), np.int16)
    with soundfile.SoundFile(str(path), "w", samplerate=rate, channels=channels, format="FLAC") as out:
        for start in range(0, seconds, 60):
            out.write(block[: rate * min(60, seconds - start)])
    return str(path)


@pytest.fixture(scope="module")
def hour_flac(tmp_path_factory):
    path = write_silent_flac(tmp_path_factory.mktemp("hour") / "silence.flac", 3600)
    import soundfile

    assert soundfile.info(path).frames == HOUR_FRAMES
    return path


@pytest.fixture
def frames_read(monkeypatch):
    """The frames soundfile decodes, counted on every SoundFile.read and soundfile.read call."""
    import soundfile

    counted = []
    read, plain_read = soundfile.SoundFile.read, soundfile.read

    def counting_read(self, frames=-1, *args, **kwargs):
        data = read(self, frames, *args, **kwargs)
        counted.append(len(data))
        return data

    def counting_plain_read(*args, **kwargs):
        data, rate = plain_read(*args, **kwargs)
        counted.append(len(data))
        return data, rate

    monkeypatch.setattr(soundfile.SoundFile, "read", counting_read)
    monkeypatch.setattr(soundfile, "read", counting_plain_read)
    return counted


def allocated_peak(call):
    """(the exception `call` raised, peak bytes traced while it ran)."""
    tracemalloc.start()
    try:
        call()
    except Exception as error:
        caught = error
    else:
        caught = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return caught, peak


@pytest.mark.parametrize("shape", ["released", "checkpoint"])
def test_hour_long_flac_is_refused_before_decoding_on_both_audio_paths(hour_flac, frames_read, shape):
    """The released models' shape (30 s chunks of 50 tokens, context 4096: 40.5 min of speech at most) and the tiny
    checkpoint (3 s chunks of 8 tokens, context 2048: 12.8 min)."""
    if shape == "released":
        processor = tiny_processor(num_speech_query_tokens=50, context_length=4096)
    else:
        processor = UniMoEProcessor.from_pretrained(TINY_CHECKPOINT)
    chunk = processor.feature_extractor.n_samples / SR
    error, peak = allocated_peak(lambda: processor(text="<sound>", sound=hour_flac))
    assert isinstance(error, TooManyChunksError), error
    most = processor.max_sound_chunks * chunk
    assert "lasts 3600.0 s" in str(error) and f"at most {processor.max_sound_chunks} chunks ({most:g} s)" in str(error)
    assert frames_read == [] and peak < 20 * 2**20, (frames_read, peak)

    error, peak = allocated_peak(lambda: processor(text="<audio>", audio=hour_flac))
    assert isinstance(error, PromptTooLongError), error
    holds = processor.context_length // processor.num_speech_query_tokens
    assert f"context of {processor.context_length} tokens, which holds at most {holds} chunks" in str(error)
    assert "lasts 3600.0 s" in str(error)
    assert frames_read == [] and peak < 20 * 2**20, (frames_read, peak)


def test_truncated_sound_decodes_only_the_part_it_keeps(hour_flac, frames_read):
    processor = tiny_processor(max_sound_chunks=2)
    batch = processor(text="<sound>", sound=hour_flac, truncate_sound=True, return_tensors="np")
    assert batch["sound_features"].shape[0] == 2
    kept = 2 * CHUNK_SAMPLES * 3  # 48 kHz frames of two 30 s chunks
    assert kept < sum(frames_read) <= kept + 48_000 + 1  # plus the resampler's second of look-ahead


def test_the_kept_part_equals_that_part_of_the_whole_decoded_file(tmp_path):
    noise = np.random.default_rng(0).standard_normal((70 * 44_100, 2)).astype(np.float32) * 0.1
    path = write_audio(tmp_path / "noise.flac", noise, sr=44_100, format="FLAC")
    whole = load_audio(path)
    cut = load_audio(path, limit=AudioLimit(CHUNK_SAMPLES, truncate=True))
    np.testing.assert_array_equal(cut, whole[:CHUNK_SAMPLES])


def test_the_length_is_counted_while_decoding_when_the_header_has_none(hour_flac, frames_read, monkeypatch):
    """A stream whose header gives no length (libsndfile's frame count of a pipe): decoding stops past the limit."""
    import soundfile

    monkeypatch.setattr(soundfile.SoundFile, "frames", property(lambda self: 2**63 - 1))
    processor = tiny_processor(max_sound_chunks=1)
    with pytest.raises(TooManyChunksError, match=r"lasts more than 31\.0 s, i\.e\. at least 2 chunks of 30 s"):
        processor(text="<sound>", sound=hour_flac)
    assert sum(frames_read) == CHUNK_SAMPLES * 3 + 48_000 + 1


def test_pyav_duration_is_checked_from_the_header(tmp_path, monkeypatch):
    """AAC in MP4 (soundfile cannot read it): PyAV's stream duration is checked before any frame is decoded."""
    import av

    path = write_m4a(tmp_path / "long.m4a", sine(40.0, freq=300))
    decoded = []
    real_open = av.open

    class Counting:
        def __init__(self, container):
            self.container = container

        def __getattr__(self, name):
            return getattr(self.container, name)

        def __enter__(self):
            self.container.__enter__()
            return self

        def __exit__(self, *args):
            return self.container.__exit__(*args)

        def decode(self, *args, **kwargs):
            for frame in self.container.decode(*args, **kwargs):
                decoded.append(frame)
                yield frame

    monkeypatch.setattr(av, "open", lambda *args, **kwargs: Counting(real_open(*args, **kwargs)))
    with pytest.raises(TooManyChunksError, match=r"sound 0 .*long\.m4a.* lasts 40\.\d s, i\.e\. 2 chunks of 30 s"):
        tiny_processor(max_sound_chunks=1)(text="<sound>", sound=path)
    assert decoded == []
    assert len(tiny_processor()(text="<sound>", sound=path)["sound_features"]) == 2 and decoded


def test_arrays_longer_than_the_limit_are_refused_before_resampling(monkeypatch):
    import soxr

    calls = []
    monkeypatch.setattr(soxr, "resample", lambda *args, **kwargs: calls.append(args) or args[0])
    processor = tiny_processor(max_sound_chunks=1)
    with pytest.raises(TooManyChunksError, match=r"lasts 60\.0 s, i\.e\. 2 chunks of 30 s"):
        processor(text="<sound>", sound=np.zeros(60 * 44_100, np.float32), sampling_rate=44_100)
    with pytest.raises(PromptTooLongError, match=r"audio 0 lasts 9000\.0 s"):
        processor(text="<audio>", audio=np.zeros(9000 * 8_000, np.int16), sampling_rate=8_000)
    assert calls == []


def png_header(width: int, height: int) -> bytes:
    """A PNG with a real header and no pixel data: decoding it would fail, reading its size does not."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(10_000, 10_000), (40_000, 40_000)])
def test_image_pixel_count_is_checked_before_loading(tmp_path, monkeypatch, width, height):
    """10,000 x 10,000 passes PIL's own bomb check (a warning) but not ours; 40,000 x 40,000 PIL refuses first."""
    from PIL import ImageFile

    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self) or None)
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(width, height))
    processor = tiny_processor()
    with pytest.raises(
        MediaTooLargeError, match=r"image 0 .*huge\.png.*too large|image 0 .*huge\.png.*pixels"
    ) as info:
        processor(text="<image>", images=str(path))
    if width * height <= 2 * 89_478_485:
        assert f"{width}x{height} = {width * height:,} pixels" in str(info.value)
        assert f"at most {MAX_IMAGE_PIXELS:,} pixels" in str(info.value) and "max_image_pixels" in str(info.value)
    assert loads == []


def test_image_limit_is_a_processor_setting(tmp_path):
    path = tmp_path / "small.png"
    color_image(size=(80, 60)).save(path)
    with pytest.raises(MediaTooLargeError, match=r"80x60 = 4,800 pixels .*at most 1,000 pixels"):
        tiny_processor(max_image_pixels=1000)(text="<image>", images=str(path))
    assert load_image(str(path), max_pixels=4800).size == (80, 60)
    assert load_image(str(path), max_pixels=None).size == (80, 60)


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])  # a frame count in the header / only a duration
def test_video_frames_and_pixels_are_checked_from_the_header(tmp_path, suffix):
    path = write_video(tmp_path / f"clip.{suffix}", num_frames=12)
    estimated = "about " if suffix == "mkv" else ""
    with pytest.raises(
        MediaTooLargeError, match=rf"video 0 .*has {estimated}12 frames \(from its header, before decoding"
    ):
        tiny_processor(max_video_frames=10)(text="<video>", videos=path)
    with pytest.raises(MediaTooLargeError, match=r"32x32 = 1,024 pixels \(read from its header"):
        tiny_processor(max_image_pixels=1000)(text="<video>", videos=path)
    assert tiny_processor(max_video_frames=12)(text="<video>", videos=path)["pixel_values_videos"].shape[1] == 8


def test_processor_limits_round_trip(tmp_path):
    processor = tiny_processor(max_image_pixels=123_456, max_video_frames=789)
    processor.save_pretrained(tmp_path)
    loaded = UniMoEProcessor.from_pretrained(tmp_path)
    assert (loaded.max_image_pixels, loaded.max_video_frames) == (123_456, 789)
