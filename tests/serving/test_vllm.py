"""vLLM serving (serving/): greedy tokens from vLLM equal transformers' `generate` for every modality on the embedded
checkpoints/uni-moe-tiny; the OpenAI server answers through the `openai` client and refuses bad media with HTTP 400.

vLLM pins its own transformers, so it runs in its own venv (build/venvs/vllm, `python -m serving.venv`, about 3 GB);
these tests are marked slow and skipped without it. The sound-only variant below splits attention into heads of 16,
below what vLLM's CPU attention supports: serving.vllm_model pads them (its parity is the check that the padding
changes nothing).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import REPO, TINY_CHECKPOINT


VLLM_PYTHON = REPO / "build" / "venvs" / "vllm" / "bin" / "python"
VLLM_TIMEOUT = 900  # seconds for one vLLM process (engine start is about a minute on 2 busy cores)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not VLLM_PYTHON.exists(),
        reason=f"no vLLM venv at {VLLM_PYTHON.parent.parent}: make it with `python -m serving.venv` (about 3 GB)",
    ),
]


# --- inputs ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path | list[Path]]:
    """Two images, 8 video frames (PNG and MP4), a 2-frame MP4, a 2 s and a 7 s waveform (16 kHz)."""
    import av
    import soundfile
    from PIL import ImageDraw

    folder = tmp_path_factory.mktemp("media")
    files = {}
    for name, color in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        image = Image.new("RGB", (64, 64), color)
        ImageDraw.Draw(image).ellipse((10, 10, 50, 50), fill=(250, 250, 250))
        image.save(folder / f"{name}.png")
        files[name] = folder / f"{name}.png"
    frames = [np.full((64, 64, 3), (30 * i, 100, 200 - 20 * i), np.uint8) for i in range(8)]
    files["frames"] = []
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame{i}.png")
        files["frames"].append(folder / f"frame{i}.png")
    for name, count in (("video8", 8), ("video2", 2)):
        with av.open(str(folder / f"{name}.mp4"), "w") as container:
            stream = container.add_stream("mpeg4", rate=4)
            stream.width = stream.height = 64
            stream.pix_fmt = "yuv420p"
            for frame in frames[:count]:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        files[name] = folder / f"{name}.mp4"
    for name, seconds in (("audio2s", 2.0), ("audio7s", 7.0)):  # 1 and 3 chunks of the tiny model's 3 s
        t = np.arange(int(16000 * seconds)) / 16000
        soundfile.write(
            folder / f"{name}.wav", (0.3 * np.sin(2 * np.pi * (200 + 100 * t) * t)).astype(np.float32), 16000
        )
        files[name] = folder / f"{name}.wav"
    return files


def _requests(media) -> dict[str, dict]:
    """Prompts of each modality (and mixed), with their media, as serving.offline reads them. `<audio>` is speech
    (Whisper) and `<sound>` sound (BEATs) in the tiny model."""
    frames = [str(p) for p in media["frames"]]
    return {
        "text": {"prompt": "USER: hello there, what is red? ASSISTANT:"},
        "image": {"prompt": "USER: <image>\nWhat is this? ASSISTANT:", "images": [str(media["red"])]},
        "image_blue": {"prompt": "USER: <image>\nWhat is this? ASSISTANT:", "images": [str(media["blue"])]},
        "two_images": {
            "prompt": "USER: <image> and <image>\nCompare. ASSISTANT:",
            "images": [str(media["red"]), str(media["blue"])],
        },
        "video": {"prompt": "USER: <video>\nWhat happens? ASSISTANT:", "videos": [frames]},
        "audio": {"prompt": "USER: <audio>\nWhat is said? ASSISTANT:", "audios": [str(media["audio2s"])]},
        "long_audio": {"prompt": "USER: <audio>\nWhat is said? ASSISTANT:", "audios": [str(media["audio7s"])]},
        "sound": {"prompt": "USER: <sound>\nWhat is this sound? ASSISTANT:", "sounds": [str(media["audio2s"])]},
        "long_sound": {"prompt": "USER: <sound>\nWhat is this sound? ASSISTANT:", "sounds": [str(media["audio7s"])]},
        "image_and_audio": {
            "prompt": "USER: <image> <audio>\nDescribe. ASSISTANT:",
            "images": [str(media["red"])],
            "audios": [str(media["audio2s"])],
        },
        "all_modalities": {
            "prompt": "USER: <image>\n<video>\n<audio>\n<sound>\nDescribe everything. ASSISTANT:",
            "images": [str(media["blue"])],
            "videos": [frames],
            "audios": [str(media["audio7s"])],
            "sounds": [str(media["audio2s"])],
        },
    }


# --- runs ------------------------------------------------------------------------------------------------------------


NEW_TOKENS = 16  # exactly (end of sequence suppressed before): the tiny model's own answers are a few tokens long


def _sound_only_model(folder: Path) -> Path:
    """The embedded model in the released audio variant's layout: no speech tower, `<audio>` goes through BEATs and
    the Q-Former (its trained weights, less the speech tower's). Its attention reads the same q, k, v and o weights
    as 4 heads of 16 instead of 2 of 32: a head size vLLM's CPU attention does not support."""
    from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM
    from modeling_unimoe.processing.export import add_custom_pipeline, save_tiny_processor

    tiny = UniMoEForCausalLM.from_pretrained(TINY_CHECKPOINT, dtype=torch.float32)
    config = tiny.config.to_dict()
    assert config["text_config"]["num_attention_heads"] * config["text_config"]["head_dim"] == 64
    text_config = {**config["text_config"], "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16}
    config = UniMoEConfig.from_dict(
        {**config, "text_config": text_config, "speech_config": None, "speech_token_id": None, "sound_token_id": 4}
    )
    model = UniMoEForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(tiny.state_dict(), strict=False)
    assert not missing and all(".speech_" in key for key in unexpected), (missing, unexpected)
    model.save_pretrained(folder)
    save_tiny_processor(config, folder)
    add_custom_pipeline(folder)
    return folder


def _vllm_tokens(model: Path, requests: list[dict], tmp_path: Path, *extra: str) -> list[list[int]]:
    requests_file, out = tmp_path / "requests.json", tmp_path / "tokens.json"
    requests_file.write_text(json.dumps(requests))
    command = [str(VLLM_PYTHON), "-m", "serving.offline", str(model), "--requests", str(requests_file)]
    command += ["--max-tokens", str(NEW_TOKENS), "--min-tokens", str(NEW_TOKENS), "--out", str(out), *extra]
    # tensor parallel on CPU: vLLM binds each worker's threads to a NUMA node unless told which cores to use; one
    # core per worker here
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "0|1")}
    env = env if "--tensor-parallel-size" in extra else None
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=VLLM_TIMEOUT, env=env)
    assert result.returncode == 0, f"serving.offline failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return json.loads(out.read_text())["tokens"]


def _transformers_tokens(model_dir: Path, requests: list[dict]) -> list[list[int]]:
    """Greedy `generate` with the folder's own remote code and processor (the demo's path)."""
    import soundfile
    from transformers import AutoModelForCausalLM, AutoProcessor

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    tokens = []
    for request in requests:
        images = [Image.open(p).convert("RGB") for p in request.get("images", [])] or None
        videos = [np.stack([np.asarray(Image.open(p).convert("RGB")) for p in v]) for v in request.get("videos", [])]
        audio = [soundfile.read(p, dtype="float32")[0] for p in request.get("audios", [])] or None
        sound = [soundfile.read(p, dtype="float32")[0] for p in request.get("sounds", [])] or None
        inputs = processor(
            text=request["prompt"], images=images, videos=videos or None, audio=audio, sound=sound, return_tensors="pt"
        )
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        tokens.append(output[0, inputs["input_ids"].shape[1] :].tolist())
    return tokens


def _both(model: Path, requests: dict[str, dict], tmp_path: Path, *extra: str) -> dict[str, tuple[list, list]]:
    names = list(requests)
    ours = _vllm_tokens(model, [requests[n] for n in names], tmp_path, *extra)
    reference = _transformers_tokens(model, [requests[n] for n in names])
    return {name: (v, t) for name, v, t in zip(names, ours, reference, strict=True)}


@pytest.fixture(scope="module")
def tiny_tokens(media, tmp_path_factory):
    return _both(TINY_CHECKPOINT, _requests(media), tmp_path_factory.mktemp("tiny-run"))


@pytest.fixture(scope="module")
def sound_model_tokens(media, tmp_path_factory):
    model = _sound_only_model(tmp_path_factory.mktemp("models") / "uni-moe-tiny-sound-only")
    requests = {k: v for k, v in _requests(media).items() if k in ("text", "image", "audio", "long_audio")}
    return _both(model, requests, tmp_path_factory.mktemp("sound-run"))


# --- offline engine: same greedy tokens as transformers --------------------------------------------------------------

NAMES = [
    "text",
    "image",
    "image_blue",
    "two_images",
    "video",
    "audio",
    "long_audio",
    "sound",
    "long_sound",
    "image_and_audio",
    "all_modalities",
]


@pytest.mark.parametrize("name", NAMES)
def test_vllm_greedy_tokens_equal_transformers(tiny_tokens, name):
    ours, reference = tiny_tokens[name]
    assert len(reference) == NEW_TOKENS
    assert ours == reference


@pytest.mark.parametrize("name", ["text", "image", "audio", "long_audio"])
def test_vllm_sound_only_layout_tokens_equal_transformers(sound_model_tokens, name):
    """`<audio>` through BEATs and the Q-Former (the released audio variant's layout)."""
    ours, reference = sound_model_tokens[name]
    assert ours == reference


def test_tensor_parallel_2_gives_the_same_tokens(tiny_tokens, media, tmp_path):
    """Tensor parallel 2 on vLLM's CPU build (two workers, one core each): the attention heads, the dense MLPs and the
    experts are split across the workers."""
    names = ["text", "image", "audio", "sound", "all_modalities"]
    requests = _requests(media)
    ours = _vllm_tokens(TINY_CHECKPOINT, [requests[n] for n in names], tmp_path, "--tensor-parallel-size", "2")
    assert ours == [tiny_tokens[n][1] for n in names]


def test_media_change_the_answer(tiny_tokens):
    """The parity above is not vacuous: the answers depend on the media."""
    answers = {name: tuple(tiny_tokens[name][1]) for name in NAMES}
    assert answers["image"] != answers["text"]
    assert answers["image"] != answers["image_blue"]
    assert answers["audio"] != answers["sound"]
    assert len(set(answers.values())) >= len(NAMES) - 2, answers


# --- OpenAI-compatible server ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m serving.serve` on the embedded tiny model; yields its /v1 URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.serve", "--model", str(TINY_CHECKPOINT), "--port", str(port)],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the engine and worker processes end with it
        )
    try:
        deadline = time.monotonic() + VLLM_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not come up (exit {process.poll()}):\n{log.read_text()[-4000:]}")
            time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _chat(url: str, prompt: str, **media) -> dict:
    """serving.client in the vLLM venv (which has `openai`): {"status", "token_ids" | "message"}."""
    args = [str(VLLM_PYTHON), "-m", "serving.client", prompt, "--url", url]
    for kind, paths in media.items():
        for path in paths:
            args += [f"--{kind}", str(path)]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip(), f"serving.client printed nothing:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _transformers_chat(kind: str, path: Path, question: str) -> tuple[list[int], str]:
    """Greedy `generate` (16 new tokens at most) on a one-message chat through the processor's chat template: the
    new token ids and their text."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    model = AutoModelForCausalLM.from_pretrained(TINY_CHECKPOINT, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(TINY_CHECKPOINT, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": kind, "path": str(path)}, {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    return new_tokens, processor.decode(new_tokens, skip_special_tokens=True)


@pytest.mark.parametrize(
    "kind, name, question",
    [("image", "red", "What color is the shape?"), ("audio", "audio7s", "What is said?")],
)
def test_server_chat_equals_transformers_chat(server, media, kind, name, question):
    """An `openai` client chat with an image (or speech) gets transformers' greedy answer, token for token."""
    answer = _chat(server, question, **{kind: [media[name]]})
    assert answer["status"] == 200, answer
    tokens, text = _transformers_chat(kind, media[name], question)
    assert answer["token_ids"] == tokens
    assert answer["text"] == text


def test_server_answers_video(server, media):
    """Video files are decoded by vLLM (its own frame sampling), so only an answer is checked here; the frames'
    parity is in test_vllm_greedy_tokens_equal_transformers."""
    answer = _chat(server, "Describe it.", video=[media["video8"]])
    assert answer["status"] == 200, answer
    assert answer["token_ids"]


def test_server_refuses_bad_media_and_keeps_serving(server, media, tmp_path):
    not_an_image = tmp_path / "broken.png"
    not_an_image.write_bytes(b"this is not a PNG")
    refused = _chat(server, "What is this?", image=[not_an_image])
    assert refused["status"] == 400, refused
    assert "image" in refused["message"].lower()

    # a video shorter than the model's frame count: refused by UniMoEProcessor, with its message
    refused = _chat(server, "What happens?", video=[media["video2"]])
    assert refused["status"] == 400, refused
    assert "has 2 frames but the model samples 8 frames per video" in refused["message"]

    answered = _chat(server, "What is this?", image=[media["blue"]])
    assert answered["status"] == 200, answered


def test_demo_with_the_vllm_backend_answers_as_transformers(server, media):
    """demo/app.py's vLLM backend on the real server: an image question gets transformers' greedy answer."""
    gradio_client = pytest.importorskip("gradio_client")
    import app
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(TINY_CHECKPOINT, trust_remote_code=True)
    demo = app.build_demo(None, processor, backend=app.VLLMBackend(server))
    demo.queue()
    _, url, _ = demo.launch(
        server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True, ssr_mode=False
    )
    try:
        client = gradio_client.Client(url, verbose=False)
        message = {"text": "What color is the shape?", "files": [gradio_client.handle_file(str(media["red"]))]}
        answer, _, _ = client.predict(message, 0.0, 16, "auto", False, api_name="/chat")
    finally:
        demo.close(verbose=False)
    assert answer == _transformers_chat("image", media["red"], "What color is the shape?")[1].strip()
