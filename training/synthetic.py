# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""A deterministic synthetic multimodal task suite: seeded generators, no downloads, one-word lowercase answers.

| task              | media                                        | question                          | answers         |
| ----------------- | -------------------------------------------- | --------------------------------- | --------------- |
| `image_color`     | 1-3 same shapes, one colour, white ground    | What color is the shape?          | red ... yellow  |
| `image_shape`     | (the same image distribution)                | What shape is this?               | circle ...      |
| `image_count`     | (the same image distribution)                | How many shapes are there?        | one two three   |
| `video_direction` | 8 frames of one shape moving in a line       | Which way does the shape move?    | left right up down |
| `sound_beeps`     | 1-4 sine beeps (400-1600 Hz), 2-3 s          | How many beeps are there?         | one ... four    |
| `sound_pitch`     | one ~1 s tone, high 1500-3000 / low 150-400 Hz | Is the tone high or low?        | high low        |
| `speech_digit`    | a spoken digit (espeak-ng clips, augmented)  | What number is said?              | zero ... nine   |
| `text_add`        | none                                         | What is A plus B? (A + B <= 9)    | zero ... nine   |

Every example is a pure function of (task, split, index, seed): its random generator is seeded with
`SeedSequence([seed, split_number, task_number, index])`, so the splits draw from disjoint seed spaces and the same call
always returns the same example. The answer of example `index` is `ANSWERS[task][index % len(ANSWERS[task])]`
(balanced classes); everything else (sizes, positions, colour shades, pitches, timing, gains, noise, speakers, speeds,
sampling rates) is drawn at random, which is what a model learns to generalise over.

Spoken digits come from clips made once with espeak-ng (`training/make_speech_assets.py`) and checked in under
`training/assets/speech/`: 10 digits x 48 speakers (an espeak accent + voice variant + speed + pitch each). Speakers
0-15 and 24-47 are used by `train`, 16-19 by `validation` and 20-23 by `test` only, so validation and test speech
comes from accent / speed / pitch combinations never heard in training. Each example also augments its clip: a random
speed (0.9-1.1x, by resampling from a random rate), leading / trailing silence, gain and light noise.

Sounds and speech are generated at any sampling rate (`sampling_rate=`; by default a random one of `SOUND_RATES`, to
exercise resampling downstream); `resample` takes any waveform to 16 kHz (`SAMPLING_RATE`), the rate inside the model.

On disk (`write_split`) a split is a JSON list in the original Uni-MoE data layout, media paths relative to the JSON:

    {"id": "train-image_color-00000", "task": "image_color", "image": "train/image_color/00000.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat color is the shape?"}, {"from": "gpt", "value": "red"}]}

with `"video"` (mp4) and `<video>\\n`, or `"voice"` (16-bit wav) and `<audio>\\n` instead of `"image"` and `<image>\\n`.
Records with a `"voice"` also carry `"audio_kind"`: `"sound"` (beeps and tones: the BEATs sound path) or `"speech"`
(spoken digits: the Whisper speech path); text-only records have no media key and no placeholder. Videos are written
as H.264 RGB (libx264rgb) with qp=0, which is lossless: decoding gives back the exact frames (checked by the tests), and
mp4 is what the processor's video loader reads.

    from modeling_unimoe.training.synthetic import make_example, write_split, load_split
    example = make_example("image_color", "train", 0)      # {"image": PIL.Image, "question": ..., "answer": "red", ...}
    write_split("data", "train", n_per_task=1000)          # data/train.json + data/train/<task>/<index>.(png|mp4|wav)
    dataset = load_split("data", "train")                  # a datasets.Dataset, media paths made absolute
"""

import json
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


TASKS = (
    "image_color",
    "image_shape",
    "image_count",
    "video_direction",
    "sound_beeps",
    "sound_pitch",
    "speech_digit",
    "text_add",
)
SPLITS = ("train", "validation", "test")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLORS = {"red": (230, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 230), "yellow": (240, 210, 20)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")

ANSWERS = {
    "image_color": tuple(COLORS),
    "image_shape": SHAPES,
    "image_count": NUMBER_WORDS[1:4],
    "video_direction": DIRECTIONS,
    "sound_beeps": NUMBER_WORDS[1:5],
    "sound_pitch": ("high", "low"),
    "speech_digit": NUMBER_WORDS,
    "text_add": NUMBER_WORDS,
}
QUESTIONS = {
    "image_color": "What color is the shape?",
    "image_shape": "What shape is this?",
    "image_count": "How many shapes are there?",
    "video_direction": "Which way does the shape move?",
    "sound_beeps": "How many beeps are there?",
    "sound_pitch": "Is the tone high or low?",
    "speech_digit": "What number is said?",
    "text_add": "What is {a} plus {b}?",
}
MODALITY = {
    "image_color": "image",
    "image_shape": "image",
    "image_count": "image",
    "video_direction": "video",
    "sound_beeps": "sound",
    "sound_pitch": "sound",
    "speech_digit": "speech",
    "text_add": "text",
}

SAMPLING_RATE = 16000  # the rate inside the model (Whisper and BEATs features)
SOUND_RATES = (8000, 16000, 22050, 44100)  # the rates examples are generated at when none is asked for
MIN_SAMPLING_RATE, MAX_SAMPLING_RATE = 8000, 192000
NUM_VIDEO_FRAMES = 8
VIDEO_FPS = 8
HIGH_TONE_HZ, LOW_TONE_HZ = (1500.0, 3000.0), (150.0, 400.0)
BEEP_HZ = (400.0, 1600.0)

ASSETS = Path(__file__).resolve().parent / "assets"
SPEECH_DIR = ASSETS / "speech"
NUM_SPEAKERS = 48
SPEECH_SPEAKERS = {
    "train": tuple(range(0, 16)) + tuple(range(24, 48)),
    "validation": tuple(range(16, 20)),
    "test": tuple(range(20, 24)),
}

_PLACEHOLDER = {"image": "<image>\n", "video": "<video>\n", "sound": "<audio>\n", "speech": "<audio>\n", "text": ""}
_MEDIA_KEY = {"image": "image", "video": "video", "sound": "voice", "speech": "voice"}


# --------------------------------------------------------------------------------------------------- argument checks


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {', '.join(map(repr, allowed))}.")


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_rate(sampling_rate) -> None:
    _check_int("sampling_rate", sampling_rate, 1)
    if not MIN_SAMPLING_RATE <= sampling_rate <= MAX_SAMPLING_RATE:
        raise ValueError(f"sampling_rate must be {MIN_SAMPLING_RATE}..{MAX_SAMPLING_RATE} Hz, got {sampling_rate}.")


# ------------------------------------------------------------------------------------------------------------- audio


def resample(wave: np.ndarray, orig_sr: int, target_sr: int = SAMPLING_RATE) -> np.ndarray:
    """Band-limited resampling of a 1-D waveform between any two integer rates: the processor's `resample_audio`
    (python-soxr at high quality on float32 samples, as librosa's default) with argument checks. Output: float32,
    ceil(len * target_sr / orig_sr) samples."""
    from modeling_unimoe.processing.media_unimoe import resample_audio

    _check_int("orig_sr", orig_sr, 1)
    _check_int("target_sr", target_sr, 1)
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1:
        raise ValueError(f"resample expects a 1-D waveform, got shape {wave.shape}.")
    return resample_audio(wave, int(orig_sr), int(target_sr))


def _tone(freq: float, samples: int, rate: int, rng) -> np.ndarray:
    """A sine with a random phase and 5 ms raised-cosine fades at both ends."""
    t = np.arange(samples) / rate
    wave = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    fade = min(samples // 2, int(0.005 * rate))
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    wave[:fade] *= ramp
    wave[samples - fade :] *= ramp[::-1]
    return wave


def _finish(wave: np.ndarray, rng) -> np.ndarray:
    """Light noise (std 0.002-0.01), clipped to [-1, 1], as float32."""
    wave = wave + rng.normal(0, rng.uniform(0.002, 0.01), wave.size)
    return np.clip(wave, -1, 1).astype(np.float32)


def _beeps(count: int, rate: int, rng) -> np.ndarray:
    """`count` beeps of 80-150 ms, each at its own pitch, 200-400 ms of silence apart, somewhere in a 2-3 s clip."""
    durations = rng.uniform(0.08, 0.15, count)
    gaps = rng.uniform(0.2, 0.4, count - 1)
    total = rng.uniform(2.0, 3.0)
    start = rng.uniform(0.1, total - 0.1 - durations.sum() - gaps.sum())
    wave = np.zeros(int(total * rate))
    amplitude = rng.uniform(0.3, 0.9)
    for i in range(count):
        n = int(durations[i] * rate)
        at = int(start * rate)
        wave[at : at + n] += amplitude * _tone(rng.uniform(*BEEP_HZ), n, rate, rng)
        start += durations[i] + (gaps[i] if i < count - 1 else 0)
    return _finish(wave, rng)


def _pitch_tone(high: bool, rate: int, rng) -> np.ndarray:
    """One 0.6-0.9 s tone in a 1 s clip: 1500-3000 Hz if high, 150-400 Hz if low."""
    total, duration = int(rate), int(rng.uniform(0.6, 0.9) * rate)
    at = int(rng.integers(0, total - duration + 1))
    wave = np.zeros(total)
    wave[at : at + duration] = rng.uniform(0.3, 0.9) * _tone(
        rng.uniform(*(HIGH_TONE_HZ if high else LOW_TONE_HZ)), duration, rate, rng
    )
    return _finish(wave, rng)


@cache
def speech_clip(digit: int, speaker: int) -> np.ndarray:
    """The checked-in 16 kHz clip of `digit` said by `speaker` (float32, read-only)."""
    import soundfile

    _check_int("digit", digit, 0)
    _check_int("speaker", speaker, 0)
    if digit > 9 or speaker >= NUM_SPEAKERS:
        raise ValueError(f"digit must be 0..9 and speaker 0..{NUM_SPEAKERS - 1}, got {digit} and {speaker}.")
    wave, rate = soundfile.read(SPEECH_DIR / f"{digit}_{speaker:02d}.flac", dtype="float32")
    assert rate == SAMPLING_RATE, f"speech assets are {SAMPLING_RATE} Hz, found {rate} Hz"
    wave.flags.writeable = False
    return wave


def _speech(digit: int, split: str, rate: int, rng) -> tuple[np.ndarray, int]:
    """A clip of a speaker of `split`, with 0-300 ms of silence each side, 0.9-1.1x speed, gain and noise."""
    speaker = int(rng.choice(SPEECH_SPEAKERS[split]))
    clip = speech_clip(digit, speaker)
    pads = (rng.uniform(0, 0.3, 2) * SAMPLING_RATE).astype(int)
    wave = np.pad(clip.astype(np.float64), tuple(pads))
    wave = resample(wave, int(round(SAMPLING_RATE * rng.uniform(0.9, 1.1))), rate).astype(np.float64)
    wave *= rng.uniform(0.3, 0.95) / max(np.abs(wave).max(), 1e-6)
    return _finish(wave, rng), speaker


# ------------------------------------------------------------------------------------------------- images and video


def _shape_mask(kind: str, size: int) -> np.ndarray:
    """A size x size boolean mask of a circle, square or (upright) triangle filling its box."""
    box = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(box)
    if kind == "circle":
        draw.ellipse([0, 0, size - 1, size - 1], fill=1)
    elif kind == "square":
        draw.rectangle([0, 0, size - 1, size - 1], fill=1)
    else:
        draw.polygon([((size - 1) / 2, 0), (size - 1, size - 1), (0, size - 1)], fill=1)
    return np.array(box, dtype=bool)


def _shade(color: str, rng) -> np.ndarray:
    """The colour's base RGB with +-20 per channel."""
    return np.clip(np.array(COLORS[color]) + rng.integers(-20, 21, 3), 0, 255).astype(np.uint8)


def _place(sizes, image_size: int, rng, gap: int = 3):
    """Top-left corners for boxes of `sizes` that stay `gap` px apart and inside the image (None if it fails)."""
    boxes = []
    for size in sizes:
        for _ in range(100):
            x, y = (int(v) for v in rng.integers(1, image_size - size, 2))
            if all(
                x + size + gap <= bx or bx + bs + gap <= x or y + size + gap <= by or by + bs + gap <= y
                for bx, by, bs in boxes
            ):
                boxes.append((x, y, size))
                break
        else:
            return None
    return boxes


def _shapes_image(color: str, kind: str, count: int, image_size: int, rng) -> Image.Image:
    """`count` non-overlapping shapes of one kind and colour, 22-44 % of the image wide (less when there are more)."""
    low = round(0.22 * image_size)
    high = round((0.44, 0.375, 0.34)[count - 1] * image_size)
    boxes = None
    while boxes is None:  # almost always the first try
        boxes = _place([int(s) for s in rng.integers(low, high + 1, count)], image_size, rng)
    pixels = np.full((image_size, image_size, 3), 255, np.uint8)
    rgb = _shade(color, rng)
    for x, y, size in boxes:
        pixels[y : y + size, x : x + size][_shape_mask(kind, size)] = rgb
    return Image.fromarray(pixels)


def _moving_shape(direction: str, image_size: int, rng) -> list[Image.Image]:
    """8 frames of one shape (22-31 % of the image) moving 40-55 % of the image in a straight line."""
    size = int(rng.integers(round(0.22 * image_size), round(0.31 * image_size) + 1))
    travel = int(rng.integers(round(0.40 * image_size), round(0.55 * image_size) + 1))
    mask, rgb = _shape_mask(str(rng.choice(SHAPES)), size), _shade(str(rng.choice(list(COLORS))), rng)
    along = int(rng.integers(1, image_size - size - travel))  # start on the axis of motion
    across = int(rng.integers(1, image_size - size))
    frames = []
    for i in range(NUM_VIDEO_FRAMES):
        step = round(travel * i / (NUM_VIDEO_FRAMES - 1))
        offset = along + step if direction in ("right", "down") else along + travel - step
        x, y = (offset, across) if direction in ("left", "right") else (across, offset)
        pixels = np.full((image_size, image_size, 3), 255, np.uint8)
        pixels[y : y + size, x : x + size][mask] = rgb
        frames.append(Image.fromarray(pixels))
    return frames


# ----------------------------------------------------------------------------------------------------------- examples


def example_rng(task: str, split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The random generator of one example; splits (and tasks) use disjoint seed sequences."""
    _check_choice("task", task, TASKS)
    _check_choice("split", split, SPLITS)
    _check_int("index", index, 0)
    _check_int("seed", seed, 0)
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), TASKS.index(task), index]))


def make_example(
    task: str, split: str, index: int, seed: int = 0, *, image_size: int = 64, sampling_rate: int | None = None
) -> dict:
    """One example, as a pure function of its arguments:

    `{"id", "task", "split", "index", "modality", "question", "answer"}` plus `"image"` (a PIL RGB image of
    image_size x image_size), `"video"` (a list of 8 such frames), or `"audio"` (a `(float32 waveform, sampling_rate)`
    pair) and `"audio_kind"` (`"sound"` or `"speech"`). `sampling_rate=None` picks one of `SOUND_RATES` at random.
    """
    rng = example_rng(task, split, index, seed)
    _check_int("image_size", image_size, 32)
    if sampling_rate is not None:
        _check_rate(sampling_rate)
    modality, answers = MODALITY[task], ANSWERS[task]
    answer = answers[index % len(answers)]
    example = {
        "id": f"{split}-{task}-{index:05d}",
        "task": task,
        "split": split,
        "index": index,
        "modality": modality,
        "question": QUESTIONS[task],
        "answer": answer,
    }
    if modality == "image":
        attributes = {
            "color": str(rng.choice(list(COLORS))),
            "kind": str(rng.choice(SHAPES)),
            "count": int(rng.integers(1, 4)),
        }
        name = {"image_color": "color", "image_shape": "kind", "image_count": "count"}[task]
        attributes[name] = NUMBER_WORDS.index(answer) if name == "count" else answer
        example["image"] = _shapes_image(**attributes, image_size=image_size, rng=rng)
    elif modality == "video":
        example["video"] = _moving_shape(answer, image_size, rng)
    elif modality in ("sound", "speech"):
        rate = int(rng.choice(SOUND_RATES)) if sampling_rate is None else int(sampling_rate)
        if task == "sound_beeps":
            wave = _beeps(NUMBER_WORDS.index(answer), rate, rng)
        elif task == "sound_pitch":
            wave = _pitch_tone(answer == "high", rate, rng)
        else:
            wave, example["speaker"] = _speech(NUMBER_WORDS.index(answer), split, rate, rng)
        example["audio"], example["audio_kind"] = (wave, rate), modality
    else:
        total = NUMBER_WORDS.index(answer)
        a = int(rng.integers(0, total + 1))
        example["question"] = QUESTIONS[task].format(a=a, b=total - a)
    return example


# ------------------------------------------------------------------------------------------------------ files on disk


def _write_video(path: Path, frames: list[Image.Image]) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264rgb", rate=VIDEO_FPS, options={"qp": "0", "preset": "ultrafast"})
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "rgb24"
        stream.codec_context.thread_count = 1  # deterministic bytes
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())


def write_split(
    out_dir,
    split: str,
    n_per_task: int,
    seed: int = 0,
    *,
    tasks=TASKS,
    image_size: int = 64,
    sampling_rate: int | None = None,
) -> Path:
    """Write `n_per_task` examples (indices 0..n-1) of each task to `out_dir/<split>/<task>/<index>.(png|mp4|wav)`
    and `out_dir/<split>.json` (the original layout, paths relative to out_dir). Returns the JSON's path."""
    import soundfile

    _check_choice("split", split, SPLITS)
    _check_int("n_per_task", n_per_task, 1)
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    if not tasks:
        raise ValueError(f"tasks is empty; expected some of {', '.join(TASKS)}.")
    for task in tasks:
        _check_choice("task", task, TASKS)
    make_example(tasks[0], split, 0, seed, image_size=image_size, sampling_rate=sampling_rate)  # checks the rest
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for task in tasks:
        if MODALITY[task] != "text":
            (out_dir / split / task).mkdir(parents=True, exist_ok=True)
        for index in range(n_per_task):
            example = make_example(task, split, index, seed, image_size=image_size, sampling_rate=sampling_rate)
            modality = example["modality"]
            record = {"id": example["id"], "task": task}
            if modality != "text":
                suffix = {"image": "png", "video": "mp4", "sound": "wav", "speech": "wav"}[modality]
                relative = f"{split}/{task}/{index:05d}.{suffix}"
                if modality == "image":
                    example["image"].save(out_dir / relative, format="PNG")
                elif modality == "video":
                    _write_video(out_dir / relative, example["video"])
                else:
                    wave, rate = example["audio"]
                    soundfile.write(out_dir / relative, wave, rate, subtype="PCM_16", format="WAV")
                    record["audio_kind"] = modality
                record[_MEDIA_KEY[modality]] = relative
            record["conversations"] = [
                {"from": "human", "value": _PLACEHOLDER[modality] + example["question"]},
                {"from": "gpt", "value": example["answer"]},
            ]
            records.append(record)
    path = out_dir / f"{split}.json"
    path.write_text(json.dumps(records, indent=1) + "\n")
    return path


def load_split(path, split: str | None = None, *, absolute_paths: bool = True):
    """A `datasets.Dataset` from a JSON written by `write_split` (or any JSON in the original layout): `path` is the
    JSON file, or the folder holding `<split>.json`. Columns: id, task, image, video, voice, audio_kind (None where a
    record has none), conversations, question (the human turn without its placeholder) and answer (the gpt turn).
    Media paths are made absolute (relative to the JSON's folder) unless `absolute_paths=False`."""
    import datasets

    path = Path(path)
    if path.is_dir():
        if split is None:
            raise ValueError(f"{path} is a folder: pass split= (one of {', '.join(SPLITS)}) or the JSON file's path.")
        _check_choice("split", split, SPLITS)
        path = path / f"{split}.json"
    if not path.is_file():
        raise ValueError(f"No split JSON at {path}; expected a file written by write_split.")
    rows = []
    for record in json.loads(path.read_text()):
        row = {"id": record["id"], "task": record.get("task")}
        for key in ("image", "video", "voice"):
            value = record.get(key)
            row[key] = str(path.parent / value) if value is not None and absolute_paths else value
        row["audio_kind"] = record.get("audio_kind")
        row["conversations"] = record["conversations"]
        human = record["conversations"][0]["value"]
        for placeholder in set(_PLACEHOLDER.values()) - {""}:
            human = human.replace(placeholder, "")
        row["question"], row["answer"] = human.strip(), record["conversations"][1]["value"]
        rows.append(row)
    features = datasets.Features(
        {
            **{key: datasets.Value("string") for key in ("id", "task", "image", "video", "voice", "audio_kind")},
            "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


# --------------------------------------------------------------------------------------------------------- evaluation


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation dropped, whitespace collapsed, a lone digit spelt out ("Red." -> "red", "3" -> "three")."""
    words = "".join(c if c.isalnum() or c.isspace() else " " for c in str(text).lower()).split()
    return " ".join(NUMBER_WORDS[int(w)] if w.isdigit() and int(w) < 10 else w for w in words)


def is_correct(prediction: str, answer: str) -> bool:
    """Exact match of the normalised prediction and answer."""
    return normalize_answer(prediction) == normalize_answer(answer)
