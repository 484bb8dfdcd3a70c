"""Test media written on the fly (PIL images, sine waves through soundfile, small videos through PyAV) and tiny
processors. Nothing is downloaded."""

import functools

import numpy as np
from PIL import Image

from modeling_unimoe import UniMoEConfig
from modeling_unimoe.processing.export import build_processor, build_tiny_processor_tokenizer, processor_from_config


SR = 16_000

# The tiny preset without one tower or another (the released variants' shapes, at tiny size)
VARIANTS = {
    "all": {},
    "speech_only": dict(sound_config=None, sound_qformer_config=None, sound_token_id=None),
    # the released "audio" variant: BEATs behind `<audio>` (id 4), no Whisper
    "sound_only": dict(speech_config=None, speech_token_id=None, sound_token_id=4),
    "vision_only": dict(
        speech_config=None, sound_config=None, sound_qformer_config=None, speech_token_id=None, sound_token_id=None
    ),
}


def tiny_config(variant: str = "all", **overrides) -> UniMoEConfig:
    return UniMoEConfig.from_preset("tiny", **{**VARIANTS[variant], **overrides})


@functools.lru_cache(maxsize=8)
def tiny_processor(variant: str = "all", **overrides):
    """The processor of a tiny variant (cached: build once per test session). Overrides go to the processor."""
    config = tiny_config(variant)
    processor = build_processor(config, build_tiny_processor_tokenizer(config))
    if overrides:
        processor = processor_from_config(config, processor.tokenizer, processor.chat_template, **overrides)
    return processor


def sine(seconds: float, sr: int = SR, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def color_image(color=(255, 0, 0), size=(80, 60)) -> Image.Image:
    return Image.new("RGB", size, color)


def write_image(path, color=(255, 0, 0), size=(80, 60), format=None) -> str:
    color_image(color, size).save(path, format=format)
    return str(path)


def write_audio(path, waveform, sr: int = SR, format=None, subtype=None) -> str:
    import soundfile

    soundfile.write(str(path), waveform, sr, format=format, subtype=subtype)
    return str(path)


def write_m4a(path, waveform, sr: int = SR) -> str:
    """AAC in an MP4 container: soundfile cannot read it, PyAV can."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sr)
        stream.layout = "mono"
        samples = np.asarray(waveform, np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return str(path)


def frame_values(num_frames: int) -> list[int]:
    return [(i * 23) % 256 for i in range(num_frames)]


def video_frames(num_frames: int, size: int = 32) -> list[np.ndarray]:
    """Frames of one flat gray level each, frame i at level frame_values(n)[i]."""
    return [np.full((size, size, 3), value, np.uint8) for value in frame_values(num_frames)]


def write_video(path, num_frames: int = 12, size: int = 32, fps: int = 10, codec: str = "mpeg4") -> str:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for frame in video_frames(num_frames, size):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def write_garbage(path, size: int = 2000, header: bytes = b"", seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as handle:
        handle.write(header + rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    return str(path)


def truncated_copy(source, path, keep: float = 0.3) -> str:
    data = open(source, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: max(1, int(len(data) * keep))])
    return str(path)
