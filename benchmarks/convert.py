"""Conversion time and peak memory (RSS) against checkpoint size; appends a table to benchmarks/RESULTS.md.

    python -m benchmarks.convert [--hidden 2048 --intermediate 5632 --layers 8 --runs 3]

Builds a fake speech-4e release in the released layout with `hub_export.fake_release` (float16 `.bin` shards, PEFT
adapter, non-LoRA trainables, aligner, routers, CLIP / Whisper folders; the LLM scaled up, the towers tiny), converts
it `--runs` times in fresh processes (`python -m hub_export.convert`) and records the wall time and the child's peak
RSS (ru_maxrss, which includes the memory-mapped pages of the source files that were read). Target: peak RSS <= 1.5 x
the output size.
"""

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hub_export.fake_release import ReleaseShapes, build_release

from ._common import replace_markdown_section, run_probed


REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
HEADER = "## Conversion"


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-shard-size", default="1GB")
    parser.add_argument("--no-write", action="store_true", help="print the table without appending it")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="unimoe-convert-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        shapes = ReleaseShapes(args.hidden, args.intermediate, args.layers, args.heads, dtype=torch.float16)
        paths = build_release(tmp / "release", "speech-4e", shapes)
        gc.collect()
        print(f"built the fake release in {time.perf_counter() - t:.0f} s")
        read = [paths["base"], paths["finetuned"], paths["clip"], paths["whisper"]]
        source_bytes = sum(folder_bytes(p) for p in read)

        # baseline: the same interpreter importing what the converter imports, converting nothing (measured through
        # the small probe process: a child forked straight from this large process would inherit its RSS until exec)
        base_cmd = [sys.executable, "-c", "import hub_export.convert, modeling_unimoe, transformers"]
        baseline = run_probed(base_cmd, REPO)[1]
        rows = []
        for run in range(args.runs):
            out = tmp / f"out{run}"
            cmd = [sys.executable, "-m", "hub_export.convert", "--variant", "speech-4e", "--base", str(paths["base"])]
            cmd += [
                "--finetuned",
                str(paths["finetuned"]),
                "--clip",
                str(paths["clip"]),
                "--whisper",
                str(paths["whisper"]),
            ]
            cmd += ["--out", str(out), "--max-shard-size", args.max_shard_size, "--no-progress"]
            seconds, rss = run_probed(cmd, REPO)
            output_bytes = folder_bytes(out)
            rows.append((seconds, rss, output_bytes))
            print(f"run {run + 1}: {seconds:.1f} s, peak RSS {rss / 1e9:.2f} GB, output {output_bytes / 1e9:.2f} GB")
            shutil.rmtree(out)

    seconds = statistics.median(r[0] for r in rows)
    rss = max(r[1] for r in rows)
    output = rows[0][2]
    table = [
        HEADER,
        "",
        f"`python -m benchmarks.convert --hidden {args.hidden} --intermediate {args.intermediate} --layers {args.layers} "
        f"--runs {args.runs}`: a fake speech-4e release in the released layout (float16 `.bin`; LLM scaled to hidden "
        f"{args.hidden}, {args.layers} layers, 4 experts, tiny towers), converted in fresh processes on this machine "
        f"({_cpu()}). Peak RSS is the converter process's ru_maxrss (it includes the memory-mapped source pages it "
        "read); the baseline is the same interpreter importing the converter and converting nothing.",
        "",
        "| checkpoint read | output (safetensors + files) | time (median) | peak RSS (max) | baseline RSS | peak / output | (peak - baseline) / output |",
        "|---|---|---|---|---|---|---|",
        f"| {source_bytes / 1e9:.2f} GB | {output / 1e9:.2f} GB | {seconds:.1f} s | {rss / 1e9:.2f} GB | "
        f"{baseline / 1e9:.2f} GB | {rss / output:.2f}x | {(rss - baseline) / output:.2f}x |",
        "",
        "Target: peak RSS <= 1.5x the output size. The converter streams: each source file is memory-mapped, every "
        "output tensor is computed (LoRA merged in float32) and written straight into its shard, and a source file is "
        "released as soon as no remaining tensor needs it, so the peak is about one source shard plus one tensor.",
        "",
    ]
    text = "\n".join(table)
    print(text)
    if not args.no_write:
        replace_markdown_section(RESULTS, text)


def _cpu() -> str:
    import os

    return f"{os.cpu_count()} cores, torch {torch.__version__}"


if __name__ == "__main__":
    main()
