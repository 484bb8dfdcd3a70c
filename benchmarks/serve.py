"""Serving throughput and latency: vLLM's OpenAI server against our transformers path, same model and prompts.

    python -m benchmarks.serve [--model FOLDER] [--max-tokens 32] [--out benchmarks/RESULTS.md]

Models: a Uni-MoE folder (default: the embedded checkpoints/uni-moe-tiny, hidden 64) and a random one with a wider
language model (`--wide-hidden`, default 1024: `wide_model`), float32, one table each. Prompts: one image and a
question per request (images and questions differ between requests), through the chat template; greedy, exactly
`--max-tokens` new tokens each.

For 1, 8 and 32 concurrent requests (bursts: all requests of a burst arrive at once, the next burst when it is done):
- vLLM: `python -m serving.serve` on the folder; the bursts go as OpenAI chat completions (image data URLs) over HTTP;
- transformers, sequential `generate` (the demo's way: one request at a time): every request's service time
  (processing and `generate`) is measured alone; in a burst, request i waits for the i - 1 before it, so its latency
  is the sum of their times;
- transformers, batched `generate`: each burst as one left-padded batch; every request's latency is the batch's.

Throughput: new tokens / wall seconds of the bursts; p50 / p95: of the per-request latencies. Ratios are over
sequential transformers at the same concurrency. The machine may be shared: the numbers show orders of magnitude.
"""

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ._common import fix_threads, machine_line, markdown_table, replace_markdown_section


REPO = Path(__file__).resolve().parents[1]
HEADER = "## Serving"
CONCURRENCY = (1, 8, 32)
QUESTIONS = ("What is this?", "Describe the picture.", "What color is it?", "What shape do you see?")


def _requests(folder: Path, count: int) -> list[dict]:
    requests = []
    for i in range(count):
        rng = np.random.default_rng(i)
        image = Image.new("RGB", (64, 64), tuple(int(c) for c in rng.integers(0, 256, 3)))
        ImageDraw.Draw(image).ellipse(
            (8 + i % 16, 8, 40 + i % 16, 48), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
        )
        path = folder / f"image{i}.png"
        image.save(path)
        requests.append({"prompt": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})", "images": [str(path)]})
    return requests


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _row(name: str, concurrency: int, wall: float, latencies: list[float], tokens: int) -> dict:
    return {
        "path": name,
        "concurrency": concurrency,
        "tokens_per_s": tokens / wall,
        "p50": _percentile(latencies, 50),
        "p95": _percentile(latencies, 95),
    }


def wide_model(out: Path, hidden: int, seed: int = 0) -> Path:
    """A random Uni-MoE folder: the tiny preset's towers, tokenizer and 4 layers of 4 experts, with a language model
    `hidden` wide (head size 128), where the per-token compute weighs more than the per-request work."""
    from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM
    from modeling_unimoe.configuration_unimoe import PRESETS
    from modeling_unimoe.processing.export import add_custom_pipeline, save_tiny_processor

    text_config = {
        **PRESETS["tiny"]["text_config"],
        "hidden_size": hidden,
        "intermediate_size": hidden * 11 // 4,
        "num_attention_heads": hidden // 128,
        "num_key_value_heads": hidden // 128,
        "head_dim": 128,
    }
    config = UniMoEConfig.from_preset("tiny", text_config=text_config)
    torch.manual_seed(seed)
    UniMoEForCausalLM(config).eval().save_pretrained(out)
    save_tiny_processor(config, out)
    add_custom_pipeline(out)
    return out


# --- transformers ----------------------------------------------------------------------------------------------------


def _transformers_rows(model_dir: Path, requests: list[dict], max_tokens: int) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoProcessor

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)

    def inputs_of(batch: list[dict]):
        messages = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": Image.open(r["images"][0]).convert("RGB")},
                        {"type": "text", "text": r["prompt"]},
                    ],
                }
            ]
            for r in batch
        ]
        if len(batch) == 1:
            messages = messages[0]
        return processor.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": len(batch) > 1, "padding_side": "left"},
        )

    def generate(batch: list[dict]) -> float:
        """Seconds to answer `batch`: its processing (image loading, chat template, processor) and `generate`."""
        start = time.perf_counter()
        inputs = inputs_of(batch)
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
        return time.perf_counter() - start

    generate(requests[:1])  # warm-up
    service = [generate([r]) for r in requests]  # sequential: each request alone
    rows = []
    for c in CONCURRENCY:
        bursts = [service[i : i + c] for i in range(0, len(service), c)]
        latencies = [sum(burst[: j + 1]) for burst in bursts for j in range(len(burst))]
        rows.append(_row("transformers, sequential generate", c, sum(service), latencies, max_tokens * len(service)))
    for c in CONCURRENCY:
        try:
            times = [generate(requests[i : i + c]) for i in range(0, len(requests), c)]
        except Exception as error:  # the row is left out, and the error printed
            print(f"batched generate at {c}: {type(error).__name__}: {error}", file=sys.stderr)
            continue
        latencies = [t for i, t in zip(range(0, len(requests), c), times, strict=True) for _ in requests[i : i + c]]
        rows.append(_row("transformers, batched generate", c, sum(times), latencies, max_tokens * len(requests)))
    return rows


# --- vLLM ------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _image_url(path: str) -> str:
    return f"data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


async def _bursts(url: str, requests: list[dict], concurrency: int, max_tokens: int) -> tuple[float, list[float]]:
    """Chat completions in bursts of `concurrency`; the wall seconds and every request's latency."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        model = (await client.get("/models")).json()["data"][0]["id"]

        async def one(request: dict) -> float:
            content = [{"type": "image_url", "image_url": {"url": _image_url(request["images"][0])}}]
            body = {
                "model": model,
                "messages": [{"role": "user", "content": [*content, {"type": "text", "text": request["prompt"]}]}],
                "max_tokens": max_tokens,
                "min_tokens": max_tokens,  # vLLM's extension: exactly max_tokens new tokens, as min_new_tokens
                "temperature": 0.0,
            }
            start = time.perf_counter()
            response = await client.post("/chat/completions", json=body)
            response.raise_for_status()
            if response.json()["usage"]["completion_tokens"] != max_tokens:
                raise RuntimeError(f"expected {max_tokens} new tokens: {response.json()}")
            return time.perf_counter() - start

        latencies = []
        start = time.perf_counter()
        for i in range(0, len(requests), concurrency):
            latencies += await asyncio.gather(*(one(r) for r in requests[i : i + concurrency]))
        return time.perf_counter() - start, latencies


def _vllm_rows(model_dir: Path, requests: list[dict], max_tokens: int, work: Path) -> tuple[list[dict], float]:
    port = _free_port()
    log = work / "server.log"
    start = time.perf_counter()
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "serving.serve", "--model", str(model_dir), "--port", str(port)],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the engine and worker processes end with it
        )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(
                        f"vllm serve exited ({server.returncode}):\n{log.read_text()[-3000:]}"
                    ) from None
                time.sleep(1)
        start_s = time.perf_counter() - start
        url = f"http://127.0.0.1:{port}/v1"
        asyncio.run(_bursts(url, requests[:8], 8, max_tokens))  # warm-up
        rows = []
        for c in CONCURRENCY:
            wall, latencies = asyncio.run(_bursts(url, requests, c, max_tokens))
            rows.append(_row("vLLM server", c, wall, latencies, max_tokens * len(requests)))
        return rows, start_s
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _vllm_version() -> str:
    from serving import venv

    result = subprocess.run(
        [str(venv.python_path()), "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True
    )
    return result.stdout.strip() or "?"


def _table(model_dir: Path, requests: list[dict], max_tokens: int, work: Path) -> str:
    """The markdown of one model: its description line and its table."""
    vllm_rows, start_s = _vllm_rows(model_dir, requests, max_tokens, work)
    hf_rows = _transformers_rows(model_dir, requests, max_tokens)
    sequential = {r["concurrency"]: r for r in hf_rows if "sequential" in r["path"]}
    rows = []
    for r in vllm_rows + hf_rows:
        ratio = r["tokens_per_s"] / sequential[r["concurrency"]]["tokens_per_s"]
        rows.append(
            [
                r["path"],
                r["concurrency"],
                f"{r['tokens_per_s']:.1f}",
                f"{r['p50']:.2f}",
                f"{r['p95']:.2f}",
                f"{ratio:.2f}x",
            ]
        )
    with open(model_dir / "config.json", encoding="utf-8") as f:
        text = json.load(f)["text_config"]
    shape = (
        f"hidden {text['hidden_size']}, {text['num_hidden_layers']} layers, {text['num_experts']} experts, head size "
        f"{text.get('head_dim') or text['hidden_size'] // text['num_attention_heads']}"
    )
    header = [
        "path",
        "concurrent requests",
        "new tokens/s",
        "p50 latency (s)",
        "p95 latency (s)",
        "throughput ratio",
    ]
    return "\n".join(
        [
            f"**{model_dir.name}** ({shape}); vLLM {start_s:.0f} s from `serving.serve` to a healthy server.",
            "",
            markdown_table(header, rows),
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "uni-moe-tiny", help="a Uni-MoE folder")
    parser.add_argument(
        "--wide-hidden",
        type=int,
        default=1024,
        help="also a random model with a language model this wide (`wide_model`; 0: none)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the transformers path (default 1: vLLM's CPU worker runs the model on one core, the "
        "other cores serving HTTP and processing; with 2 threads on a busy 2-core machine OpenMP thrashes)",
    )
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", help="markdown file to write the table into (its serving section)")
    args = parser.parse_args(argv)
    threads = fix_threads(args.threads)

    tables = []
    with tempfile.TemporaryDirectory(prefix="unimoe-serve-bench-") as tmp:
        work = Path(tmp)
        requests = _requests(work, args.requests)
        models = [args.model.resolve()]
        if args.wide_hidden:
            models.append(wide_model(work / f"uni-moe-random-hidden{args.wide_hidden}", args.wide_hidden))
        for model_dir in models:
            tables.append(_table(model_dir, requests, args.max_tokens, work))
            print(tables[-1], flush=True)
    text = "\n".join(
        [
            HEADER,
            "",
            f"`python -m benchmarks.serve` (float32, vLLM {_vllm_version()} CPU build, `serving.serve` flags):"
            f" {args.requests} image chat requests per concurrency level, {args.max_tokens} new tokens each (greedy)."
            " Latency: from a request's arrival (its burst) to its answer, processing included. Throughput ratio:"
            " over sequential transformers generate at the same concurrency.",
            "",
            machine_line(threads) + "; vLLM's worker: one core (its CPU build keeps one for the server)",
            "",
            "\n\n".join(tables),
            "",
        ]
    )
    print(text)
    if args.out:
        replace_markdown_section(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
