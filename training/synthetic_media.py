# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""The synthetic task suite's media (`training/synthetic.py` makes the examples): the parameter ranges of the standard
and wide distributions and of the shifted split, and seeded generators of shapes, moving shapes, beeps, tones and
spoken digits.

The standard distribution's generators (`_beeps`, `_pitch_tone`, `_speech`, `_shapes_image`, `_moving_shape`) draw
from `STANDARD`; the others (`_drawn_*`) take a ranges dict (`WIDE` or `SHIFTED`) and draw every parameter from it.
"""

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


COLORS = {"red": (230, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 230), "yellow": (240, 210, 20)}
SHAPES = ("circle", "square", "triangle")
SAMPLING_RATE = 16000  # the rate inside the model (Whisper and BEATs features)
MIN_SAMPLING_RATE, MAX_SAMPLING_RATE = 8000, 192000


# The ranges the splits draw their media's parameters from, as (low, high) intervals (sizes relative to the canvas's
# shorter side; canvases in px, sounds in s and Hz). `train`, `validation` and `test` draw from STANDARD. The held-out
# `shifted` split draws from SHIFTED, whose ranges lie beside STANDARD's, never inside them, wherever the processor
# does not normalise the parameter away; it adds what STANDARD never shows (other aspects, backgrounds, pixel noise,
# outlines, stereo).
STANDARD = {
    "canvas": ((64, 64),),
    "shape": ((0.22, 0.44),),  # a shape's box; smaller when there are more
    "video_canvas": ((64, 64),),
    "frames": ((8, 8),),
    "travel": ((0.40, 0.55),),
    "video_shape": ((0.22, 0.31),),
    "rates": (8000, 16000, 22050, 44100),
    "seconds": ((2.0, 3.0),),  # a beep sound's whole length (a tone's is 1 s)
    "beep": ((0.08, 0.15),),
    "gap": ((0.2, 0.4),),
    "beep_hz": ((400.0, 1600.0),),
    "amplitude": ((0.3, 0.9),),
    "noise": ((0.002, 0.01),),
    "tone": ((0.6, 0.9),),
    "high_hz": ((1500.0, 3000.0),),
    "low_hz": ((150.0, 400.0),),
    "speed": ((0.9, 1.1),),  # speech
    "speech_gain": ((0.3, 0.95),),
    "speech_noise": ((0.002, 0.01),),
}
SHIFTED = {
    "canvas": ((32, 56), (72, 512)),
    "aspect": ((0.67, 0.9), (1.1, 1.5)),  # width / height
    "shape": ((0.12, 0.2), (0.46, 0.52)),
    "background": ("white", "grey", "tint"),
    "grey": ((185, 235),),
    "tint": ((0.78, 0.9),),  # the share of white in a light colour
    "pixel_noise": ((2.0, 8.0),),  # std, in 0..255 steps
    "outline": ((0.1, 0.25),),  # an outline's width / its shape's size (40 % of the images and videos)
    "video_canvas": ((32, 56), (72, 256)),
    "frames": ((12, 40),),
    "travel": ((0.25, 0.38), (0.57, 0.68)),
    "video_shape": ((0.12, 0.2), (0.32, 0.36)),
    "rates": (11025, 12000, 24000, 32000, 48000),
    "stereo": 0.5,  # the share of two-channel sounds
    "seconds": ((0.5, 1.9), (3.1, 10.0)),  # a sound's whole length, drawn log-uniformly
    "length_first": False,  # a beep sound's length is drawn after its beeps, among those that hold them
    "beep": ((0.035, 0.07), (0.16, 0.35)),
    "gap": ((0.06, 0.18), (0.42, 1.2)),
    "beep_hz": ((250.0, 380.0), (1650.0, 2500.0)),
    "amplitude": ((0.1, 0.28), (0.92, 0.98)),
    "noise": ((0.012, 0.03),),
    "tone": ((0.1, 0.55), (0.95, 5.0)),
    "high_hz": ((3050.0, 4000.0),),
    "low_hz": ((100.0, 145.0),),
    "speed": ((0.82, 0.88), (1.12, 1.18)),
    "speech_gain": ((0.15, 0.28), (0.96, 1.0)),
    "speech_noise": ((0.012, 0.02),),
}
# A wider training distribution (`distribution="wide"` of the train, validation and test splits): the kinds of
# variation SHIFTED shows. For the parameters a model must generalise over (shape sizes, travel, beep and gap lengths,
# pitches, loudness, noise, tone lengths, speech speed and level) its ranges lie beside SHIFTED's and around them, so
# that the shifted split asks for interpolation; only noise stays below SHIFTED's (quiet beeps in strong noise cannot
# be counted). They overlap SHIFTED's (`SHARED_WITH_SHIFTED`) for what the processor normalises (canvas sizes and
# aspects: resized and centre-cropped; frame counts: sampled to a fixed number; stereo: averaged; a sound's whole
# length: cut into chunks) and for the looks of canvas and shapes (backgrounds, pixel noise, outline widths), which
# training has to show at all.
WIDE = {
    "canvas": ((40, 400),),
    "aspect": ((0.67, 1.5),),
    "shape": ((0.08, 0.115), (0.205, 0.455), (0.525, 0.6)),
    "background": ("white", "grey", "tint"),
    "grey": ((170, 250),),
    "tint": ((0.7, 0.95),),
    "pixel_noise": ((0.0, 10.0),),
    "outline": ((0.08, 0.3),),
    "video_canvas": ((40, 256),),
    "frames": ((8, 40),),
    "travel": ((0.2, 0.245), (0.385, 0.565), (0.685, 0.72)),
    "video_shape": ((0.08, 0.115), (0.205, 0.315), (0.365, 0.4)),
    "rates": STANDARD["rates"],
    "stereo": 0.5,
    "seconds": ((0.4, 10.0),),
    "length_first": True,  # a beep sound's length is drawn before its beeps: a model cannot count beeps by length
    "beep": ((0.025, 0.034), (0.075, 0.155), (0.36, 0.45)),
    "gap": ((0.04, 0.055), (0.19, 0.41), (1.25, 1.5)),
    "beep_hz": ((200.0, 245.0), (385.0, 1640.0), (2550.0, 3000.0)),
    "amplitude": ((0.07, 0.095), (0.29, 0.91)),
    "noise": ((0.0, 0.011),),
    "tone": ((0.05, 0.095), (0.56, 0.94), (5.1, 6.0)),
    "high_hz": ((1500.0, 3040.0), (4010.0, 5000.0)),
    "low_hz": ((70.0, 95.0), (150.0, 400.0)),
    "speed": ((0.75, 0.81), (0.89, 1.11), (1.19, 1.25)),
    "speech_gain": ((0.1, 0.14), (0.29, 0.95)),
    "speech_noise": ((0.0, 0.011),),
}
SHARED_WITH_SHIFTED = ("canvas", "aspect", "background", "grey", "tint", "pixel_noise", "outline", "video_canvas",
                       "frames", "stereo", "seconds")  # fmt: skip
SOUND_RATES = STANDARD["rates"]  # the rates of the standard splits' sounds when none is asked for
IMAGE_SIZE = STANDARD["canvas"][0][0]  # the standard splits' images and video frames are IMAGE_SIZE px squares
NUM_VIDEO_FRAMES = STANDARD["frames"][0][0]

ASSETS = Path(__file__).resolve().parent / "assets"
SPEECH_DIR = ASSETS / "speech"
NUM_SPEAKERS = 48
SPEECH_SPEAKERS = {
    "train": tuple(range(0, 16)) + tuple(range(24, 48)),
    "validation": tuple(range(16, 20)),
    "test": tuple(range(20, 24)),
    "shifted": tuple(range(20, 24)),  # the test speakers, at other speeds, levels, rates and noise
}

# ---------------------------------------------------------------------------------------------------- argument checks


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
    """A sine with a random phase and raised-cosine fades (5 ms, or a fifth of a shorter tone) at both ends."""
    t = np.arange(samples) / rate
    wave = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    fade = max(1, min(samples // 5, int(0.005 * rate)))
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    wave[:fade] *= ramp
    wave[samples - fade :] *= ramp[::-1]
    return wave


def _finish(wave: np.ndarray, rng) -> np.ndarray:
    """Light noise (std 0.002-0.01), clipped to [-1, 1], as float32."""
    wave = wave + rng.normal(0, rng.uniform(*STANDARD["noise"][0]), wave.size)
    return np.clip(wave, -1, 1).astype(np.float32)


def _beeps(count: int, rate: int, rng) -> np.ndarray:
    """`count` beeps of 80-150 ms, each at its own pitch, 200-400 ms of silence apart, somewhere in a 2-3 s clip."""
    durations = rng.uniform(*STANDARD["beep"][0], count)
    gaps = rng.uniform(*STANDARD["gap"][0], count - 1)
    total = rng.uniform(*STANDARD["seconds"][0])
    start = rng.uniform(0.1, total - 0.1 - durations.sum() - gaps.sum())
    wave = np.zeros(int(total * rate))
    amplitude = rng.uniform(*STANDARD["amplitude"][0])
    for i in range(count):
        n = int(durations[i] * rate)
        at = int(start * rate)
        wave[at : at + n] += amplitude * _tone(rng.uniform(*STANDARD["beep_hz"][0]), n, rate, rng)
        start += durations[i] + (gaps[i] if i < count - 1 else 0)
    return _finish(wave, rng)


def _pitch_tone(high: bool, rate: int, rng) -> np.ndarray:
    """One 0.6-0.9 s tone in a 1 s clip: 1500-3000 Hz if high, 150-400 Hz if low."""
    total, duration = int(rate), int(rng.uniform(*STANDARD["tone"][0]) * rate)
    at = int(rng.integers(0, total - duration + 1))
    wave = np.zeros(total)
    wave[at : at + duration] = rng.uniform(*STANDARD["amplitude"][0]) * _tone(
        rng.uniform(*STANDARD["high_hz" if high else "low_hz"][0]), duration, rate, rng
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
    wave = resample(wave, int(round(SAMPLING_RATE * rng.uniform(*STANDARD["speed"][0]))), rate).astype(np.float64)
    wave *= rng.uniform(*STANDARD["speech_gain"][0]) / max(np.abs(wave).max(), 1e-6)
    return _finish(wave, rng), speaker


# ------------------------------------------------------------------------------------------------- images and video


def _shape_mask(kind: str, size: int, outline: int = 0) -> np.ndarray:
    """A size x size boolean mask of a circle, square or (upright) triangle filling its box; with `outline` > 0 only
    a band of about that many pixels along its edge."""
    box = Image.new("1", (size, size), 0)
    draw_ = ImageDraw.Draw(box)
    side = size - 1
    corners = np.array([(side / 2, 0), (side, side), (0, side)])
    inradius = side * side / 2 / ((side + 2 * np.hypot(side / 2, side)) / 2)  # area / half the perimeter
    incentre = np.array([side / 2, side - inradius])

    def paint(inset: float, value: int) -> None:
        if kind == "circle":
            draw_.ellipse([inset, inset, side - inset, side - inset], fill=value)
        elif kind == "square":
            draw_.rectangle([inset, inset, side - inset, side - inset], fill=value)
        else:  # the triangle shrunk about its incentre: its edges move `inset` px inwards
            inner = incentre + (corners - incentre) * (inradius - inset) / inradius
            draw_.polygon([tuple(point) for point in inner], fill=value)

    paint(0, 1)
    if outline and (inradius if kind == "triangle" else side / 2) - outline >= 1:
        paint(outline, 0)
    return np.array(box, dtype=bool)


def _shade(color: str, rng) -> np.ndarray:
    """The colour's base RGB with +-20 per channel."""
    return np.clip(np.array(COLORS[color]) + rng.integers(-20, 21, 3), 0, 255).astype(np.uint8)


def _place(sizes, square: int, origin, rng, gap: int):
    """Top-left corners for boxes of `sizes` that stay `gap` px apart inside the `square` x `square` area at `origin`
    (None if that fails)."""
    boxes = []
    for size in sizes:
        for _ in range(100):
            x, y = (int(v) for v in rng.integers(1, max(2, square - size), 2))
            if all(
                x + size + gap <= bx or bx + bs + gap <= x or y + size + gap <= by or by + bs + gap <= y
                for bx, by, bs in boxes
            ):
                boxes.append((x, y, size))
                break
        else:
            return None
    return [(origin[0] + x, origin[1] + y, size) for x, y, size in boxes]


def _shapes_image(color: str, kind: str, count: int, image_size: int, rng) -> Image.Image:
    """`count` non-overlapping shapes of one kind and colour, 22-44 % of the image wide (less when there are more)."""
    low = round(STANDARD["shape"][0][0] * image_size)
    high = round((STANDARD["shape"][0][1], 0.375, 0.34)[count - 1] * image_size)
    boxes = None
    while boxes is None:  # almost always the first try
        boxes = _place([int(s) for s in rng.integers(low, high + 1, count)], image_size, (0, 0), rng, gap=3)
    pixels = np.full((image_size, image_size, 3), 255, np.uint8)
    rgb = _shade(color, rng)
    for x, y, size in boxes:
        pixels[y : y + size, x : x + size][_shape_mask(kind, size)] = rgb
    return Image.fromarray(pixels)


def _moving_shape(direction: str, image_size: int, rng) -> list[Image.Image]:
    """8 frames of one shape (22-31 % of the image) moving 40-55 % of the image in a straight line."""
    (size_low, size_high), (travel_low, travel_high) = STANDARD["video_shape"][0], STANDARD["travel"][0]
    size = int(rng.integers(round(size_low * image_size), round(size_high * image_size) + 1))
    travel = int(rng.integers(round(travel_low * image_size), round(travel_high * image_size) + 1))
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


# ----------------------------------------------------------------------------------------- the shifted split's media


def draw(rng, intervals, log: bool = False) -> float:
    """A value drawn uniformly (log-uniformly with `log=True`) over the union of `(low, high)` intervals."""
    scale = np.log if log else (lambda v: v)
    widths = np.array([scale(high) - scale(low) for low, high in intervals], dtype=float)
    low, high = intervals[int(rng.choice(len(intervals), p=widths / widths.sum()))]
    value = rng.uniform(scale(low), scale(high))
    return float(np.exp(value) if log else value)


def _drawn_finish(wave: np.ndarray, ranges: dict, rng, noise: str = "noise") -> np.ndarray:
    """Noise at a level of `ranges[noise]`, clipped to [-1, 1], float32; two channels ([samples, 2], each with its
    own gain and noise) for the `stereo` share of the sounds."""
    level = draw(rng, ranges[noise])
    if rng.uniform() < ranges["stereo"]:
        gains = rng.uniform(0.7, 1.0, 2)
        wave = np.stack([g * wave + rng.normal(0, level, wave.size) for g in gains], axis=1)
    else:
        wave = wave + rng.normal(0, level, wave.size)
    return np.clip(wave, -1, 1).astype(np.float32)


def _clip_seconds(needed: float, ranges: dict, rng) -> float:
    """A sound's whole length: log-uniform over the ranges' lengths that hold `needed` s and 50 ms more."""
    fits = [(max(low, needed + 0.05), high) for low, high in ranges["seconds"] if high > needed + 0.06]
    return draw(rng, fits or [(needed + 0.05, needed + 0.06)], log=True)


def _beep_lengths(count: int, ranges: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    """The lengths of `count` beeps and of the gaps between them, in s."""
    durations = np.array([draw(rng, ranges["beep"]) for _ in range(count)])
    return durations, np.array([draw(rng, ranges["gap"]) for _ in range(count - 1)])


def _beeps_in_drawn_length(count: int, ranges: dict, rng) -> tuple[float, np.ndarray, np.ndarray]:
    """A sound's whole length drawn first, log-uniformly over all of the ranges' lengths, then beeps and gaps drawn
    until they fit in it (a new length after 200 tries): where every count fits, the length says nothing about it."""
    while True:
        total = draw(rng, ranges["seconds"], log=True)
        for _ in range(200):
            durations, gaps = _beep_lengths(count, ranges, rng)
            if durations.sum() + gaps.sum() + 0.05 <= total:
                return total, durations, gaps


def _drawn_beeps(count: int, rate: int, ranges: dict, rng) -> np.ndarray:
    """`count` beeps of the ranges' lengths, gaps, pitches (one each) and loudness, somewhere in a sound of the
    ranges' lengths, with noise all through. The sound's length is drawn after the beeps, among the lengths that hold
    them (`_clip_seconds`: more beeps, longer sounds), or first where the ranges set `length_first`
    (`_beeps_in_drawn_length`)."""
    if ranges["length_first"]:
        total, durations, gaps = _beeps_in_drawn_length(count, ranges, rng)
    else:
        durations, gaps = _beep_lengths(count, ranges, rng)
        total = _clip_seconds(durations.sum() + gaps.sum(), ranges, rng)
    start = rng.uniform(0.02, total - 0.02 - durations.sum() - gaps.sum())
    wave = np.zeros(int(total * rate))
    amplitude = draw(rng, ranges["amplitude"])
    for i in range(count):
        n = int(durations[i] * rate)
        at = int(start * rate)
        wave[at : at + n] += amplitude * _tone(draw(rng, ranges["beep_hz"]), n, rate, rng)
        start += durations[i] + (gaps[i] if i < count - 1 else 0)
    return _drawn_finish(wave, ranges, rng)


def _drawn_pitch_tone(high: bool, rate: int, ranges: dict, rng) -> np.ndarray:
    """One tone of the ranges' lengths and loudness, from the high or the low range, somewhere in a sound of the
    ranges' lengths."""
    duration = draw(rng, ranges["tone"])
    total = _clip_seconds(duration, ranges, rng)
    n, at = int(duration * rate), int(rng.uniform(0, total - duration) * rate)
    wave = np.zeros(int(total * rate))
    wave[at : at + n] = draw(rng, ranges["amplitude"]) * _tone(
        draw(rng, ranges["high_hz" if high else "low_hz"]), n, rate, rng
    )
    return _drawn_finish(wave, ranges, rng)


def _drawn_speech(digit: int, split: str, rate: int, ranges: dict, rng) -> tuple[np.ndarray, int]:
    """A clip of a speaker of `split`, with 0-300 ms of silence each side and the ranges' speed, level and noise."""
    speaker = int(rng.choice(SPEECH_SPEAKERS[split]))
    pads = (rng.uniform(0, 0.3, 2) * SAMPLING_RATE).astype(int)
    wave = np.pad(speech_clip(digit, speaker).astype(np.float64), tuple(pads))
    wave = resample(wave, int(round(SAMPLING_RATE * draw(rng, ranges["speed"]))), rate).astype(np.float64)
    wave *= draw(rng, ranges["speech_gain"]) / max(np.abs(wave).max(), 1e-6)
    return _drawn_finish(wave, ranges, rng, noise="speech_noise"), speaker


def _canvas(width: int, height: int, ranges: dict, rng) -> np.ndarray:
    """An empty canvas: white, a light grey or a light tint of a random colour, with still pixel noise."""
    kind = str(rng.choice(ranges["background"]))
    if kind == "white":
        rgb = np.array([255, 255, 255])
    elif kind == "grey":
        rgb = np.full(3, round(draw(rng, ranges["grey"])))
    else:
        white = draw(rng, ranges["tint"])
        rgb = np.round(white * 255 + (1 - white) * rng.integers(0, 256, 3))
    pixels = np.broadcast_to(rgb.astype(float), (height, width, 3))
    pixels = pixels + rng.normal(0, draw(rng, ranges["pixel_noise"]), pixels.shape)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def _canvas_size(side: int | None, key: str, ranges: dict, rng) -> tuple[int, int, int]:
    """(width, height, shorter side) of a canvas: `side` x `side` when given, else of the ranges' sizes and aspects."""
    if side is not None:
        return side, side, side
    short, aspect = round(draw(rng, ranges[key])), draw(rng, ranges["aspect"])
    width, height = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
    return width, height, short


def _outline(size: int, short: int, ranges: dict, rng) -> int:
    """0 (filled) for 60 % of the shapes, else an outline of the ranges' share of the size, at least 3 % of the
    canvas's shorter side (so that it survives the resize to the model's image size)."""
    if rng.uniform() >= 0.4:
        return 0
    return max(1, round(draw(rng, ranges["outline"]) * size), round(0.03 * short))


MAX_SHAPE = (1.0, 0.36, 0.31)  # the largest shape box (share of the canvas's shorter side) for 1, 2 or 3 shapes


def _drawn_shapes_image(color: str, kind: str, count: int, side: int | None, ranges: dict, rng) -> Image.Image:
    """`count` non-overlapping shapes of one kind and colour (all filled or all outlined) on a canvas of the ranges'
    sizes, aspects and backgrounds. The shapes lie in the canvas's central square, the part CLIP's centre crop keeps."""
    width, height, short = _canvas_size(side, "canvas", ranges, rng)
    origin = ((width - short) // 2, (height - short) // 2)
    sizes = [(low, min(high, MAX_SHAPE[count - 1])) for low, high in ranges["shape"] if low < MAX_SHAPE[count - 1]]
    boxes = None
    while boxes is None:  # almost always the first try
        boxes = _place([max(4, round(draw(rng, sizes) * short)) for _ in range(count)], short, origin, rng,
                       gap=max(2, short // 16))  # fmt: skip
    pixels = _canvas(width, height, ranges, rng)
    rgb, outline = _shade(color, rng), _outline(min(size for _, _, size in boxes), short, ranges, rng)
    for x, y, size in boxes:
        pixels[y : y + size, x : x + size][_shape_mask(kind, size, outline)] = rgb
    return Image.fromarray(pixels)


def _drawn_moving_shape(direction: str, side: int | None, ranges: dict, rng) -> list[Image.Image]:
    """One shape moving in a straight line across the canvas's central square, over the ranges' frame counts,
    travel and sizes, on a still background."""
    width, height, short = _canvas_size(side, "video_canvas", ranges, rng)
    num_frames = round(draw(rng, ranges["frames"]))
    size = max(4, round(draw(rng, ranges["video_shape"]) * short))
    travel = min(round(draw(rng, ranges["travel"]) * short), short - size - 3)
    mask = _shape_mask(str(rng.choice(SHAPES)), size, _outline(size, short, ranges, rng))
    rgb = _shade(str(rng.choice(list(COLORS))), rng)
    background = _canvas(width, height, ranges, rng)
    left, top = (width - short) // 2, (height - short) // 2
    along = int(rng.integers(1, short - size - travel))  # start on the axis of motion
    across = int(rng.integers(1, short - size))
    frames = []
    for i in range(num_frames):
        step = round(travel * i / (num_frames - 1))
        offset = along + step if direction in ("right", "down") else along + travel - step
        x, y = (left + offset, top + across) if direction in ("left", "right") else (left + across, top + offset)
        pixels = background.copy()
        pixels[y : y + size, x : x + size][mask] = rgb
        frames.append(Image.fromarray(pixels))
    return frames
