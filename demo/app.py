# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE chat demo (Gradio): ask about images, videos, speech and sounds, and see which experts the tokens took.

    python demo/app.py                                    # http://127.0.0.1:7860, the default model (below)
    python demo/app.py --model org/uni-moe --revision COMMIT --port 8080   # a Hub id (pinned) or a local folder
    python demo/app.py --quantization 4bit                # bitsandbytes 4-bit (NF4) weights; 8bit: LLM.int8
    python demo/app.py --backend vllm --url http://127.0.0.1:8000/v1   # answers from a running vLLM server

`python demo/publish.py --space OWNER/NAME` makes a Hugging Face Space of this folder (its modules, requirements.txt
and README.md) and the package's routing analysis; there, everything comes from environment variables:
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
forward pass over the prompt with `output_router_logits=True` (`modeling_unimoe.training.routing`).

The modules beside this file: `ui.py` (the page and the /chat endpoint), `chat.py` (messages, history and the
context), `media.py` (what an uploaded file is, and its errors in a user's terms) and `backends.py` (the model in
this process, or a vLLM server). This file holds the settings, the model loading and `main`.

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
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path

from backends import VLLMBackend
from ui import build_demo


HERE = Path(__file__).resolve().parent
MODEL_VARIABLE = "UNIMOE_DEMO_MODEL"
REVISION_VARIABLE = "UNIMOE_DEMO_REVISION"
QUANTIZATION_VARIABLE = "UNIMOE_DEMO_QUANTIZATION"
BACKEND_VARIABLE = "UNIMOE_DEMO_BACKEND"
VLLM_URL_VARIABLE = "UNIMOE_DEMO_VLLM_URL"
HOST_VARIABLE = "GRADIO_SERVER_NAME"
PORT_VARIABLE = "GRADIO_SERVER_PORT"
# where `python demo/publish.py` uploads checkpoints/uni-moe-tiny: the model a Space uses when UNIMOE_DEMO_MODEL is
# unset
HUB_MODEL = "uni-moe/uni-moe-tiny"
CHECKOUT_MODEL = HERE.parent / "checkpoints" / "uni-moe-tiny"  # the embedded model, when this is the repository
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
QUANTIZATIONS = ("none", "4bit", "8bit")
BACKENDS = ("transformers", "vllm")


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

        # the language model's attention and experts are quantized; the quantizer leaves in full precision the
        # model class's `_keep_in_fp32_modules` (the routers, the media towers and their connectors) and lm_head
        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quantization == "4bit",
            load_in_8bit=quantization == "8bit",
            bnb_4bit_compute_dtype=torch.float32,
        )
        model_kwargs["device_map"] = "cuda:0" if torch.cuda.is_available() else "cpu"
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
