# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE chat demo (Gradio): ask about images, videos, speech and sounds, and see which experts the tokens took.

    python demo/app.py                                    # http://127.0.0.1:7860, the default model (below)
    python demo/app.py --model org/uni-moe --revision COMMIT --port 8080   # a Hub id (pinned) or a local folder
    python demo/app.py --quantization 4bit                # bitsandbytes 4-bit (NF4) weights; 8bit: LLM.int8
    python demo/app.py --backend vllm --url http://127.0.0.1:8000/v1   # answers from a running vLLM server

This folder is also a Hugging Face Space as it stands; there, everything comes from environment variables:
  UNIMOE_DEMO_MODEL          Hub id or folder of the model (default: the checkout's checkpoints/uni-moe-tiny when
                             this file sits in the uni-moe repository, else the Hub id uni-moe/uni-moe-tiny)
  UNIMOE_DEMO_REVISION       branch, tag or commit of a Hub model (its remote code runs with trust_remote_code)
  UNIMOE_DEMO_QUANTIZATION   none (default), 4bit or 8bit
  UNIMOE_DEMO_BACKEND        transformers (default: the model runs in this process) or vllm
  UNIMOE_DEMO_VLLM_URL       the vLLM server's OpenAI API, e.g. http://127.0.0.1:8000/v1 (backend vllm)
  GRADIO_SERVER_NAME / GRADIO_SERVER_PORT   address and port (127.0.0.1 and 7860 when unset; a Space sets
                             0.0.0.0 and 7860). Flags, when given, win over the variables.

History: the chat endpoint `/chat` answers in the context of the earlier turns of its session (the UI's chat, or
one `gradio_client.Client`) while `use_history` is on (the default); with `use_history=False` it answers the
message alone. `gradio_client.Client(url).predict({"text": ..., "files": [handle_file(path)]}, temperature,
max_new_tokens, audio_is, use_history, api_name="/chat")` returns (answer, experts plot, context), the context
saying which earlier turns the answer saw. When earlier turns do not fit the model's context (the prompt plus the
new tokens), the oldest exchanges and their files are left out first, and the answer starts with a line saying so
(marked with ℹ️). Typed text stays text: placeholder strings such as `<image>` and the tokenizer's special tokens
such as `</s>` get an invisible word joiner (U+2060) after their first character, so the model reads the characters
(`<`, U+2060, `image>`), never a media slot or an end of turn.

Audio files and microphone recordings go to the speech path (Whisper) or the sound path (BEATs) as the "Audio is"
control says: "auto" (the default) takes speech when the question is about what is said (say, said, spoken, word,
number, digit, transcribe, speech, voice, language) and sound otherwise; "speech" and "sound" force a path. Models
with one audio path use it whatever the control says.

The experts panel shows, for the last answer, the share of each modality's tokens (image, video, speech, sound and
text positions of the prompt, system prompt excluded) that the top-k router sent to each expert, per MoE layer: one
forward pass over the prompt with `output_router_logits=True` (experts_panel.py, beside this file).

Backend vllm: the answers come from a running vLLM server of the same model (`python -m serving.serve` in the
uni-moe repository, `make serve`): continuous batching answers many users at once. The demo still loads the model's
processor (not its weights): it checks the files and fits the history to the server's context (`max_model_len`) before
sending the chat as OpenAI content parts (media as data URLs). Audio goes to the model's `<audio>` path (vLLM's chat
API has one audio kind, so "Audio is" is not offered), and there is no experts panel (the weights are in the server).

Uploads and experts plots live in one temporary folder (gradio's cache) and are deleted `--keep-files` seconds
after they were made and all at exit (the folder too, unless GRADIO_TEMP_DIR names one of your own).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import mimetypes
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path


HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # experts_panel.py sits beside this file (a Space runs it from this folder)
    sys.path.insert(0, str(HERE))

MODEL_VARIABLE = "UNIMOE_DEMO_MODEL"
REVISION_VARIABLE = "UNIMOE_DEMO_REVISION"
QUANTIZATION_VARIABLE = "UNIMOE_DEMO_QUANTIZATION"
HOST_VARIABLE = "GRADIO_SERVER_NAME"
PORT_VARIABLE = "GRADIO_SERVER_PORT"
# where `python demo/publish.py` uploads checkpoints/uni-moe-tiny: the model a Space uses when UNIMOE_DEMO_MODEL is
# unset
HUB_MODEL = "uni-moe/uni-moe-tiny"
CHECKOUT_MODEL = HERE.parent / "checkpoints" / "uni-moe-tiny"  # the embedded model, when this is the repository
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
QUANTIZATIONS = ("none", "4bit", "8bit")
BACKEND_VARIABLE = "UNIMOE_DEMO_BACKEND"
VLLM_URL_VARIABLE = "UNIMOE_DEMO_VLLM_URL"
BACKENDS = ("transformers", "vllm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".m4a", ".aac", ".opus")
AUDIO_CHOICES = ("auto", "speech", "sound")
# left in full precision by 4-bit / 8-bit quantization: the media towers and their connectors (they cast inputs to
# their weights' dtype), the routers and the output head; the language model's attention and experts are quantized
QUANTIZATION_SKIP = ["lm_head", "mlp.gate", r"(?:model\.)?(?:vision|speech|sound)_(?:tower|projector|connector)"]
ERROR_MARK = "⚠️"  # starts the chat message of a request that failed; such turns are left out of later prompts
NOTE_MARK = "ℹ️"  # starts the paragraph of an answer that says which earlier turns were left out
WORD_JOINER = "\u2060"
SKIP = object()  # "unchanged" for an output of the demo's response generator
_SPEECH_QUESTION = re.compile(
    r"\b(say|says|said|saying|spoken|speak|speaks|speaker|word|words|number|digit|transcribe|transcript|speech|voice|"
    r"language)\b",
    re.IGNORECASE,
)
# absolute paths in error texts (server paths such as gradio's upload cache): shown as their last part
_ABSOLUTE_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s'\"/\\:]+)+[/\\]([^\s'\"/\\:]+)")


class DemoInputError(ValueError):
    """A chat message the demo cannot turn into model inputs (unknown file type, nothing asked)."""


# --------------------------------------------------------------------------------------------------------- settings


def _fail(message: str):
    """Stop with one line on stderr (exit status 1)."""
    raise SystemExit(f"Uni-MoE demo: {message}")


def get_args(argv=None, environ=None) -> argparse.Namespace:
    """The command line, completed from the environment (`environ`, default `os.environ`): flags win, then the
    variables, then the defaults. Adds `model_origin`, a phrase naming where the model came from, for messages."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        help=f"a Hub id or a local folder (default: ${MODEL_VARIABLE}, else the checkout's checkpoints/uni-moe-tiny, "
        f"else {HUB_MODEL})",
    )
    parser.add_argument("--revision", help=f"branch, tag or commit of a Hub model (default: ${REVISION_VARIABLE})")
    parser.add_argument(
        "--host", help=f"address to serve on, 0.0.0.0 for every interface (default: ${HOST_VARIABLE}, else 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, help=f"port to serve on (default: ${PORT_VARIABLE}, else 7860)")
    quantization = parser.add_mutually_exclusive_group()
    quantization.add_argument(
        "--quantization", choices=QUANTIZATIONS, help=f"bitsandbytes weights (default: ${QUANTIZATION_VARIABLE}, none)"
    )
    quantization.add_argument("--load-in-4bit", action="store_true", help="the same as --quantization 4bit")
    quantization.add_argument("--load-in-8bit", action="store_true", help="the same as --quantization 8bit")
    parser.add_argument(
        "--backend", choices=BACKENDS, help=f"who runs the model (default: ${BACKEND_VARIABLE}, else transformers)"
    )
    parser.add_argument(
        "--url", help=f"backend vllm: the server's OpenAI API, e.g. http://127.0.0.1:8000/v1 (${VLLM_URL_VARIABLE})"
    )
    parser.add_argument("--max-queue", type=int, default=32, help="requests waiting at most; more are refused")
    parser.add_argument(
        "--concurrency",
        type=int,
        help="requests processed at once (default: 2 with transformers, whose model calls queue; 32 with vllm)",
    )
    parser.add_argument("--max-file-size", default="50mb", help="largest upload, e.g. 50mb or 1gb")
    parser.add_argument(
        "--keep-files",
        type=int,
        default=3600,
        help="seconds an upload or experts plot stays on the server (all are deleted at exit); earlier turns whose "
        "files are gone are left out of later prompts",
    )
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    args = parser.parse_args(argv)
    if args.backend is None:
        value = environ.get(BACKEND_VARIABLE, "").strip().lower()
        if value not in ("", *BACKENDS):
            _fail(
                f"{BACKEND_VARIABLE} is {environ[BACKEND_VARIABLE]!r}; expected one of {', '.join(BACKENDS)}. Set it "
                "to one of these, or unset it for transformers."
            )
        args.backend = value or "transformers"
    if args.url is None:
        args.url = environ.get(VLLM_URL_VARIABLE, "").strip() or None
    if args.backend == "vllm" and not args.url:
        parser.error(
            f"--backend vllm needs the server's address: pass --url (or set {VLLM_URL_VARIABLE}), e.g. "
            "http://127.0.0.1:8000/v1 for `python -m serving.serve` of the uni-moe repository."
        )
    if args.backend == "vllm" and (args.quantization not in (None, "none") or args.load_in_4bit or args.load_in_8bit):
        parser.error("--quantization applies to the transformers backend: a vLLM server quantizes its own weights.")
    if args.concurrency is None:
        args.concurrency = 32 if args.backend == "vllm" else 2
    if args.max_queue < 1 or args.concurrency < 1:
        parser.error(f"--max-queue ({args.max_queue}) and --concurrency ({args.concurrency}) must be >= 1.")
    if args.keep_files < 1:
        parser.error(f"--keep-files is {args.keep_files}; expected a number of seconds >= 1.")

    if args.model:
        args.model_origin = "--model"
    elif environ.get(MODEL_VARIABLE, "").strip():
        args.model, args.model_origin = environ[MODEL_VARIABLE].strip(), MODEL_VARIABLE
    elif (CHECKOUT_MODEL / "config.json").is_file():
        args.model, args.model_origin = str(CHECKOUT_MODEL), "default"
    else:
        args.model, args.model_origin = HUB_MODEL, "default"
    if args.revision is None:
        args.revision = environ.get(REVISION_VARIABLE, "").strip() or None

    if args.load_in_4bit or args.load_in_8bit:
        args.quantization = "4bit" if args.load_in_4bit else "8bit"
    elif args.quantization is None:
        value = environ.get(QUANTIZATION_VARIABLE, "").strip().lower()
        if value not in ("", *QUANTIZATIONS):
            _fail(
                f"{QUANTIZATION_VARIABLE} is {environ[QUANTIZATION_VARIABLE]!r}; expected one of "
                f"{', '.join(QUANTIZATIONS)}. Set it to one of these, or unset it for full precision."
            )
        args.quantization = value or "none"

    if args.host is None:
        args.host = environ.get(HOST_VARIABLE, "").strip() or DEFAULT_HOST
    port_origin = "--port" if args.port is not None else PORT_VARIABLE
    if args.port is None:
        value = environ.get(PORT_VARIABLE, "").strip()
        if not value:
            args.port = DEFAULT_PORT
        elif not value.isdigit():
            _fail(f"{PORT_VARIABLE} is {value!r}; expected a port number such as 7860. Set it to one, or unset it.")
        else:
            args.port = int(value)
    if not 1 <= args.port <= 65535:
        _fail(f"{port_origin} is {args.port}; expected a port number from 1 to 65535 (e.g. 7860).")
    return args


def _origin_phrase(origin: str) -> str:
    if origin == "--model":
        return "from --model"
    if origin == MODEL_VARIABLE:
        return f"from the {MODEL_VARIABLE} variable"
    return f"the default; set {MODEL_VARIABLE} or pass --model to choose another"


def resolve_model(model: str, origin: str = "--model") -> str:
    """A local folder as an absolute path (a relative path is tried against the cwd, then the repository); else a
    Hub id (`name` or `org/name`)."""
    for candidate in (Path(model).expanduser(), HERE.parent / model):
        if candidate.is_dir():
            return str(candidate.resolve())
    if Path(model).is_absolute() or model.startswith((".", "~")) or model.count("/") > 1 or "\\" in model:
        _fail(
            f"the model {model!r} ({_origin_phrase(origin)}) is not a folder. Set {MODEL_VARIABLE} (or pass --model) "
            "to a folder holding config.json, the weights and the processor files, or to a Hub id such as org/name."
        )
    return model


def check_port(host: str, port: int) -> None:
    """Stop with one line if `host:port` cannot be served (in use, or not an address of this machine)."""
    address = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as error:
        _fail(
            f"cannot serve on {host!r}: {error.strerror}. Set --host (or {HOST_VARIABLE}) to an address of this "
            "machine: 127.0.0.1 for this machine only, 0.0.0.0 for every interface."
        )
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no block
        try:
            sock.bind((address, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                _fail(
                    f"port {port} on {host} is already in use (another server, or another demo still running). Stop "
                    f"it, or choose a free port with --port N (or {PORT_VARIABLE}=N)."
                )
            _fail(
                f"cannot serve on {host}:{port}: {error.strerror}. Set --host (or {HOST_VARIABLE}) to an address of "
                "this machine: 127.0.0.1 for this machine only, 0.0.0.0 for every interface."
            )


class _FirstOfEachMessage(logging.Filter):
    """Lets each distinct log message through once."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def quiet_repeated_warnings() -> None:
    """bitsandbytes' 8-bit matmul logs "MatMul8bitLt: inputs will be cast ..." on every call (each layer, each
    token): the demo prints each such message once."""
    target = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _FirstOfEachMessage) for f in target.filters):
        target.addFilter(_FirstOfEachMessage())


def load(
    model: str, revision: str | None = None, quantization: str = "none", origin: str = "--model", weights: bool = True
):
    """Model (eval mode) and processor of a Hub id or folder, through the Auto classes with remote code; with
    `weights=False` the processor alone (the model is None)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization is {quantization!r}; expected one of {', '.join(QUANTIZATIONS)}.")
    source = resolve_model(model, origin)
    is_folder = Path(source).is_dir()
    if revision and is_folder:
        _fail(
            f"a revision ({revision!r}, from --revision or {REVISION_VARIABLE}) pins a Hub model, but the model "
            f"{source!r} is a local folder. Drop the revision, or name the model by its Hub id."
        )
    if not is_folder and not revision:
        print(
            f"Note: {source} runs its remote code at the repository's latest revision; pin a commit with --revision "
            f"(or {REVISION_VARIABLE}).",
            file=sys.stderr,
            flush=True,
        )
    kwargs = {"trust_remote_code": True, "revision": revision}
    model_kwargs = dict(kwargs)
    if quantization != "none":
        from transformers import BitsAndBytesConfig

        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quantization == "4bit",
            load_in_8bit=quantization == "8bit",
            bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=QUANTIZATION_SKIP,
        )
        model_kwargs["device_map"] = "cuda:0" if torch.cuda.is_available() else "cpu"
        quiet_repeated_warnings()
    try:
        network = AutoModelForCausalLM.from_pretrained(source, **model_kwargs).eval() if weights else None
        processor = AutoProcessor.from_pretrained(source, **kwargs)
    except ImportError as error:
        _fail(
            f"{quantization} quantization needs a package that is missing ({str(error).splitlines()[0]}). Install "
            f"demo/requirements.txt, or set {QUANTIZATION_VARIABLE}=none."
        )
    except (OSError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        hint = (
            " Publish the tiny model there with `python demo/publish.py` (demo/README.md)."
            if source == HUB_MODEL
            else ""
        )
        _fail(
            f"could not load the model {source!r} ({_origin_phrase(origin)}): {reason} Set {MODEL_VARIABLE} (or pass "
            "--model) to a local folder holding config.json, the weights and the processor files, or to a Hub id "
            f"this machine can reach.{hint}"
        )
    if network is not None and "quantization_config" not in model_kwargs and torch.cuda.is_available():
        network = network.to("cuda")
    return network, processor


# ----------------------------------------------------------------------------------------------------- vLLM backend


class VLLMRequestError(Exception):
    """The vLLM server refused a request (HTTP 4xx): `message` is its reason (for Uni-MoE media, the processor's)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


def _data_url(path: str) -> str:
    import base64

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

    def stream(self, messages: list[dict], max_new_tokens: int, temperature: float):
        """Yields the answer's text pieces; raises VLLMRequestError when the server refuses the request."""
        body = {
            "model": self.model,
            "messages": openai_messages(messages),
            "max_tokens": max_new_tokens,
            "temperature": temperature,
            "stream": True,
        }
        with self.client.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                try:
                    message = response.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = response.text
                if 400 <= response.status_code < 500:
                    raise VLLMRequestError(response.status_code, message)
                raise RuntimeError(f"The vLLM server at {self.url} failed (HTTP {response.status_code}): {message}")
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[len("data: ") :]).get("choices") or [{}]
                piece = (choices[0].get("delta") or {}).get("content")
                if piece:
                    yield piece


# ------------------------------------------------------------------------------------------------------ chat helpers


@dataclass
class Exchange:
    """One earlier question (its texts and files) and its answer."""

    texts: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    answer: str = ""


def _file_path(item) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        if isinstance(item.get("file"), dict):
            return item["file"].get("path")
        return item.get("path")
    return getattr(item, "path", None)


def _media_kind(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    mime = (mimetypes.guess_type(path)[0] or "").split("/")[0]
    if mime in ("image", "video", "audio"):
        return mime
    raise DemoInputError(
        f"Cannot use the file {Path(path).name!r} (type {suffix or 'unknown'}): expected an image "
        f"({', '.join(IMAGE_SUFFIXES)}), a video ({', '.join(VIDEO_SUFFIXES)}) or audio ({', '.join(AUDIO_SUFFIXES)}). "
        "Convert it to one of these and upload it again."
    )


def _audio_block_type(processor, audio_is: str, question: str) -> str:
    """ "audio" (the `<audio>` placeholder) or "sound" (`<sound>`) for an audio file, as the "Audio is" control says."""
    if audio_is not in AUDIO_CHOICES:
        raise DemoInputError(f"'Audio is' was {audio_is!r}; expected one of {', '.join(AUDIO_CHOICES)}.")
    if processor.audio_path is None:
        raise DemoInputError("This model has no speech or sound tower, so it cannot take audio. Ask without audio.")
    if processor.sound_token_id is None:  # one audio path: `<audio>` goes to it (Whisper or BEATs)
        return "audio"
    if audio_is == "auto":
        audio_is = "speech" if _SPEECH_QUESTION.search(question or "") else "sound"
    return "audio" if audio_is == "speech" else "sound"


def control_strings(processor) -> list[str]:
    """The strings that typed text must not produce as tokens: the processor's placeholders and every added token of
    the tokenizer (special tokens such as `</s>`), longest first."""
    strings = set(getattr(processor.tokenizer, "get_added_vocab", dict)())
    for name in ("image_token", "video_token", "audio_token", "sound_token"):
        if getattr(processor, name, None):
            strings.add(getattr(processor, name))
    return sorted((s for s in strings if len(s) > 1 and not s.isspace()), key=len, reverse=True)


def escape_text(text: str, controls) -> str:
    """`text` with a word joiner (U+2060, invisible) after the first character of each control string in it, so
    that the tokenizer reads them as characters: a typed `<image>` is text, not a media placeholder."""
    if not controls or not text:
        return text
    pattern = re.compile("|".join(re.escape(s) for s in controls))
    return pattern.sub(lambda match: match.group()[0] + WORD_JOINER + match.group()[1:], text)


def _strip_note(answer: str) -> str:
    """An answer without the leading note paragraph (`NOTE_MARK ...`) the demo adds when turns were left out."""
    while answer.startswith(NOTE_MARK):
        answer = answer.split("\n\n", 1)[1] if "\n\n" in answer else ""
    return answer.strip()


def parse_history(history) -> list[Exchange]:
    """Gradio's messages-format history -> the answered exchanges, oldest first. Consecutive entries of one role
    are merged (a file then its question is one question); failed exchanges (the answer starts with ERROR_MARK) and
    questions without an answer (a stopped request) are left out; notes are stripped from answers."""
    turns: list[tuple[str, list, list]] = []  # (role, texts, files)
    for entry in history or []:
        role = entry.get("role") if isinstance(entry, dict) else getattr(entry, "role", None)
        content = entry.get("content") if isinstance(entry, dict) else getattr(entry, "content", None)
        if role not in ("user", "assistant"):
            continue
        texts, files = [], []
        for item in content if isinstance(content, (list, tuple)) else [content]:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, dict) and item.get("type") == "text":
                texts.append(str(item.get("text", "")))
            elif role == "user" and _file_path(item):
                files.append(_file_path(item))
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(texts)
            turns[-1][2].extend(files)
        else:
            turns.append((role, texts, files))
    exchanges = []
    for question, answer in zip(turns, turns[1:], strict=False):
        if question[0] != "user" or answer[0] != "assistant":
            continue
        text = " ".join(t for t in answer[1] if t).strip()
        if text.startswith(ERROR_MARK):
            continue
        exchanges.append(Exchange(list(question[1]), list(question[2]), _strip_note(text)))
    return exchanges


def message_parts(message) -> tuple[str, list[str]]:
    """The text and file paths of gradio's multimodal message (or a plain string)."""
    if isinstance(message, str):
        message = {"text": message, "files": []}
    if message is not None and not isinstance(message, dict):
        raise DemoInputError(
            f"The message is a {type(message).__name__}; expected {{'text': ..., 'files': [...]}} or a string."
        )
    text = str((message or {}).get("text") or "").strip()
    files = [_file_path(item) for item in (message or {}).get("files") or []]
    if any(not isinstance(path, str) or not path for path in files):
        raise DemoInputError("A file of the message has no path: upload it again (gradio_client: handle_file(path)).")
    if not text and not files:
        raise DemoInputError("The message is empty: type a question, attach a file, or both.")
    return text, files


def user_message(texts, files, processor, audio_is: str, controls) -> dict:
    """A user chat message with content blocks for the processor's chat template (files first, then the text)."""
    question = " ".join(t for t in texts if t).strip()
    content = []
    for path in files:
        kind = _media_kind(path)
        if kind == "audio":
            kind = _audio_block_type(processor, audio_is, question)
        content.append({"type": kind, "path": path})
    if question:
        content.append({"type": "text", "text": escape_text(question, controls)})
    return {"role": "user", "content": content}


def assistant_message(answer: str, controls) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": escape_text(answer, controls)}]}


def to_chat_messages(message, history, processor, audio_is: str = "auto", use_history: bool = True) -> list[dict]:
    """Gradio's multimodal message and messages-format history -> chat messages for the processor's chat template
    (the whole history when `use_history`; `fit_to_context` leaves out what does not fit)."""
    controls = control_strings(processor)
    text, files = message_parts(message)
    messages = []
    for exchange in parse_history(history) if use_history else []:
        messages.append(user_message(exchange.texts, exchange.files, processor, audio_is, controls))
        messages.append(assistant_message(exchange.answer, controls))
    messages.append(user_message([text], files, processor, audio_is, controls))
    return messages


@dataclass
class Fitted:
    """What `fit_to_context` chose: the encoded prompt, how many of the earlier exchanges it left out, and the new
    tokens the answer may take."""

    inputs: object
    dropped: int
    max_new_tokens: int


class ContextOverflowError(DemoInputError):
    """The new message alone does not fit the model's context."""


def fit_to_context(
    encode, exchanges: list[list[dict]], current: dict, context: int, max_new_tokens: int, too_long=()
) -> Fitted:
    """The prompt of the most recent exchanges (each a [user, assistant] message pair, oldest first) and `current`
    that leaves room for `max_new_tokens` in the `context`: the oldest exchanges are left out first (a binary search
    over how many, each probe one `encode(messages)`). With no exchange left, the answer's room shrinks to what the
    context leaves; a message that alone fills the context raises `ContextOverflowError`. `too_long`: the exception
    classes `encode` raises for a prompt longer than the context."""
    probes = {}

    def probe(dropped: int):
        if dropped not in probes:
            messages = [m for pair in exchanges[dropped:] for m in pair] + [current]
            try:
                inputs = encode(messages)
                probes[dropped] = (inputs, int(inputs["input_ids"].shape[-1]))
            except too_long:
                probes[dropped] = (None, None)
        inputs, length = probes[dropped]
        return inputs if length is not None and length + max_new_tokens <= context else None

    if probe(0) is not None:
        return Fitted(probes[0][0], 0, max_new_tokens)
    n = len(exchanges)
    if probe(n) is None:
        inputs, length = probes[n]
        if length is None or length >= context:
            raise ContextOverflowError(
                f"This message is too long for the model: with its files it takes more than the model's context of "
                f"{context} tokens. Send fewer or shorter files, or a shorter question."
            )
        return Fitted(inputs, n, context - length)
    low, high = 1, n  # probe(n) fits, probe(0) does not: the fewest left out that fits is in [1, n]
    while low < high:
        middle = (low + high) // 2
        if probe(middle) is not None:
            high = middle
        else:
            low = middle + 1
    return Fitted(probes[low][0], low, max_new_tokens)


def processing_errors(processor) -> tuple[type[BaseException], ...]:
    """The processor's input error classes: those of its own module (the remote-code copy of processing_unimoe when
    loaded with trust_remote_code), plus the demo's own."""
    module = sys.modules.get(type(processor).__module__)
    base = getattr(module, "UniMoEProcessingError", None)
    return (DemoInputError,) + ((base,) if isinstance(base, type) else ())


def _processor_error_class(processor, name: str):
    found = getattr(sys.modules.get(type(processor).__module__), name, None)
    return found if isinstance(found, type) else None


def _is_processor_error(error: BaseException, processor, name: str) -> bool:
    """Whether `error` is the processor module's error class `name` (False where that module has no such class)."""
    cls = _processor_error_class(processor, name)
    return cls is not None and isinstance(error, cls)


def plain_text(text: str) -> str:
    """An error text for a demo user: paths shown by their last part (no server paths), and without the sentences
    that advise code (processor arguments in backticks, `name=value`)."""
    text = _ABSOLUTE_PATH.sub(lambda match: match.group(1), text)
    text = re.sub(r"\s*\(`[^`]*`\)", "", text)  # "(`max_image_pixels`)": the argument behind a limit
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", text.strip())
    kept = [s for s in sentences if "`" not in s and not re.search(r"\b\w+=\S", s)]
    return " ".join(kept or sentences[:1]).strip()


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


def explain_file_error(error: BaseException, name: str, kind: str, processor, context: int) -> str:
    """What went wrong with one uploaded file (`kind`: its content block type), in a demo user's terms."""
    kind = {"audio": "audio clip", "sound": "sound"}.get(kind, kind)
    if _is_processor_error(error, processor, "EmptyAudioError"):
        return f"Could not use {name!r}: the {kind} holds no sound. Record or upload it again."
    if _is_processor_error(error, processor, "TooManyChunksError"):
        extractor = processor.feature_extractor
        seconds = processor.max_sound_chunks * extractor.n_samples / extractor.sampling_rate
        return (
            f"Could not use {name!r}: the {kind} is longer than the {seconds:g} s of sound this model listens to. "
            "Upload a shorter clip."
        )
    if _is_processor_error(error, processor, "PlaceholderCountError"):
        return f"Could not use {name!r}: this model cannot take {kind}s. Ask without it, or use another model."
    if _is_processor_error(error, processor, "PromptTooLongError") or isinstance(error, ContextOverflowError):
        return (
            f"Could not use {name!r}: the {kind} alone is too long for the model's context of {context} tokens. "
            "Upload a shorter one."
        )
    if _is_processor_error(error, processor, "MediaTooLargeError"):
        limit = re.search(r"at most ([\d,.]+ (?:pixels|frames|s))\b", str(error))
        return (
            f"Could not use {name!r}: the {kind} is too large for this model"
            + (f" (it takes at most {limit.group(1)})" if limit else "")
            + ". Upload a smaller or shorter one."
        )
    if _is_processor_error(error, processor, "MediaDecodeError"):
        article = "an" if kind[0] in "aeiou" else "a"
        return (
            f"Could not read {name!r} as {article} {kind}: the file is damaged or in a format this server cannot "
            "decode. Upload another file, or convert it (e.g. to PNG, MP4 or WAV)."
        )
    return f"Could not use {name!r}: {plain_text(str(error))}"


# -------------------------------------------------------------------------------------------------------------- demo


API_DESCRIPTION = (
    "Answers a message ({'text': ..., 'files': [handle_file(path), ...]}). use_history=True (the default) answers in "
    "the context of this session's earlier turns (one gradio_client.Client is one session), the oldest left out "
    "first when the model's context is full; use_history=False answers the message alone. Returns the answer, the "
    "experts plot and a line saying which earlier turns the answer saw."
)


def build_demo(model, processor, title: str = "Uni-MoE", keep_files: int = 3600, backend: VLLMBackend | None = None):
    """The Gradio Blocks: a multimodal chat (endpoint /chat) with sampling controls, the history switch, the
    context line and the experts panel. Files the app makes or receives are deleted `keep_files` seconds later (and
    all when the server stops). With a `backend` (a vLLM server) the answers come from it and `model` is unused."""
    import gradio as gr
    from experts_panel import plot_routing, routing_report, system_prefix_length
    from transformers import TextIteratorStreamer

    lock = threading.Lock()  # one model call at a time: generation threads and routing passes share the weights
    errors = processing_errors(processor)
    too_long = tuple(c for c in (_processor_error_class(processor, "PromptTooLongError"),) if c is not None)
    controls = control_strings(processor)
    prefix_length = system_prefix_length(processor)
    if backend is None:
        context = int(model.config.get_text_config().max_position_embeddings)
        has_moe = bool(model.config.get_text_config().moe_layer_indices)
    else:
        context = backend.max_model_len or int(processor.tokenizer.model_max_length)
        has_moe = False  # the routing is in the server
    # vLLM's chat API has one audio kind: with that backend audio always takes the `<audio>` path
    both_audio_paths = backend is None and processor.audio_path == "speech" and processor.sound_token_id is not None

    def encode(messages):
        return processor.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"short_video": "repeat"},
        )

    def experts_plot(inputs) -> str | None:
        """The experts PNG of a prompt, as a file in gradio's cache that the experts component owns (so gradio's
        `delete_cache` deletes it); the file drawn first is deleted at once."""
        if not has_moe:
            return None
        with lock:
            report = routing_report(model, processor, inputs, prefix_length)
        handle, drawn = tempfile.mkstemp(suffix=".png", prefix="experts-")
        os.close(handle)
        try:
            plot_routing(report).save(drawn, format="png")
            return experts.move_resource_to_block_cache(drawn)
        finally:
            os.remove(drawn)

    def explain(error, current) -> str:
        """A user-terms message for a refused message: the uploaded file at fault (the only one, or the first of
        several that fails alone: only then are files encoded again), else the error without paths or code advice."""
        if isinstance(error, ContextOverflowError) or (too_long and isinstance(error, too_long)):
            return (
                "This message is too long for the model: with its files it takes more than the model's context of "
                f"{context} tokens. Send fewer or shorter files, or a shorter question."
            )
        if isinstance(error, DemoInputError):
            return str(error)
        media = [block for block in current["content"] if block["type"] != "text"]
        if len(media) == 1:
            return explain_file_error(error, Path(media[0]["path"]).name, media[0]["type"], processor, context)
        for block in media:
            try:
                encode([{"role": "user", "content": [block, {"type": "text", "text": "?"}]}])
            except errors as file_error:
                return explain_file_error(file_error, Path(block["path"]).name, block["type"], processor, context)
        return plain_text(str(error))

    def respond(message, history, temperature, max_new_tokens, audio_is, use_history):
        """Yields (answer so far, experts plot or SKIP, context line or SKIP); the last item has all three."""
        max_new_tokens = int(max_new_tokens)
        if backend is not None:
            audio_is = "speech"
        current = None
        try:
            text, files = message_parts(message)
            current = user_message([text], files, processor, audio_is, controls)
            exchanges = parse_history(history) if use_history else []
            kept = [e for e in exchanges if all(os.path.isfile(path) for path in e.files)]
            expired = len(exchanges) - len(kept)
            pairs = [
                [user_message(e.texts, e.files, processor, audio_is, controls), assistant_message(e.answer, controls)]
                for e in kept
            ]
            fitted = fit_to_context(encode, pairs, current, context, max_new_tokens, too_long)
        except errors as error:
            print(f"Uni-MoE demo: request refused: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            answer = explain(error, current) if current is not None else str(error)
            yield f"{ERROR_MARK} {answer}", None, "This message was not answered."
            return
        inputs = fitted.inputs
        notes = []
        if fitted.dropped:
            files_dropped = sum(len(e.files) for e in kept[: fitted.dropped])
            notes.append(
                f"{NOTE_MARK} The {_count(fitted.dropped, 'oldest exchange')}"
                + (f" (with {_count(files_dropped, 'file')})" if files_dropped else "")
                + f" {'was' if fitted.dropped == 1 else 'were'} left out to fit the model's context of {context} "
                "tokens."
            )
        if expired:
            notes.append(
                f"{NOTE_MARK} {_count(expired, 'earlier exchange')} {'was' if expired == 1 else 'were'} left out: "
                "its files are no longer on the server."
            )
        prefix = "".join(note + "\n\n" for note in notes)
        summary = context_summary(use_history, len(exchanges), fitted.dropped, expired)
        summary += f" Prompt: {inputs['input_ids'].shape[-1]} of {context} tokens."
        if fitted.max_new_tokens < max_new_tokens:
            summary += f" The answer was limited to {fitted.max_new_tokens} new tokens by the context."

        if backend is not None:
            messages = [message for pair in pairs[fitted.dropped :] for message in pair] + [current]
            answer = ""
            try:
                for piece in backend.stream(messages, fitted.max_new_tokens, float(temperature)):
                    answer += piece
                    if answer.strip():
                        yield prefix + answer.strip(), SKIP, SKIP
            except VLLMRequestError as error:  # the server refused it, with the processor's message for media
                print(f"Uni-MoE demo: request refused by vLLM: {error}", file=sys.stderr, flush=True)
                yield f"{ERROR_MARK} {plain_text(error.message)}", None, "This message was not answered."
                return
            except Exception as error:
                traceback.print_exc()
                raise gr.Error(
                    f"The vLLM server failed while answering ({type(error).__name__}); the server log has the "
                    "details. Try again, or ask something else."
                ) from None
            yield prefix + (answer.strip() or "(the model gave an empty answer)"), None, summary
            return

        inputs = inputs.to(model.device)
        streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        sampling = float(temperature) > 0
        generate_kwargs = dict(
            inputs,
            streamer=streamer,
            max_new_tokens=fitted.max_new_tokens,
            do_sample=sampling,
            **({"temperature": float(temperature), "top_p": 1.0, "top_k": 0} if sampling else {}),
        )
        failure = []

        def generate():
            try:
                with lock:
                    model.generate(**generate_kwargs)
            except Exception as error:  # reported by the consumer below, logged here with its traceback
                traceback.print_exc()
                failure.append(error)
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        answer = ""
        for piece in streamer:
            answer += piece
            if answer.strip():
                yield prefix + answer.strip(), SKIP, SKIP
        worker.join()
        if failure:
            raise gr.Error(
                f"The model failed while answering ({type(failure[0]).__name__}); the server log has the details. "
                "Try again, or ask something else."
            )
        yield prefix + (answer.strip() or "(the model gave an empty answer)"), experts_plot(inputs), summary

    def chat(message, history, temperature, max_new_tokens, audio_is, use_history=True):
        """The chat UI's function (gr.ChatInterface keeps the history)."""
        for answer, plot, line in respond(message, history, temperature, max_new_tokens, audio_is, use_history):
            yield answer, gr.skip() if plot is SKIP else plot, gr.skip() if line is SKIP else line

    def api_chat(message, temperature, max_new_tokens, audio_is, use_history, history):
        """The /chat API: as the chat UI, with this session's history in a gr.State."""
        history = list(history or [])
        answer, plot, line = "", None, ""
        for answer, new_plot, new_line in respond(
            message, history, temperature, max_new_tokens, audio_is, use_history
        ):
            plot = plot if new_plot is SKIP else new_plot
            line = line if new_line is SKIP else new_line
            yield answer, gr.skip(), gr.skip(), gr.skip()
        text, files = (message or {}).get("text") or "", (message or {}).get("files") or []
        history.append({"role": "user", "content": [*({"path": _file_path(f)} for f in files), text]})
        history.append({"role": "assistant", "content": answer})
        yield answer, history, plot, line

    textbox = gr.MultimodalTextbox(
        file_types=["image", "video", "audio"],
        file_count="multiple",
        sources=["upload", "microphone"],
        placeholder="Ask about an image, a video, speech or a sound (attach or record it)...",
    )
    keep = max(1, int(keep_files))
    with gr.Blocks(
        title=title, analytics_enabled=False, fill_height=True, delete_cache=(min(keep, 300), keep)
    ) as demo:
        gr.Markdown(
            f"# {title}\nA mixture-of-experts LLM that reads images, videos, speech and sounds. Attach media (or "
            "record with the microphone) and ask a question; the experts panel shows where the prompt's tokens went. "
            "With **Use the conversation so far** on, each answer sees this chat's earlier questions, answers and "
            f"files (the oldest left out first when the model's context of {context} tokens is full); off, each "
            "message is answered alone."
        )
        experts = gr.Image(
            label="Experts: share of each modality's tokens routed to each expert (last answer)",
            type="filepath",
            interactive=False,
            render=False,
        )
        context_line = gr.Textbox(label="Context of the last answer", interactive=False, lines=2, render=False)
        use_history = gr.Checkbox(
            value=True,
            label="Use the conversation so far",
            info="On: answers see the earlier turns of this chat. Off: each message is answered alone.",
            render=False,
        )
        settings = [
            gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)", render=False),
            gr.Slider(1, 256, value=32, step=1, label="Max new tokens", render=False),
            gr.Radio(
                list(AUDIO_CHOICES),
                value="auto",
                label="Audio is",
                info="auto: speech when the question asks what is said, else sound",
                visible=both_audio_paths,
                render=False,
            ),
        ]
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                use_history.render()
                gr.ChatInterface(
                    chat,
                    multimodal=True,
                    textbox=textbox,
                    additional_inputs=[*settings, use_history],
                    additional_inputs_accordion=gr.Accordion("Generation settings", open=False, render=False),
                    additional_outputs=[experts, context_line],
                    api_name="chat_ui",
                    api_visibility="private",  # the API is /chat below
                    fill_height=True,
                )
            with gr.Column(scale=2):
                context_line.render()
                experts.render()
                if backend is not None:
                    gr.Markdown(
                        f"Answers come from the vLLM server at {backend.url}: the experts panel needs the "
                        "transformers backend."
                    )
                elif not has_moe:
                    gr.Markdown("This model has no MoE layers: there is no routing to show.")
        # /chat: its own endpoint (the ChatInterface's passes file outputs on as server paths), with the session's
        # history in a State
        api_history = gr.State([])
        api_answer = gr.Textbox(visible=False, label="answer")
        gr.Button(visible=False).click(
            api_chat,
            [textbox, *settings, use_history, api_history],
            [api_answer, api_history, experts, context_line],
            api_name="chat",
            api_description=API_DESCRIPTION,
        )
    return demo


def context_summary(use_history: bool, earlier: int, dropped: int, expired: int) -> str:
    """The first sentence of the context line: whether history was used, and how much of it."""
    if not use_history:
        return "History off: this answer saw only this message."
    if not earlier:
        return "History on: no earlier exchange yet; this answer saw only this message."
    summary = f"History on: this answer saw {_count(earlier - dropped - expired, 'earlier exchange')} of {earlier}"
    left_out = [f"{dropped} to fit the context"] * bool(dropped) + [f"{expired} whose files expired"] * bool(expired)
    return summary + (f" ({', '.join(left_out)} left out)." if left_out else ".")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# -------------------------------------------------------------------------------------------------------------- main


def _temporary_cache() -> Path | None:
    """A fresh folder for gradio's cache (uploads, experts plots), removed at exit; None where GRADIO_TEMP_DIR
    already names one (then only the files the app made are deleted)."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return None
    folder = Path(tempfile.mkdtemp(prefix="unimoe-demo-"))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


def _interrupt(signum, frame):
    """SIGTERM (a Space restarting, `kill`) ends the demo as Ctrl-C does: files deleted, cache folder removed."""
    raise KeyboardInterrupt


def main(argv=None):
    args = get_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    check_port(args.host, args.port)  # before the model loads: a busy port is one line, at once
    signal.signal(signal.SIGTERM, _interrupt)
    cache, demo = None, None
    try:
        backend = None
        if args.backend == "vllm":
            try:
                backend = VLLMBackend(args.url)
            except ConnectionError as error:
                _fail(str(error))
        model, processor = load(
            args.model, args.revision, args.quantization, args.model_origin, weights=backend is None
        )
        name = Path(args.model).name if Path(args.model).is_dir() else args.model
        cache = _temporary_cache()
        title = f"Uni-MoE ({name}{', vLLM' if backend else ''})"
        demo = build_demo(model, processor, title=title, keep_files=args.keep_files, backend=backend)
        demo.queue(max_size=args.max_queue, default_concurrency_limit=args.concurrency)
        try:
            _, local_url, share_url = demo.launch(
                server_name=args.host,
                server_port=args.port,
                max_file_size=args.max_file_size,
                share=args.share,
                prevent_thread_lock=True,
                ssr_mode=False,
                quiet=True,
            )
        except OSError as error:  # the port was taken between the check and the launch
            _fail(f"cannot serve on {args.host}:{args.port}: {error}")
        print(f"Uni-MoE demo running on {local_url}" + (f" (public: {share_url})" if share_url else ""), flush=True)
        while demo.is_running:
            threading.Event().wait(0.2)
    except KeyboardInterrupt:
        print("Uni-MoE demo: stopping.", flush=True)
    finally:
        if demo is not None:
            demo.close(verbose=False)  # the server's shutdown deletes the files this app made (delete_cache)
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
