"""The synthetic task suite (training/synthetic.py): determinism, split disjointness, answers correct by construction
(checked with independent numpy measurements of the media) in the standard and the shifted splits, the shifted ranges
beside the standard ones, the on-disk JSON layout and argument errors."""

import hashlib
import json
import re

import numpy as np
import pytest
import soundfile
from PIL import Image

from modeling_unimoe.training.synthetic import (
    ANSWERS,
    MODALITY,
    NUMBER_WORDS,
    PHRASINGS,
    QUESTIONS,
    SPLITS,
    TASKS,
    is_correct,
    load_split,
    make_example,
    normalize_answer,
    write_split,
)
from modeling_unimoe.training.synthetic_media import (
    COLORS,
    NUM_SPEAKERS,
    SAMPLING_RATE,
    SHARED_WITH_SHIFTED,
    SHIFTED,
    SOUND_RATES,
    SPEECH_DIR,
    SPEECH_SPEAKERS,
    STANDARD,
    WIDE,
    resample,
)


MEDIA_TASKS = [t for t in TASKS if t != "text_add"]


def media_bytes(example) -> bytes:
    if "image" in example:
        return example["image"].tobytes()
    if "video" in example:
        return b"".join(frame.tobytes() for frame in example["video"])
    if "audio" in example:
        wave, rate = example["audio"]
        return wave.tobytes() + str(rate).encode()
    return example["question"].encode()


def components(mask: np.ndarray, diagonal: bool = False) -> list[np.ndarray]:
    """Connected components of a boolean mask (4-connected; 8-connected with `diagonal`), each as an [n, 2] array of
    (row, col)."""
    steps = [(1, 0), (-1, 0), (0, 1), (0, -1)] + ([(1, 1), (1, -1), (-1, 1), (-1, -1)] if diagonal else [])
    seen, found = np.zeros_like(mask), []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start], stack, pixels = True, [start], []
        while stack:
            r, c = stack.pop()
            pixels.append((r, c))
            for rr, cc in ((r + dr, c + dc) for dr, dc in steps):
                if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        found.append(np.array(pixels))
    return found


def saturated(pixels: np.ndarray) -> np.ndarray:
    """The pixels of the shapes: strongly coloured, unlike any background (white, light grey, light tints)."""
    pixels = np.asarray(pixels).astype(int)
    return pixels.max(-1) - pixels.min(-1) > 90


def filled(pixels_of: np.ndarray) -> np.ndarray:
    """A component's bounding-box mask with its holes filled: an outline becomes the shape it outlines."""
    box = np.zeros(tuple(np.ptp(pixels_of, axis=0) + 3), bool)  # one free pixel all round
    box[tuple((pixels_of - pixels_of.min(axis=0) + 1).T)] = True
    solid = np.ones_like(box)
    for part in components(~box):
        if (part == 0).any():  # background reached from the border
            solid[tuple(part.T)] = False
    return solid[1:-1, 1:-1]


def centroid(frame: Image.Image) -> np.ndarray:
    rows, cols = np.nonzero(saturated(frame))
    return np.array([cols.mean(), rows.mean()])


def mono(wave: np.ndarray) -> np.ndarray:
    return wave.mean(axis=1) if wave.ndim == 2 else wave


def count_beeps(wave: np.ndarray) -> int:
    """Onsets in the 10 ms envelope, with hysteresis: a beep starts where the envelope rises above half the way from
    its noise floor (the quietest 10 ms) to its peak, after it fell below a quarter of the way."""
    envelope = np.convolve(np.abs(mono(wave)), np.ones(160) / 160, mode="valid")
    floor, span = envelope.min(), envelope.max() - envelope.min()
    count, on = 0, False
    for level in envelope:
        if not on and level > floor + span / 2:
            count, on = count + 1, True
        elif on and level < floor + span / 4:
            on = False
    return count


def dominant_hz(wave: np.ndarray, rate: int) -> float:
    wave = mono(wave)
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.argmax(spectrum) * rate / wave.size)


# ------------------------------------------------------------------------------------------------------- vocabularies


def test_tasks_questions_and_answer_vocabularies():
    assert set(ANSWERS) == set(QUESTIONS) == set(TASKS) and len(TASKS) == 8
    assert ANSWERS["image_color"] == ("red", "green", "blue", "yellow")
    assert ANSWERS["image_shape"] == ("circle", "square", "triangle")
    assert ANSWERS["image_count"] == ("one", "two", "three")
    assert ANSWERS["video_direction"] == ("left", "right", "up", "down")
    assert ANSWERS["sound_beeps"] == ("one", "two", "three", "four")
    assert ANSWERS["sound_pitch"] == ("high", "low")
    assert ANSWERS["speech_digit"] == ANSWERS["text_add"] == NUMBER_WORDS
    for task in TASKS:
        for answer in ANSWERS[task]:
            assert re.fullmatch("[a-z]+", answer) and normalize_answer(answer) == answer
        answers = [make_example(task, "validation", i)["answer"] for i in range(2 * len(ANSWERS[task]))]
        assert answers == 2 * list(ANSWERS[task])  # every answer, balanced


@pytest.mark.parametrize("task", TASKS)
def test_wide_splits_word_questions_several_ways_and_the_others_one(task):
    from modeling_unimoe.processing.text_unimoe import audio_kind_for_question

    def template(question):  # text_add's wordings carry their numbers
        return re.sub(r"\b\d\b", "{n}", question)

    wordings = {template(q.format(a=0, b=0)) for q in (QUESTIONS[task], *PHRASINGS[task])}
    assert len(wordings) == 4
    wide = [make_example(task, "train", i, distribution="wide") for i in range(40)]
    asked = {template(example["question"]) for example in wide}
    assert asked == wordings  # every wording, and no other
    for split in ("train", "shifted"):
        for example in (make_example(task, split, i) for i in range(8)):
            assert template(example["question"]) == template(QUESTIONS[task].format(a=0, b=0))
    for example in (make_example(task, "shifted", i, distribution="wide") for i in range(8)):
        assert template(example["question"]) == template(QUESTIONS[task].format(a=0, b=0))
    if MODALITY[task] in ("sound", "speech"):  # the processor's audio-kind rule reads every wording right
        assert {audio_kind_for_question(q) for q in (QUESTIONS[task], *PHRASINGS[task])} == {MODALITY[task]}
    if task == "text_add":
        for example in wide:
            a, b = map(int, re.findall(r"\d", example["question"]))
            assert NUMBER_WORDS[a + b] == example["answer"]


def test_normalize_answer_and_exact_match():
    assert normalize_answer("  Red. ") == "red"
    assert normalize_answer("THREE!") == "three"
    assert normalize_answer("7") == "seven"
    assert normalize_answer("left,  right") == "left right"
    assert normalize_answer("") == ""
    assert is_correct("Blue.", "blue") and is_correct("4", "four")
    assert not is_correct("blue green", "blue") and not is_correct("", "one")


# -------------------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("task", TASKS)
def test_same_arguments_same_example(task):
    for index in (0, 7):
        first, second = make_example(task, "train", index, seed=3), make_example(task, "train", index, seed=3)
        assert media_bytes(first) == media_bytes(second)
        assert {k: v for k, v in first.items() if k not in ("image", "video", "audio")} == {
            k: v for k, v in second.items() if k not in ("image", "video", "audio")
        }
    if task != "text_add":
        assert media_bytes(make_example(task, "train", 0, seed=3)) != media_bytes(
            make_example(task, "train", 0, seed=4)
        )


def test_write_split_is_byte_identical(tmp_path):
    def digest(folder):
        return {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    write_split(tmp_path / "a", "test", n_per_task=2, seed=5)
    write_split(tmp_path / "b", "test", n_per_task=2, seed=5)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert len(digest(tmp_path / "a")) == 1 + 2 * len(MEDIA_TASKS)


# ------------------------------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("task", MEDIA_TASKS)
def test_no_media_shared_between_splits(task):
    n = 40 if task == "speech_digit" else 60
    seen = {split: {media_bytes(make_example(task, split, i)) for i in range(n)} for split in SPLITS}
    assert all(len(media) == n for media in seen.values())
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["validation"]
    assert not seen["validation"] & seen["test"]


def test_speech_speakers_split_and_assets():
    assert SPEECH_SPEAKERS["shifted"] == SPEECH_SPEAKERS["test"]
    groups = [set(SPEECH_SPEAKERS[split]) for split in ("train", "validation", "test")]
    assert set().union(*groups) == set(range(NUM_SPEAKERS)) and sum(map(len, groups)) == NUM_SPEAKERS
    manifest = json.loads((SPEECH_DIR / "speakers.json").read_text())
    assert manifest["sampling_rate"] == SAMPLING_RATE
    table = {entry["speaker"]: entry for entry in manifest["speakers"]}
    train = {(table[k]["voice"], table[k]["speed"], table[k]["pitch"]) for k in SPEECH_SPEAKERS["train"]}
    train_settings = {(table[k]["voice"], table[k]["speed"]) for k in SPEECH_SPEAKERS["train"]}
    for split in ("validation", "test"):
        for k in SPEECH_SPEAKERS[split]:
            assert table[k]["split"] == split
            assert (table[k]["voice"], table[k]["speed"], table[k]["pitch"]) not in train
            assert (table[k]["voice"], table[k]["speed"]) not in train_settings
            assert table[k]["voice"] not in {table[j]["voice"] for j in SPEECH_SPEAKERS["train"]}
    for split in SPLITS:  # examples only use their split's speakers
        assert {make_example("speech_digit", split, i)["speaker"] for i in range(30)} <= set(SPEECH_SPEAKERS[split])
    files = sorted(SPEECH_DIR.glob("*.flac"))
    assert len(files) == 10 * NUM_SPEAKERS
    assert sum(p.stat().st_size for p in SPEECH_DIR.iterdir()) < 6_000_000
    for path in files[::17]:
        info = soundfile.info(path)
        assert info.samplerate == SAMPLING_RATE and info.channels == 1 and 0.2 < info.duration < 1.5


# ---------------------------------------------------------------------------------- answers correct by construction


def test_images_match_their_answers():
    fill = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
    palette = {name: np.array(rgb) for name, rgb in COLORS.items()}
    for task in ("image_color", "image_shape", "image_count"):
        for index in range(45):
            example = make_example(task, "test", index)
            pixels = np.asarray(example["image"]).astype(int)
            assert pixels.shape == (64, 64, 3)
            mask = (pixels != 255).any(-1)
            shapes = components(mask)
            colors = {
                min(palette, key=lambda c: np.abs(pixels[r, c_] - palette[c]).sum())
                for r, c_ in zip(*np.nonzero(mask), strict=True)
            }
            kinds = set()
            for pixels_of in shapes:
                height, width = np.ptp(pixels_of, axis=0) + 1
                assert 14 <= max(height, width) <= 28 and abs(height - width) <= 1
                ratio = len(pixels_of) / (height * width)
                kinds.add(min(fill, key=lambda k: abs(fill[k] - ratio)))
            assert len(colors) == 1 and len(kinds) == 1 and 1 <= len(shapes) <= 3
            measured = {
                "image_color": colors.pop(),
                "image_shape": kinds.pop(),
                "image_count": NUMBER_WORDS[len(shapes)],
            }
            assert measured[task] == example["answer"], (task, index)


def test_image_size_is_configurable():
    for size in (32, 96):
        assert make_example("image_count", "train", 2, image_size=size)["image"].size == (size, size)
        assert make_example("video_direction", "train", 2, image_size=size)["video"][0].size == (size, size)


def test_videos_move_the_way_they_say():
    unit = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for index in range(40):
        example = make_example("video_direction", "train", index)
        frames = example["video"]
        assert len(frames) == 8 and all(frame.size == (64, 64) for frame in frames)
        path = np.array([centroid(frame) for frame in frames])
        steps = np.diff(path, axis=0) @ np.array(unit[example["answer"]])
        assert (steps > 2).all()  # clearly moving every frame, in the stated direction
        assert np.abs(path - path[0]).max(axis=0).min() < 1e-6  # and not across it
        assert steps.sum() >= 24  # 40-55 % of the width in all


@pytest.mark.parametrize("rate", SOUND_RATES)
def test_beep_counts_from_the_envelope(rate):
    for index in range(12):
        example = make_example("sound_beeps", "train", index, sampling_rate=rate)
        wave, got_rate = example["audio"]
        assert got_rate == rate and wave.dtype == np.float32 and 2.0 <= wave.size / rate <= 3.0
        assert example["audio_kind"] == "sound"
        assert NUMBER_WORDS[count_beeps(resample(wave, rate))] == example["answer"], index


def test_tone_pitch_from_the_spectrum():
    for index in range(40):
        example = make_example("sound_pitch", "test", index)
        wave, rate = example["audio"]
        assert abs(wave.size / rate - 1.0) < 0.01 and rate in SOUND_RATES
        hz = dominant_hz(resample(wave, rate), SAMPLING_RATE)
        assert hz >= 1490 if example["answer"] == "high" else hz <= 410, (index, hz)


def test_speech_examples():
    rates = set()
    for index in range(20):
        example = make_example("speech_digit", "train", index)
        wave, rate = example["audio"]
        rates.add(rate)
        assert example["audio_kind"] == "speech" and wave.dtype == np.float32
        assert 0.25 <= wave.size / rate <= 2.0 and 0.25 <= np.abs(wave).max() <= 1.0
    assert rates == set(SOUND_RATES)
    wave, rate = make_example("speech_digit", "test", 3, sampling_rate=16000)["audio"]
    assert rate == 16000


def test_sums():
    for index in range(30):
        example = make_example("text_add", "train", index)
        a, b = map(int, re.fullmatch(r"What is (\d) plus (\d)\?", example["question"]).groups())
        assert a + b <= 9 and NUMBER_WORDS[a + b] == example["answer"]
        assert "image" not in example and "audio" not in example and "video" not in example


# ------------------------------------------------------------------------------------------------------ shifted split


def test_shifted_ranges_lie_beside_the_standard_ones():
    """Every shifted range of a parameter the standard splits also draw lies outside the standard range."""
    shared = [key for key in STANDARD if key in SHIFTED and key != "rates"]
    assert len(shared) == 18
    for key in shared:
        for low, high in SHIFTED[key]:
            assert all(high < s_low or s_high < low for s_low, s_high in STANDARD[key]), key
    assert not set(SHIFTED["rates"]) & set(STANDARD["rates"])


TOP_IS_SHIFTED = ("amplitude", "noise", "speech_gain", "speech_noise")  # the loudest sounds, the strongest noise


def test_wide_ranges_lie_beside_the_shifted_ones_where_a_model_must_generalise():
    """WIDE draws the kinds of variation SHIFTED shows; its ranges overlap SHIFTED's only for what the processor
    normalises and for the looks of canvas and shapes (`SHARED_WITH_SHIFTED`), and lie on both sides of SHIFTED's
    elsewhere (the shifted split interpolates), except above its loudest sounds and strongest noise."""
    assert set(WIDE) == set(SHIFTED)
    for key in set(WIDE) - set(SHARED_WITH_SHIFTED) - {"rates", "length_first"}:
        for low, high in SHIFTED[key]:
            assert all(high < w_low or w_high < low for w_low, w_high in WIDE[key]), key
        assert min(low for low, _ in WIDE[key]) < min(low for low, _ in SHIFTED[key]), key
        if key not in TOP_IS_SHIFTED:
            assert max(high for _, high in WIDE[key]) > max(high for _, high in SHIFTED[key]), key
    assert not set(WIDE["rates"]) & set(SHIFTED["rates"])
    assert WIDE["background"] == SHIFTED["background"] and WIDE["stereo"] == SHIFTED["stereo"]
    for key in set(SHARED_WITH_SHIFTED) - {"background", "stereo"}:  # intervals that overlap
        assert any(low < w_high and w_low < high for low, high in SHIFTED[key] for w_low, w_high in WIDE[key]), key


def test_wide_beep_sounds_are_not_longer_for_more_beeps():
    """WIDE draws a beep sound's length before its beeps (`length_first`), so a long sound holds any count alike and a
    model cannot count by length; SHIFTED draws it after them, among the lengths that hold the beeps, so its long
    sounds hold more beeps than one."""
    assert WIDE["length_first"] and not SHIFTED["length_first"]
    for split, distribution in (("train", "wide"), ("shifted", "standard")):
        long_ones = []
        for index in range(400):  # the answer is index % 4: 100 sounds of each count
            example = make_example("sound_beeps", split, index, distribution=distribution)
            wave, rate = example["audio"]
            if len(wave) / rate > 6:
                long_ones.append(example["answer"])
        shares = {count: long_ones.count(count) / len(long_ones) for count in NUMBER_WORDS[1:5]}
        if distribution == "wide":
            assert all(0.15 <= share <= 0.35 for share in shares.values()), shares
        else:
            assert shares["one"] < 0.15 and shares["four"] > 0.3, shares


# (split, distribution, ranges) of the drawn media
DRAWN = [("shifted", "standard", SHIFTED), ("train", "wide", WIDE)]


@pytest.mark.parametrize(("split", "distribution", "ranges"), DRAWN, ids=["shifted", "wide"])
def test_drawn_images_match_their_answers(split, distribution, ranges):
    fill = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
    palette = {name: np.array(rgb) for name, rgb in COLORS.items()}
    sizes, outlined = set(), 0
    for task in ("image_color", "image_shape", "image_count"):
        for index in range(30):
            example = make_example(task, split, index, distribution=distribution)
            pixels = np.asarray(example["image"]).astype(int)
            short = min(pixels.shape[:2])
            sizes.add(pixels.shape[:2])
            assert any(low <= short <= high for low, high in ranges["canvas"]), pixels.shape
            mask = saturated(pixels)
            shapes = components(mask, diagonal=True)
            colors = {
                min(palette, key=lambda c: np.abs(pixels[r, c_] - palette[c]).sum())
                for r, c_ in zip(*np.nonzero(mask), strict=True)
            }
            kinds = set()
            for pixels_of in shapes:
                solid = filled(pixels_of)
                outlined += solid.sum() > len(pixels_of) + 2
                height, width = solid.shape
                smallest = min(max(4, low * short) for low, _ in ranges["shape"])
                largest = max(high for _, high in ranges["shape"]) * short
                assert abs(height - width) <= 1 and smallest - 1 <= height <= largest + 1, (task, index)
                kinds.add(min(fill, key=lambda k: abs(fill[k] - solid.mean())))
            assert len(colors) == 1 and len(kinds) == 1 and 1 <= len(shapes) <= 3, (task, index)
            measured = {
                "image_color": colors.pop(),
                "image_shape": kinds.pop(),
                "image_count": NUMBER_WORDS[len(shapes)],
            }
            assert measured[task] == example["answer"], (task, index)
    assert len(sizes) >= 85 and outlined >= 10  # canvases of many sizes; outlines as well as fills


@pytest.mark.parametrize(("split", "distribution", "ranges"), DRAWN, ids=["shifted", "wide"])
def test_drawn_videos_move_the_way_they_say(split, distribution, ranges):
    unit = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    least_travel = 0.9 * min(low for low, _ in ranges["travel"])
    for index in range(24):
        example = make_example("video_direction", split, index, distribution=distribution)
        frames = example["video"]
        short = min(frames[0].size)
        assert any(low <= len(frames) <= high for low, high in ranges["frames"])
        assert len({frame.size for frame in frames}) == 1
        path = np.array([centroid(frame) for frame in frames])
        steps = np.diff(path, axis=0) @ np.array(unit[example["answer"]])
        assert (steps >= -0.5).all() and steps.sum() >= least_travel * short, index  # the stated way, all along
        across = 1 if example["answer"] in ("left", "right") else 0
        assert np.ptp(path[:, across]) < 1.0  # and not across it


@pytest.mark.parametrize(("split", "distribution", "ranges"), DRAWN, ids=["shifted", "wide"])
def test_drawn_sounds_from_their_waves(split, distribution, ranges):
    channels = set()
    for index in range(24):
        example = make_example("sound_beeps", split, index, distribution=distribution)
        wave, rate = example["audio"]
        channels.add(wave.ndim)
        assert rate in ranges["rates"] and wave.dtype == np.float32
        assert any(low <= len(wave) / rate <= high + 0.01 for low, high in ranges["seconds"])
        assert NUMBER_WORDS[count_beeps(resample(mono(wave), rate))] == example["answer"], index
    for index in range(20):
        example = make_example("sound_pitch", split, index, distribution=distribution)
        wave, rate = example["audio"]
        hz = dominant_hz(resample(mono(wave), rate), SAMPLING_RATE)
        high_least = 0.97 * min(low for low, _ in ranges["high_hz"])
        low_most = 1.03 * max(high for _, high in ranges["low_hz"])
        assert hz >= high_least if example["answer"] == "high" else hz <= low_most, (index, hz)
    for index in range(10):
        example = make_example("speech_digit", split, index, distribution=distribution)
        speakers = SPEECH_SPEAKERS["test" if split == "shifted" else split]
        assert example["speaker"] in speakers and example["audio"][1] in ranges["rates"]
    assert channels == {1, 2}  # mono and stereo


def test_resample_keeps_frequency_and_level():
    for orig in (8000, 22050, 44100):
        t = np.arange(orig) / orig
        wave = 0.5 * np.sin(2 * np.pi * 1000 * t)
        out = resample(wave, orig)
        assert out.size == SAMPLING_RATE and out.dtype == np.float32
        assert abs(dominant_hz(out, SAMPLING_RATE) - 1000) < 2
        assert abs(np.abs(out[1000:-1000]).max() - 0.5) < 0.01
    assert resample(np.ones(5), 16000).tolist() == [1.0] * 5


# ------------------------------------------------------------------------------------------------------ files on disk


def test_json_layout_and_load_split_round_trip(tmp_path):
    import av

    path = write_split(tmp_path, "validation", n_per_task=2, seed=1)
    assert path == tmp_path / "validation.json"
    records = json.loads(path.read_text())
    assert [r["id"] for r in records] == [f"validation-{t}-{i:05d}" for t in TASKS for i in range(2)]
    placeholder = {"image": "<image>\n", "video": "<video>\n", "voice": "<audio>\n"}
    for record in records:
        media = [k for k in placeholder if k in record]
        human, gpt = record["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        example = make_example(record["task"], "validation", int(record["id"][-5:]), seed=1)
        assert gpt["value"] == example["answer"]
        if record["task"] == "text_add":
            assert media == [] and human["value"] == example["question"] and "audio_kind" not in record
            continue
        (key,) = media
        assert human["value"] == placeholder[key] + example["question"]
        assert (tmp_path / record[key]).is_file() and not record[key].startswith("/")
        assert record.get("audio_kind") == (example["audio_kind"] if key == "voice" else None)
        if key == "image":
            assert np.array_equal(np.asarray(Image.open(tmp_path / record[key])), np.asarray(example["image"]))
        elif key == "video":  # lossless mp4: the exact frames come back
            with av.open(str(tmp_path / record[key])) as container:
                decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
            assert len(decoded) == 8
            assert all(np.array_equal(d, np.asarray(f)) for d, f in zip(decoded, example["video"], strict=True))
        else:
            wave, rate = soundfile.read(tmp_path / record[key], dtype="float32")
            assert rate == example["audio"][1] and np.abs(wave - example["audio"][0]).max() <= 1 / 32767

    dataset = load_split(tmp_path, "validation")
    assert len(dataset) == len(records) == 2 * len(TASKS)
    assert set(dataset.column_names) == {
        "id",
        "task",
        "image",
        "video",
        "voice",
        "audio_kind",
        "conversations",
        "question",
        "answer",
    }
    for row, record in zip(dataset, records, strict=True):
        assert row["id"] == record["id"] and row["conversations"] == record["conversations"]
        assert row["answer"] == record["conversations"][1]["value"] and "<" not in row["question"]
        for key in ("image", "video", "voice"):
            assert row[key] == (str(tmp_path / record[key]) if key in record else None)
    relative = load_split(path, absolute_paths=False)
    assert relative["image"][0] == records[0]["image"]


def test_files_load_with_the_processor_loaders(tmp_path):
    loaders = pytest.importorskip("modeling_unimoe.processing.media_unimoe")
    write_split(tmp_path, "train", n_per_task=1, tasks=["video_direction", "sound_beeps"])
    dataset = load_split(tmp_path, "train")
    frames = loaders.load_video(dataset[0]["video"], num_frames=8)
    expected = make_example("video_direction", "train", 0)["video"]
    assert all(
        np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b)) for a, b in zip(frames, expected, strict=True)
    )
    wave = loaders.load_audio(dataset[1]["voice"])
    assert NUMBER_WORDS[count_beeps(wave)] == dataset[1]["answer"]


# ---------------------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: make_example("image_colour", "train", 0),
            "Unknown task 'image_colour'; expected one of 'image_color'",
        ),
        (lambda: make_example("image_color", "dev", 0), "Unknown split 'dev'; expected one of 'train', 'validation'"),
        (lambda: make_example("image_color", "train", -1), "index must be an integer >= 0, got -1"),
        (lambda: make_example("image_color", "train", 1.5), "index must be an integer >= 0, got 1.5"),
        (lambda: make_example("image_color", "train", 0, seed=-2), "seed must be an integer >= 0, got -2"),
        (lambda: make_example("image_color", "train", 0, image_size=16), "image_size must be an integer >= 32"),
        (lambda: make_example("sound_beeps", "train", 0, sampling_rate=100), "sampling_rate must be 8000..192000"),
        (lambda: write_split("unused", "train", 0), "n_per_task must be an integer >= 1, got 0"),
        (lambda: write_split("unused", "tests", 1), "Unknown split 'tests'"),
        (lambda: write_split("unused", "train", 1, tasks=["speech"]), "Unknown task 'speech'"),
        (lambda: write_split("unused", "train", 1, tasks=[]), "tasks is empty"),
        (lambda: load_split("no/such/folder.json"), "No split JSON at"),
        (lambda: resample(np.zeros((2, 3)), 8000), "1-D waveform"),
    ],
)
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_load_split_folder_needs_a_split(tmp_path):
    with pytest.raises(ValueError, match="pass split="):
        load_split(tmp_path)
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        load_split(tmp_path, "dev")


def test_write_split_checks_everything_before_writing(tmp_path):
    for kwargs in ({"seed": -1}, {"image_size": 8}, {"sampling_rate": 4000}):
        with pytest.raises(ValueError, match="must be"):
            write_split(tmp_path / "out", "train", 1, **kwargs)
    assert not (tmp_path / "out").exists()
    write_split(tmp_path / "text", "test", 3, tasks="text_add")
    assert sorted(p.name for p in (tmp_path / "text").iterdir()) == ["test.json"]
    assert load_split(tmp_path / "text", "test")["answer"] == ["zero", "one", "two"]
