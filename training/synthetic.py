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

The table describes the standard distribution (`STANDARD`). `distribution="wide"` draws the train, validation and test
splits from `WIDE` instead: canvases of other sizes, aspects and backgrounds, outlined shapes, videos of other frame
counts and travel, sounds of 0.4-10 s with other beep lengths, gaps, pitches and loudness, stereo; a beep sound's length
is drawn before its beeps, so that a long sound holds any count alike. The `shifted` split draws from `SHIFTED`,
whose ranges lie between and beside WIDE's (`training/synthetic_media.py`); with `shift=` only the named groups of its
parameters (`SHIFT_GROUPS`), and the others from WIDE.

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
from pathlib import Path

import numpy as np
from PIL import Image

from .synthetic_media import (
    COLORS,
    IMAGE_SIZE,
    SHAPES,
    SHIFTED,
    SOUND_RATES,
    WIDE,
    _beeps,
    _check_int,
    _check_rate,
    _drawn_beeps,
    _drawn_moving_shape,
    _drawn_pitch_tone,
    _drawn_shapes_image,
    _drawn_speech,
    _moving_shape,
    _pitch_tone,
    _shapes_image,
    _speech,
)


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
SPLITS = ("train", "validation", "test", "shifted")
# what the train, validation and test splits draw their media from (the shifted split draws from `shifted_ranges`)
DISTRIBUTIONS = ("standard", "wide")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
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
# Other wordings of each question: the wide distribution's splits ask one of QUESTIONS + PHRASINGS at random; the
# standard splits and the shifted split ask QUESTIONS'. Sound questions name the beeps / tone and speech questions what
# is said, so that `processing.text_unimoe.audio_kind_for_question` tells them apart.
PHRASINGS = {
    "image_color": ("Which color is the shape?", "What color is it?", "Tell me the color of the shape."),
    "image_shape": ("Which shape is this?", "What shape do you see?", "Name the shape."),
    "image_count": ("How many shapes do you see?", "Count the shapes.", "How many shapes are in the picture?"),
    "video_direction": (
        "Where does the shape go?",
        "In which direction does the shape move?",
        "Which way is the shape moving?",
    ),
    "sound_beeps": ("How many beeps do you hear?", "Count the beeps.", "How many beeps does the sound have?"),
    "sound_pitch": ("Is this tone high or low?", "Is the pitch high or low?", "Is the tone low or high?"),
    "speech_digit": ("Which number is said?", "What digit do you hear?", "What number does the speaker say?"),
    "text_add": ("What does {a} plus {b} make?", "Add {a} and {b}.", "What is the sum of {a} and {b}?"),
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

# The shifted split's parameters in the groups they are drawn in, each with the tasks whose media it changes. A shifted
# split written with `shift=(group, ...)` draws those groups from SHIFTED and every other parameter from WIDE (the
# distribution the checked-in model is trained on): what one kind of shift alone costs (`training.shift_study`).
_IMAGE_TASKS = ("image_color", "image_shape", "image_count")
_FRAME_TASKS = (*_IMAGE_TASKS, "video_direction")
_AUDIO_TASKS = ("sound_beeps", "sound_pitch", "speech_digit")
SHIFT_GROUPS = {
    "canvas": (("canvas",), _IMAGE_TASKS),
    "aspect": (("aspect",), _FRAME_TASKS),
    "shape": (("shape",), _IMAGE_TASKS),
    "background": (("background", "grey", "tint"), _FRAME_TASKS),
    "pixel_noise": (("pixel_noise",), _FRAME_TASKS),
    "outline": (("outline",), _FRAME_TASKS),
    "video_canvas": (("video_canvas",), ("video_direction",)),
    "frames": (("frames",), ("video_direction",)),
    "travel": (("travel",), ("video_direction",)),
    "video_shape": (("video_shape",), ("video_direction",)),
    "rates": (("rates",), _AUDIO_TASKS),
    "seconds": (("seconds", "length_first"), ("sound_beeps", "sound_pitch")),
    "beep": (("beep",), ("sound_beeps",)),
    "gap": (("gap",), ("sound_beeps",)),
    "beep_hz": (("beep_hz",), ("sound_beeps",)),
    "amplitude": (("amplitude",), ("sound_beeps", "sound_pitch")),
    "noise": (("noise",), ("sound_beeps", "sound_pitch")),
    "tone": (("tone",), ("sound_pitch",)),
    "high_hz": (("high_hz",), ("sound_pitch",)),
    "low_hz": (("low_hz",), ("sound_pitch",)),
    "speed": (("speed",), ("speech_digit",)),
    "speech_gain": (("speech_gain",), ("speech_digit",)),
    "speech_noise": (("speech_noise",), ("speech_digit",)),
}

VIDEO_FPS = 8

_PLACEHOLDER = {"image": "<image>\n", "video": "<video>\n", "sound": "<audio>\n", "speech": "<audio>\n", "text": ""}
_MEDIA_KEY = {"image": "image", "video": "video", "sound": "voice", "speech": "voice"}


# --------------------------------------------------------------------------------------------------- argument checks


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {', '.join(map(repr, allowed))}.")


def shifted_ranges(shift=None) -> dict:
    """The ranges the shifted split draws from: `SHIFTED` for `shift=None`; for a tuple of `SHIFT_GROUPS` names, those
    groups' parameters from SHIFTED and the rest from `WIDE` (an empty tuple: WIDE's ranges alone)."""
    if shift is None:
        return SHIFTED
    if isinstance(shift, str) or not all(isinstance(group, str) for group in shift):
        raise TypeError(f"shift must be None or a tuple of SHIFT_GROUPS names (e.g. ('beep_hz',)); got {shift!r}.")
    ranges = dict(WIDE)
    for group in shift:
        _check_choice("shift group", group, SHIFT_GROUPS)
        ranges.update({key: SHIFTED[key] for key in SHIFT_GROUPS[group][0]})
    return ranges


# ----------------------------------------------------------------------------------------------------------- examples


def example_rng(task: str, split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The random generator of one example; splits (and tasks) use disjoint seed sequences."""
    _check_choice("task", task, TASKS)
    _check_choice("split", split, SPLITS)
    _check_int("index", index, 0)
    _check_int("seed", seed, 0)
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), TASKS.index(task), index]))


def make_example(
    task: str,
    split: str,
    index: int,
    seed: int = 0,
    *,
    image_size: int | None = None,
    sampling_rate: int | None = None,
    distribution: str = "standard",
    shift: tuple[str, ...] | None = None,
) -> dict:
    """One example, as a pure function of its arguments:

    `{"id", "task", "split", "index", "modality", "question", "answer"}` plus `"image"` (a PIL RGB image), `"video"`
    (a list of such frames), or `"audio"` (a `(float32 waveform, sampling_rate)` pair: the waveform [samples], or
    [samples, 2] for stereo sounds) and `"audio_kind"` (`"sound"` or `"speech"`). The train, validation and test
    splits draw from the `distribution`'s ranges ("standard": `STANDARD`, "wide": `WIDE`), the shifted split from
    `shifted_ranges(shift)` (`SHIFTED` unless `shift` names `SHIFT_GROUPS`); the wide distribution's splits also word
    the question in one of `PHRASINGS`' ways or as `QUESTIONS`. Images and frames are `IMAGE_SIZE` px squares in the
    standard distribution and of the ranges' sizes and aspects otherwise, `image_size` x `image_size` when it is
    given; `sampling_rate=None` picks one of the ranges' rates at random.
    """
    rng = example_rng(task, split, index, seed)
    if image_size is not None:
        _check_int("image_size", image_size, 32)
    if sampling_rate is not None:
        _check_rate(sampling_rate)
    _check_choice("distribution", distribution, DISTRIBUTIONS)
    if shift is not None and split != "shifted":
        raise ValueError(
            f"shift={shift!r} applies to the shifted split only; got split={split!r}. Pass split='shifted', or leave "
            "shift out."
        )
    ranges = shifted_ranges(shift) if split == "shifted" else WIDE if distribution == "wide" else None
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
        if ranges is not None:
            example["image"] = _drawn_shapes_image(**attributes, side=image_size, ranges=ranges, rng=rng)
        else:
            example["image"] = _shapes_image(**attributes, image_size=image_size or IMAGE_SIZE, rng=rng)
    elif modality == "video":
        if ranges is not None:
            example["video"] = _drawn_moving_shape(answer, image_size, ranges, rng)
        else:
            example["video"] = _moving_shape(answer, image_size or IMAGE_SIZE, rng)
    elif modality in ("sound", "speech"):
        rates = SOUND_RATES if ranges is None else ranges["rates"]
        rate = int(rng.choice(rates)) if sampling_rate is None else int(sampling_rate)
        number = NUMBER_WORDS.index(answer) if answer in NUMBER_WORDS else None
        if task == "sound_beeps":
            wave = _beeps(number, rate, rng) if ranges is None else _drawn_beeps(number, rate, ranges, rng)
        elif task == "sound_pitch":
            high = answer == "high"
            wave = _pitch_tone(high, rate, rng) if ranges is None else _drawn_pitch_tone(high, rate, ranges, rng)
        elif ranges is None:
            wave, example["speaker"] = _speech(number, split, rate, rng)
        else:
            wave, example["speaker"] = _drawn_speech(number, split, rate, ranges, rng)
        example["audio"], example["audio_kind"] = (wave, rate), modality
    else:
        total = NUMBER_WORDS.index(answer)
        a = int(rng.integers(0, total + 1))
        example["question"] = QUESTIONS[task].format(a=a, b=total - a)
    if distribution == "wide" and split != "shifted":  # drawn last: the media do not depend on the wording
        wording = str(rng.choice((QUESTIONS[task], *PHRASINGS[task])))
        example["question"] = wording.format(a=a, b=total - a) if task == "text_add" else wording
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
    image_size: int | None = None,
    sampling_rate: int | None = None,
    distribution: str = "standard",
    shift: tuple[str, ...] | None = None,
) -> Path:
    """Write `n_per_task` examples (indices 0..n-1) of each task to `out_dir/<split>/<task>/<index>.(png|mp4|wav)`
    and `out_dir/<split>.json` (the original layout, paths relative to out_dir), drawn from `distribution` and
    `shift` (see `make_example`). Returns the JSON's path."""
    import soundfile

    _check_choice("split", split, SPLITS)
    _check_int("n_per_task", n_per_task, 1)
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    if not tasks:
        raise ValueError(f"tasks is empty; expected some of {', '.join(TASKS)}.")
    for task in tasks:
        _check_choice("task", task, TASKS)
    options = dict(image_size=image_size, sampling_rate=sampling_rate, distribution=distribution, shift=shift)
    make_example(tasks[0], split, 0, seed, **options)  # checks the rest
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for task in tasks:
        if MODALITY[task] != "text":
            (out_dir / split / task).mkdir(parents=True, exist_ok=True)
        for index in range(n_per_task):
            example = make_example(task, split, index, seed, **options)
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
