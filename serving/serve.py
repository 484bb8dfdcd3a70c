"""Serve a Uni-MoE folder with vLLM's OpenAI-compatible server (run from the main venv, .venv).

    python -m serving.serve                                   # checkpoints/uni-moe-tiny on http://127.0.0.1:8000/v1
    python -m serving.serve --model path/to/uni-moe-folder --port 8000 -- --tensor-parallel-size 2

Makes (or reuses) the vLLM venv (`serving.venv`), then runs, in it:

    vllm serve MODEL --trust-remote-code --chat-template <the folder's template, BOS first>
        --dtype float32 --enforce-eager --gpu-memory-utilization 0.1 --max-model-len 2048
        --limit-mm-per-prompt '{"image": 4, "video": 2, "audio": 2}'

Arguments after `--` go to `vllm serve` as they are (later flags override the ones above; on a GPU drop
`--enforce-eager` and raise `--gpu-memory-utilization`). The chat template is the folder's chat_template.jinja with
the tokenizer's BOS token put first: vLLM tokenizes a rendered chat without special tokens, and Uni-MoE prompts start
with BOS (as UniMoEProcessor tokenizes them).
"""

import argparse
import json
import os
import sys
from pathlib import Path

from . import venv


DEFAULT_MODEL = venv.REPO / "checkpoints" / "uni-moe-tiny"
SERVE_FLAGS = [
    "--trust-remote-code",
    "--dtype",
    "float32",
    "--enforce-eager",
    "--gpu-memory-utilization",
    "0.1",  # on the CPU build: the share of RAM for weights and KV cache (its default, 0.92, refuses to start)
    "--max-model-len",
    "2048",
    "--limit-mm-per-prompt",
    json.dumps({"image": 4, "video": 2, "audio": 2}),
]
BOS_TEMPLATE = "{{- bos_token -}}\n"


class ServeError(Exception):
    """The server cannot be started on this folder; the message says why and what to do."""


def check_model(model: Path) -> None:
    if not (model / "config.json").is_file() or not (model / "chat_template.jinja").is_file():
        raise ServeError(
            f"{model} has no config.json or no chat_template.jinja: pass a Uni-MoE Hub folder (--model), e.g. "
            f"{DEFAULT_MODEL}."
        )


def chat_template(model: Path, out_dir: Path) -> Path:
    """The folder's chat template with BOS first, written to `out_dir`."""
    template = (model / "chat_template.jinja").read_text(encoding="utf-8")
    path = out_dir / "chat_template_bos.jinja"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BOS_TEMPLATE + template, encoding="utf-8")
    return path


def serve_command(model: Path, host: str, port: int, extra: list[str], work_dir: Path) -> list[str]:
    vllm = venv.VENV / "bin" / "vllm"
    template = chat_template(model, work_dir)
    return [str(vllm), "serve", str(model), *SERVE_FLAGS, "--chat-template", str(template)] + [
        "--host",
        host,
        "--port",
        str(port),
        *extra,
    ]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"a Uni-MoE Hub folder ({DEFAULT_MODEL})")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    try:
        python, seconds = venv.ensure_venv()
    except venv.VenvError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if seconds is not None:
        print(f"vLLM venv made in {seconds} s: {python}", flush=True)
    model = args.model.resolve()
    try:
        check_model(model)
    except ServeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = serve_command(model, args.host, args.port, extra, venv.REPO / "build" / "serving" / model.name)
    print(" ".join(command), flush=True)
    # the repository root on the path: the plugin (serving.vllm_plugin) and modeling_unimoe import from it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(venv.REPO), os.environ.get("PYTHONPATH")]))}
    os.execve(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
