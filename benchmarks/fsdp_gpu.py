# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""GPU check: stage-3 LoRA steps on a scaled-down Uni-MoE-8e shape, one GPU without sharding against FSDP2 (accelerate,
recipes/accelerate/fsdp2.yaml) on every visible GPU; tokens/s and peak memory per GPU, written as a section of
benchmarks/RESULTS.md. Needs CUDA; about 3-5 minutes on one H100.

    python -m benchmarks.fsdp_gpu --out benchmarks/RESULTS.md

The shape: the 8e model's language model (8 experts in every layer, top-2, hidden 4096, intermediate 11008, 32 heads,
vocab 32003) cut to 4 layers, no towers; LoRA r 8 on attention and every expert, routers trained, AdamW, bf16 mixed
precision, batches of 4 x 1024 random tokens per GPU. The first 3 steps warm up; the next 10 are timed. With one GPU,
FSDP(1) measures the wrapper's cost (nothing is sharded); with N GPUs each FSDP process also holds 1/N of the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._common import replace_markdown_section


REPO = Path(__file__).resolve().parents[1]
LAYERS, BATCH, SEQ, WARMUP, STEPS = 4, 4, 1024, 3, 10
VOCAB = 32003


def build_model():
    import torch

    from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM
    from modeling_unimoe.configuration_unimoe import PRESETS
    from modeling_unimoe.training.stages import apply_lora, freeze_for_stage

    text = {**PRESETS["uni-moe-8e"]["text_config"], "num_hidden_layers": LAYERS, "output_router_logits": True}
    torch.manual_seed(0)
    model = UniMoEForCausalLM(UniMoEConfig(text_config=text)).to(torch.bfloat16)
    freeze_for_stage(model, 3)
    model = apply_lora(model, r=8, alpha=16, dropout=0.05)
    for param in model.parameters():  # frozen weights in bf16, trained ones (LoRA, routers) in fp32
        if param.requires_grad:
            param.data = param.data.float()
    return model


def worker(out: str) -> None:
    """One process's steps (plain when launched by python, FSDP2 when launched by accelerate with the FSDP config)."""
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="bf16")
    model = build_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=4e-5)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(accelerator.process_index)
    vocab = VOCAB
    times = []
    torch.cuda.reset_peak_memory_stats()
    for step in range(WARMUP + STEPS):
        ids = torch.randint(7, vocab, (BATCH, SEQ), generator=generator).to(accelerator.device)
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= WARMUP:
            times.append(time.perf_counter() - start)
    times.sort()
    report = {
        "processes": accelerator.num_processes,
        "fsdp": accelerator.is_fsdp2,
        "median_step_s": times[len(times) // 2],
        "tokens_per_s_per_gpu": BATCH * SEQ / times[len(times) // 2],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "loss": float(loss.detach()),
    }
    reports = accelerator.gather_for_metrics([report], use_gather_object=True)
    if accelerator.is_main_process:
        Path(out).write_text(json.dumps(reports))
    accelerator.wait_for_everyone()


def run(out_path: str | None) -> str:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.fsdp_gpu needs a CUDA GPU; none is visible.")
    gpus = torch.cuda.device_count()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.json"
        subprocess.run([sys.executable, "-m", "benchmarks.fsdp_gpu", "--worker", str(plain)], env={**env,
                       "CUDA_VISIBLE_DEVICES": env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}, cwd=REPO,
                       check=True, timeout=400)  # fmt: skip
        results["1 GPU, no sharding"] = json.loads(plain.read_text())
        fsdp = Path(tmp) / "fsdp.json"
        subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                        str(REPO / "recipes" / "accelerate" / "fsdp2.yaml"), "--num_processes", str(gpus),
                        "-m", "benchmarks.fsdp_gpu", "--worker", str(fsdp)], env=env, cwd=REPO, check=True,
                       timeout=400)  # fmt: skip
        results[f"FSDP2 on {gpus} GPU{'s' * (gpus > 1)}"] = json.loads(fsdp.read_text())
    name = torch.cuda.get_device_name(0)
    rows = []
    for label, reports in results.items():
        tokens = sum(r["tokens_per_s_per_gpu"] for r in reports)
        peak = max(r["peak_gib"] for r in reports)
        step = max(r["median_step_s"] for r in reports)
        rows.append(f"| {label} | {reports[0]['fsdp']} | {step * 1000:.0f} | {tokens:,.0f} | {peak:.1f} |")
    text = "\n".join([
        "## Stage-3 LoRA steps on GPUs: one GPU against FSDP2",
        "",
        f"`python -m benchmarks.fsdp_gpu` on {gpus} x {name}, torch {torch.__version__}: Uni-MoE-8e's language model "
        f"cut to {LAYERS} layers (8 experts, top-2, hidden 4096), LoRA r 8 on attention and every expert, routers "
        f"trained, bf16 mixed precision, {BATCH} x {SEQ} tokens per GPU per step, median of {STEPS} steps after "
        f"{WARMUP}.",
        "",
        "| run | FSDP2 | step (ms) | tokens/s (all GPUs) | peak memory per GPU (GiB) |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ])  # fmt: skip
    if out_path:
        replace_markdown_section(out_path, text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="markdown file whose section this run replaces (benchmarks/RESULTS.md)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
    else:
        print(run(args.out))


if __name__ == "__main__":
    main()
