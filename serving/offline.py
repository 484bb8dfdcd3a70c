"""Greedy generation with vLLM's offline engine on a Uni-MoE folder (run in the vLLM venv, build/venvs/vllm).

    build/venvs/vllm/bin/python -m serving.offline MODEL --requests requests.json --out tokens.json

requests.json: a list of {"prompt": "USER: <image>\\nWhat is this? ASSISTANT:", "images": ["a.png"],
"videos": [["frame0.png", ...]], "audios": ["a.wav"], "sounds": ["b.wav"]} (media optional; one placeholder per item,
in order; `sounds` feed `<sound>` in models with both a speech and a sound tower). tokens.json: {"tokens": one list of
generated token ids per request, "start_s": the engine's start time}. Runs with float32 weights, eager mode and a 10 %
RAM share for the KV cache on vLLM's CPU build (its default, 92 %, refuses to start beside other work).
"""

import argparse
import json
import sys
import time

import numpy as np
import soundfile
from PIL import Image


def _image(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _prompt(request: dict) -> dict:
    media = {}
    if request.get("images"):
        media["image"] = [_image(path) for path in request["images"]]
    if request.get("videos"):
        media["video"] = [np.stack([np.asarray(_image(path)) for path in frames]) for frames in request["videos"]]
    for key, modality in (("audios", "audio"), ("sounds", "sound")):
        if request.get(key):
            media[modality] = [soundfile.read(path, dtype="float32") for path in request[key]]  # (samples, rate)
    prompt = {"prompt": request["prompt"]}
    if media:
        prompt["multi_modal_data"] = {key: value[0] if len(value) == 1 else value for key, value in media.items()}
    return prompt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a Uni-MoE Hub folder")
    parser.add_argument("--requests", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--min-tokens", type=int, default=0, help="new tokens before an end of sequence may end it")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)

    from vllm import LLM, SamplingParams

    requests = json.loads(open(args.requests, encoding="utf-8").read())
    start = time.perf_counter()
    llm = LLM(
        model=args.model,
        trust_remote_code=True,
        dtype=args.dtype,
        enforce_eager=True,
        gpu_memory_utilization=0.1,
        max_model_len=2048,
        tensor_parallel_size=args.tensor_parallel_size,
        limit_mm_per_prompt={"image": 4, "video": 2, "audio": 2, "sound": 2},
    )
    start_s = time.perf_counter() - start
    params = SamplingParams(max_tokens=args.max_tokens, min_tokens=args.min_tokens, temperature=0.0)
    outputs = llm.generate([_prompt(r) for r in requests], params)
    result = {"tokens": [list(o.outputs[0].token_ids) for o in outputs], "start_s": round(start_s, 1)}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
