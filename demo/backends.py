# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Who writes the demo's answers: the model in this process (`TransformersBackend`, which also runs the experts
panel's routing pass), or a running vLLM server of the same model (`VLLMBackend`, its OpenAI chat API).

Both stream an answer with `stream(messages, inputs, max_new_tokens, temperature)`: the chat messages (content blocks
with file paths) and the processor's encoding of them; each backend reads the one it needs. A request the backend
refuses raises `RequestRefusedError` (its message is for the user); a failure while answering raises
`GenerationError` (its message says where the details are).
"""

from __future__ import annotations

import base64
import json
import mimetypes
import threading
import traceback
from pathlib import Path

from media import DemoInputError

from modeling_unimoe.training.routing import routing_report


class RequestRefusedError(Exception):
    """The backend refused a request (a vLLM server's HTTP 4xx): `message` is its reason (for Uni-MoE media, the
    processor's)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class GenerationError(RuntimeError):
    """The backend failed while answering; the message is for the user, the traceback is in the server log."""


class TransformersBackend:
    """The model in this process. One model call at a time: generation threads and routing passes share the
    weights."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor
        self.lock = threading.Lock()

    def stream(self, messages: list[dict], inputs, max_new_tokens: int, temperature: float):
        """Yields the answer's text pieces of `model.generate` on `inputs` (greedy at temperature 0), generated in a
        thread; raises GenerationError when generate fails."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(
            self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600
        )
        sampling = temperature > 0
        generate_kwargs = dict(
            inputs.to(self.model.device),
            streamer=streamer,
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            **({"temperature": temperature, "top_p": 1.0, "top_k": 0} if sampling else {}),
        )
        failure = []

        def generate():
            try:
                with self.lock:
                    self.model.generate(**generate_kwargs)
            except Exception as error:  # reported by the consumer below, logged here with its traceback
                traceback.print_exc()
                failure.append(error)
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if failure:
            raise GenerationError(
                f"The model failed while answering ({type(failure[0]).__name__}); the server log has the details. "
                "Try again, or ask something else."
            )

    def routing(self, inputs, prefix_length: int) -> dict:
        """The experts panel's report of one prompt (`training.routing.routing_report`)."""
        with self.lock:
            return routing_report(self.model, self.processor, [inputs.to(self.model.device)], prefix_length)


def _data_url(path: str) -> str:
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


def openai_messages(messages: list[dict]) -> list[dict]:
    """Chat messages with the processor's content blocks ({"type": "image" | "video" | "audio", "path"} and text) ->
    OpenAI chat messages: media as data URLs in image_url / video_url / input_audio parts."""
    converted = []
    for message in messages:
        parts = []
        for block in message["content"]:
            kind = block["type"]
            if kind == "text":
                parts.append({"type": "text", "text": block["text"]})
            elif kind in ("image", "video"):
                parts.append({"type": f"{kind}_url", f"{kind}_url": {"url": _data_url(block["path"])}})
            elif kind == "audio":
                data = _data_url(block["path"]).split(",", 1)[1]
                audio_format = Path(block["path"]).suffix.lstrip(".").lower() or "wav"
                parts.append({"type": "input_audio", "input_audio": {"data": data, "format": audio_format}})
            else:
                raise DemoInputError(f"The vLLM backend cannot send a {kind!r} block; expected image, video or audio.")
        converted.append({"role": message["role"], "content": parts})
    return converted


class VLLMBackend:
    """A running vLLM server's OpenAI chat completions API (`url` ends in /v1), streamed."""

    def __init__(self, url: str, timeout: float = 600):
        import httpx

        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, timeout=timeout)
        try:
            response = self.client.get("/models", timeout=10)
            response.raise_for_status()
            served = response.json()["data"][0]
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as error:
            raise ConnectionError(
                f"no vLLM server answers at {self.url} ({type(error).__name__}: {error}). Start one (`make serve` in "
                "the uni-moe repository serves the embedded model on http://127.0.0.1:8000/v1) or fix --url."
            ) from None
        self.model = served["id"]
        self.max_model_len = int(served.get("max_model_len") or 0) or None

    def stream(self, messages: list[dict], inputs, max_new_tokens: int, temperature: float):
        """Yields the answer's text pieces; raises RequestRefusedError when the server refuses the request and
        GenerationError when it fails."""
        body = {
            "model": self.model,
            "messages": openai_messages(messages),
            "max_tokens": max_new_tokens,
            "temperature": temperature,
            "stream": True,
        }
        try:
            with self.client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    try:
                        message = response.json()["error"]["message"]
                    except (ValueError, KeyError, TypeError):
                        message = response.text
                    if 400 <= response.status_code < 500:
                        raise RequestRefusedError(response.status_code, message)
                    raise RuntimeError(f"HTTP {response.status_code}: {message}")
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choices = json.loads(line[len("data: ") :]).get("choices") or [{}]
                    piece = (choices[0].get("delta") or {}).get("content")
                    if piece:
                        yield piece
        except RequestRefusedError:
            raise
        except Exception as error:
            traceback.print_exc()
            raise GenerationError(
                f"The vLLM server failed while answering ({type(error).__name__}); the server log has the details. "
                "Try again, or ask something else."
            ) from None
