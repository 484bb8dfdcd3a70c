# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE chat demo (Gradio): ask about images, videos, speech and sounds, and see which experts the tokens took.

    python demo/app.py                                   # the embedded tiny model, http://127.0.0.1:7860
    python demo/app.py --model org/uni-moe --port 8080   # a Hub id or a local folder
    python demo/app.py --load-in-4bit                    # bitsandbytes 4-bit weights (8-bit: --load-in-8bit)

The chat endpoint is `/chat` (`gradio_client.Client(url).predict(message, temperature, max_new_tokens, audio_is,
api_name="/chat")` with `message = {"text": ..., "files": [handle_file(path)]}`); it returns the answer and the
experts plot. Answers stream token by token (transformers' `TextIteratorStreamer`, generation in a thread).

Audio files and microphone recordings go to the speech path (Whisper) or the sound path (BEATs) as the "Audio is"
control says: "auto" (the default) takes speech when the question is about what is said (say, said, spoken, word,
number, digit, transcribe, speech, voice, language) and sound otherwise; "speech" and "sound" force a path. Models
with one audio path use it whatever the control says.

The experts panel shows, for the last answer, the share of each modality's tokens (image, video, speech, sound and
text placeholders of the prompt, system prompt excluded) that the top-k router sent to each expert, per MoE layer:
one forward pass over the prompt with `output_router_logits=True`.
"""

from __future__ import annotations

import argparse
import mimetypes
import os
import re
import sys
import tempfile
import threading
import traceback
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = os.environ.get("UNIMOE_DEMO_MODEL") or str(REPO / "checkpoints" / "uni-moe-tiny")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".m4a", ".aac", ".opus")
AUDIO_CHOICES = ("auto", "speech", "sound")
# left in full precision by --load-in-4bit / --load-in-8bit: the media towers and their connectors (they cast inputs
# to their weights' dtype), the routers and the output head; the language model's attention and experts are quantized
QUANTIZATION_SKIP = ["lm_head", "mlp.gate", r"(?:model\.)?(?:vision|speech|sound)_(?:tower|projector|connector)"]
ERROR_MARK = "⚠️"  # starts the chat message of a request that failed; such turns are left out of later prompts
_SPEECH_QUESTION = re.compile(
    r"\b(say|says|said|saying|spoken|speak|speaks|speaker|word|words|number|digit|transcribe|transcript|speech|voice|"
    r"language)\b",
    re.IGNORECASE,
)


class DemoInputError(ValueError):
    """A chat message the demo cannot turn into model inputs (unknown file type, nothing asked)."""


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a Hub id or a local folder (default: the embedded checkpoints/uni-moe-tiny, or $UNIMOE_DEMO_MODEL)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=7860)
    quantization = parser.add_mutually_exclusive_group()
    quantization.add_argument("--load-in-4bit", action="store_true", help="bitsandbytes 4-bit (NF4) language model")
    quantization.add_argument("--load-in-8bit", action="store_true", help="bitsandbytes 8-bit (LLM.int8) weights")
    parser.add_argument("--max-queue", type=int, default=32, help="requests waiting at most; more are refused")
    parser.add_argument("--concurrency", type=int, default=2, help="requests processed at once (model calls queue)")
    parser.add_argument("--max-file-size", default="50mb", help="largest upload, e.g. 50mb or 1gb")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    args = parser.parse_args(argv)
    if args.max_queue < 1 or args.concurrency < 1:
        parser.error(f"--max-queue ({args.max_queue}) and --concurrency ({args.concurrency}) must be >= 1.")
    return args


def _resolve_model(model: str) -> str:
    """A local folder as an absolute path (relative paths are tried against the cwd, then the repo); else a Hub id."""
    for candidate in (Path(model).expanduser(), REPO / model):
        if candidate.is_dir():
            return str(candidate.resolve())
    if Path(model).is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        raise SystemExit(
            f"--model {model!r} is not a folder. Pass a local folder holding config.json and the weights, or a Hub id "
            "such as org/name. (The embedded checkpoint is checkpoints/uni-moe-tiny.)"
        )
    return model


def load(model: str = DEFAULT_MODEL, load_in_4bit: bool = False, load_in_8bit: bool = False):
    """Model (eval mode) and processor of a Hub id or folder, through the Auto classes with remote code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor, BitsAndBytesConfig

    if load_in_4bit and load_in_8bit:
        raise ValueError("load_in_4bit and load_in_8bit were both set; choose one (or neither for full precision).")
    source = _resolve_model(model)
    kwargs = {"trust_remote_code": True}
    if load_in_4bit or load_in_8bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=load_in_4bit,
            load_in_8bit=load_in_8bit,
            bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=QUANTIZATION_SKIP,
        )
        kwargs["device_map"] = "cuda:0" if torch.cuda.is_available() else "cpu"
    try:
        network = AutoModelForCausalLM.from_pretrained(source, **kwargs).eval()
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
    except OSError as error:
        raise SystemExit(
            f"Could not load the model {source!r}: {error}\nPass --model with a local folder (config.json, weights, "
            "processor files) or a Hub id you can reach."
        ) from None
    if "quantization_config" not in kwargs and torch.cuda.is_available():
        network = network.to("cuda")
    if load_in_4bit:
        _avoid_packed_cpu_4bit(network)
    return network, processor


def _avoid_packed_cpu_4bit(model) -> None:
    """bitsandbytes' fast CPU path for 4-bit layers (AVX512-BF16) repacks weights in blocks of 32 output rows and
    whole quantization blocks per input row, and fails on other widths (the tiny model's 176-wide FFNs); such layers
    keep their 4-bit weights on the generic path."""
    for module in model.modules():
        if not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        blocksize = getattr(getattr(module.weight, "quant_state", None), "blocksize", 64)
        if module.out_features % 32 or module.in_features % blocksize:
            module.support_avx512bf16_for_cpu = False


# ------------------------------------------------------------------------------------------------------ chat helpers


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


def _user_content(texts, files, processor, audio_is: str) -> list[dict]:
    question = " ".join(t for t in texts if t).strip()
    content = []
    for path in files:
        kind = _media_kind(path)
        if kind == "audio":
            kind = _audio_block_type(processor, audio_is, question)
        content.append({"type": kind, "path": path})
    if question:
        content.append({"type": "text", "text": question})
    return content


def to_chat_messages(message, history, processor, audio_is: str = "auto") -> list[dict]:
    """Gradio's multimodal message and messages-format history -> chat messages with content blocks for the
    processor's chat template (consecutive user entries, e.g. a file then its question, become one user turn)."""
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
    kept = []  # drop each failed exchange (the user turn and the error answer) so a bad file does not stick
    for turn in turns:
        if turn[0] == "assistant" and " ".join(turn[1]).strip().startswith(ERROR_MARK):
            if kept and kept[-1][0] == "user":
                kept.pop()
            continue
        kept.append(turn)
    turns = kept
    if isinstance(message, str):
        message = {"text": message, "files": []}
    text = str((message or {}).get("text") or "").strip()
    files = [_file_path(item) for item in (message or {}).get("files") or []]
    if not text and not files:
        raise DemoInputError("The message is empty: type a question, attach a file, or both.")
    if turns and turns[-1][0] == "user":  # a dangling user turn (no answer): merge it with this one
        _, old_texts, old_files = turns.pop()
        text, files = " ".join([*old_texts, text]).strip(), [*old_files, *files]
    turns.append(("user", [text], files))
    messages = []
    for role, texts, paths in turns:
        if role == "user":
            messages.append({"role": "user", "content": _user_content(texts, paths, processor, audio_is)})
        else:
            answer = " ".join(t for t in texts if t).strip()
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def processing_errors(processor) -> tuple[type[BaseException], ...]:
    """The processor's input error classes: those of its own module (the remote-code copy of processing_unimoe when
    loaded with trust_remote_code), plus the demo's own."""
    module = sys.modules.get(type(processor).__module__)
    base = getattr(module, "UniMoEProcessingError", None)
    return (DemoInputError,) + ((base,) if isinstance(base, type) else ())


# ----------------------------------------------------------------------------------------------------------- routing


def _routing_tools():
    """`plot_routing` and `MODALITIES` of training/evaluate.py: the installed package's, else a training/ folder beside
    this file (a Space) or in the checkout; None if there is none."""
    try:
        from modeling_unimoe.training.evaluate import MODALITIES, plot_routing
    except ImportError:
        for root in (Path(__file__).resolve().parent, REPO):  # a Space's training/ folder, or the checkout's
            if (root / "training" / "evaluate.py").is_file() and str(root) not in sys.path:
                sys.path.append(str(root))
                break
        try:
            from training.evaluate import MODALITIES, plot_routing
        except ImportError:
            return None
    return MODALITIES, plot_routing


def system_prefix_length(processor) -> int:
    """Tokens of the prompt prefix every chat shares (the system prompt), found as the common prefix of two chats."""
    ids = []
    for text in ("a", "b"):
        chat = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        ids.append(
            processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
    first, second = (row[0] if row and isinstance(row[0], list) else row for row in ids)
    n = 0
    while n < min(len(first), len(second)) and first[n] == second[n]:
        n += 1
    return n


def routing_report(model, processor, inputs, prefix_length: int = 0) -> dict:
    """Per MoE layer, the share of each modality's top-k assignments that go to each expert, for one prompt.

    Tokens are labelled by their id: the image / video / audio / sound placeholders (one position per media token)
    and text for the rest; the first `prefix_length` tokens (the system prompt) are left out. The dict has the layout
    of training/evaluate.py's `routing_report`, so its `plot_routing` draws it."""
    import torch

    text_config = model.config.get_text_config()
    layers = list(text_config.moe_layer_indices)
    if not layers:
        raise ValueError("This model has no MoE layers: there is no routing to show.")
    num_experts, top_k = text_config.num_experts, text_config.num_experts_per_tok
    ids = inputs["input_ids"][0]
    labels = ["text"] * ids.numel()
    token_kinds = {
        processor.image_token_id: "image",
        processor.video_token_id: "video",
        processor.audio_token_id: processor.audio_path,
        processor.sound_token_id: "sound",
    }
    for position, token in enumerate(ids.tolist()):
        labels[position] = token_kinds.get(token) or "text"
    labels = labels[prefix_length:]
    with torch.no_grad():
        out = model(**inputs, output_router_logits=True, use_cache=False)
    counts: dict[str, torch.Tensor] = {}
    for slot, logits in enumerate(out.router_logits):
        selected = logits.float().reshape(-1, num_experts).topk(top_k, dim=-1).indices[prefix_length:].cpu()
        for modality in dict.fromkeys(labels):
            rows = selected[[i for i, label in enumerate(labels) if label == modality]]
            table = counts.setdefault(modality, torch.zeros(len(layers), num_experts))
            table[slot] += torch.bincount(rows.reshape(-1), minlength=num_experts).float()
    shares = {m: (c / c.sum(-1, keepdim=True).clamp_min(1)).tolist() for m, c in counts.items()}
    return {
        "moe_layers": layers,
        "num_experts": num_experts,
        "top_k": top_k,
        "tokens": {m: labels.count(m) for m in counts},
        "share": {m: {str(layer): row for layer, row in zip(layers, shares[m], strict=True)} for m in shares},
    }


# -------------------------------------------------------------------------------------------------------------- demo


def build_demo(model, processor, title: str = "Uni-MoE", plot_dir: str | None = None):
    """The Gradio Blocks: a multimodal chat (endpoint /chat) with sampling controls and the experts panel."""
    import gradio as gr
    from transformers import TextIteratorStreamer

    lock = threading.Lock()  # one model call at a time: generation threads and routing passes share the weights
    errors = processing_errors(processor)
    prefix_length = system_prefix_length(processor)
    tools = _routing_tools()
    plot_dir = Path(plot_dir or tempfile.mkdtemp(prefix="unimoe-demo-"))
    plot_dir.mkdir(parents=True, exist_ok=True)
    both_audio_paths = processor.audio_path == "speech" and processor.sound_token_id is not None

    def experts_plot(inputs):
        if tools is None:
            return None
        modalities, plot_routing = tools
        with lock:
            report = routing_report(model, processor, inputs, prefix_length)
        report["share"] = {m: report["share"][m] for m in modalities if m in report["share"]}
        handle, path = tempfile.mkstemp(suffix=".png", prefix="experts-", dir=plot_dir)
        os.close(handle)
        return str(plot_routing(report, path))

    def chat(message, history, temperature, max_new_tokens, audio_is):
        try:
            messages = to_chat_messages(message, history, processor, audio_is)
            inputs = processor.apply_chat_template(
                messages,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                processor_kwargs={"short_video": "repeat"},
            ).to(model.device)
        except errors as error:
            yield f"{ERROR_MARK} {error}", gr.skip()
            return
        streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        sampling = float(temperature) > 0
        generate_kwargs = dict(
            inputs,
            streamer=streamer,
            max_new_tokens=int(max_new_tokens),
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
                yield answer.strip(), gr.skip()
        worker.join()
        if failure:
            raise gr.Error(f"Generation failed: {type(failure[0]).__name__}: {failure[0]}")
        yield answer.strip() or "(the model gave an empty answer)", experts_plot(inputs)

    textbox = gr.MultimodalTextbox(
        file_types=["image", "video", "audio"],
        file_count="multiple",
        sources=["upload", "microphone"],
        placeholder="Ask about an image, a video, speech or a sound (attach or record it)...",
    )
    with gr.Blocks(title=title, analytics_enabled=False, fill_height=True) as demo:
        gr.Markdown(
            f"# {title}\nA mixture-of-experts LLM that reads images, videos, speech and sounds. Attach media (or "
            "record with the microphone) and ask a question; the experts panel shows where the prompt's tokens went."
        )
        experts = gr.Image(
            label="Experts: share of each modality's tokens routed to each expert (last answer)",
            type="filepath",
            interactive=False,
            render=False,
        )
        controls = [
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
                gr.ChatInterface(
                    chat,
                    multimodal=True,
                    textbox=textbox,
                    additional_inputs=controls,
                    additional_inputs_accordion=gr.Accordion("Generation settings", open=False, render=False),
                    additional_outputs=[experts],
                    api_name="chat",
                    fill_height=True,
                )
            with gr.Column(scale=2):
                experts.render()
                if tools is None:
                    gr.Markdown(
                        "The experts plot needs training/evaluate.py: install the uni-moe package or copy the "
                        "repository's training/ folder beside app.py."
                    )
    return demo


def main(argv=None):
    args = get_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    model, processor = load(args.model, load_in_4bit=args.load_in_4bit, load_in_8bit=args.load_in_8bit)
    name = Path(args.model).name if Path(args.model).is_dir() else args.model
    demo = build_demo(model, processor, title=f"Uni-MoE ({name})")
    demo.queue(max_size=args.max_queue, default_concurrency_limit=args.concurrency)
    _, local_url, share_url = demo.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=args.max_file_size,
        share=args.share,
        prevent_thread_lock=True,
        ssr_mode=False,
        quiet=True,
    )
    print(f"Uni-MoE demo running on {local_url}" + (f" (public: {share_url})" if share_url else ""), flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        demo.close()


if __name__ == "__main__":
    main()
