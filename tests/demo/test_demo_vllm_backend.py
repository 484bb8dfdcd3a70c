"""The demo's vLLM backend against a fake OpenAI-compatible server: flags, streamed answers, media as data URLs,
history and audio, refusals."""

import pytest

from tests.helpers import TINY_CHECKPOINT, needs_tiny_checkpoint


pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

import app  # noqa: E402  (demo/: tests/conftest.py puts it on the path)
import backends  # noqa: E402
import ui  # noqa: E402
from chat import ERROR_MARK  # noqa: E402

from tests.demo.test_demo import ask, free_port  # noqa: E402


pytestmark = needs_tiny_checkpoint


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(TINY_CHECKPOINT), trust_remote_code=True)


# ------------------------------------------------------------------------------ vLLM backend, against a fake server


class FakeOpenAIServer:
    """A stand-in for a vLLM server's OpenAI API on 127.0.0.1: /v1/models, and /v1/chat/completions streaming
    `ANSWER` in pieces (server-sent events), or HTTP 400 with `REFUSAL` when the question contains "refuse". Keeps
    every request body."""

    ANSWER = ["The ", "shape ", "is ", "red."]
    REFUSAL = "Video 0 (/srv/uploads/short.mp4) has 2 frames but the model samples 8 frames per video."

    def __init__(self):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.bodies = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: bytes, content_type: str):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                models = {"object": "list", "data": [{"id": "fake-uni-moe", "max_model_len": 512}]}
                self._send(200, json.dumps(models).encode(), "application/json")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.bodies.append(body)
                question = body["messages"][-1]["content"][-1].get("text", "")
                if "refuse" in question:
                    error = {"error": {"message": fake.REFUSAL, "type": "BadRequestError", "code": 400}}
                    self._send(400, json.dumps(error).encode(), "application/json")
                    return
                chunks = [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in fake.ANSWER]
                events = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
                self._send(200, events.encode(), "text/event-stream")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fake_vllm():
    server = FakeOpenAIServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def vllm_demo_url(fake_vllm, processor):
    """The demo with the vLLM backend on the fake server, in this process (no model weights are loaded)."""
    demo = ui.build_demo(None, processor, title="Uni-MoE (vLLM)", backend=backends.VLLMBackend(fake_vllm.url))
    demo.queue(max_size=8, default_concurrency_limit=8)
    _, url, _ = demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, ssr_mode=False
    )
    yield url
    demo.close(verbose=False)


def test_vllm_backend_flags():
    args = app.get_args(["--backend", "vllm", "--url", "http://127.0.0.1:8000/v1"], environ={})
    assert (args.backend, args.url, args.concurrency) == ("vllm", "http://127.0.0.1:8000/v1", 32)
    assert app.get_args([], environ={}).backend == "transformers"
    args = app.get_args([], environ={"UNIMOE_DEMO_BACKEND": "vLLM", "UNIMOE_DEMO_VLLM_URL": "http://h:1/v1"})
    assert (args.backend, args.url) == ("vllm", "http://h:1/v1")
    with pytest.raises(SystemExit):
        app.get_args(["--backend", "vllm"], environ={})  # no --url
    with pytest.raises(ConnectionError, match=r"no vLLM server answers at http://127\.0\.0\.1:\d+/v1 .*make serve"):
        backends.VLLMBackend(f"http://127.0.0.1:{free_port()}/v1")


def test_vllm_backend_streams_the_servers_answer_and_sends_media_as_data_urls(vllm_demo_url, fake_vllm, tmp_path):
    import base64

    from PIL import Image

    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (220, 30, 30)).save(image)
    answer, plot, context, outputs = ask(vllm_demo_url, "What color is the shape?", [image], use_history=False)
    assert answer == "The shape is red."
    assert len(outputs) >= 2 and outputs[0][0] != answer  # streamed: partial answers first
    assert plot is None and context.startswith("History off") and "Prompt: " in context
    body = fake_vllm.bodies[-1]
    assert (body["model"], body["max_tokens"], body["temperature"], body["stream"]) == ("fake-uni-moe", 8, 0.0, True)
    (message,) = body["messages"]
    image_part, text_part = message["content"]
    assert text_part == {"type": "text", "text": "What color is the shape?"}
    prefix, data = image_part["image_url"]["url"].split(",", 1)
    assert image_part["type"] == "image_url" and prefix == "data:image/png;base64"
    assert base64.b64decode(data) == image.read_bytes()


def test_vllm_backend_sends_history_and_audio(vllm_demo_url, fake_vllm, tmp_path):
    import numpy as np
    import soundfile

    sound = tmp_path / "beep.wav"
    soundfile.write(sound, np.zeros(8000, np.float32), 16000)
    client = gradio_client.Client(vllm_demo_url, verbose=False)
    ask(vllm_demo_url, "What is this sound?", [sound], audio_is="sound", client=client)
    ask(vllm_demo_url, "And again?", client=client)
    first, reply, second = fake_vllm.bodies[-1]["messages"]
    # audio goes to the `<audio>` path (vLLM's chat API has one audio kind), whatever "Audio is" says
    assert first["content"][0]["type"] == "input_audio" and first["content"][0]["input_audio"]["format"] == "wav"
    assert reply == {"role": "assistant", "content": [{"type": "text", "text": "The shape is red."}]}
    assert second["content"] == [{"type": "text", "text": "And again?"}]


def test_vllm_backend_refusal_is_shown_and_the_demo_keeps_serving(vllm_demo_url, fake_vllm):
    answer, plot, context, _ = ask(vllm_demo_url, "Please refuse this.", use_history=False)
    assert answer == f"{ERROR_MARK} Video 0 (short.mp4) has 2 frames but the model samples 8 frames per video."
    assert context == "This message was not answered."
    assert ask(vllm_demo_url, "What now?", use_history=False)[0] == "The shape is red."
