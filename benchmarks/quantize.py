"""Quantized loading (bitsandbytes 8-bit / 4-bit nf4): weight bytes and peak memory of Uni-MoE against transformers'
Mixtral of the same shape, and the tiny model's task accuracy; writes a section of benchmarks/RESULTS.md.

    python -m benchmarks.quantize [--hidden 1024 --intermediate 2816 --layers 8 --experts 8 --n-per-task 20]

Both LLMs (ours text-only, no towers) get random weights, saved once in bfloat16; every (model, precision) is then
loaded with `from_pretrained` in a fresh process (run under a small probe process, as in `benchmarks.convert`, so
ru_maxrss is that load's alone) and reports the bytes its parameters, buffers and quantization state (bitsandbytes'
absmax / scales) hold. Peak RSS is minus the same interpreter importing the same modules and loading nothing. Our
experts are per-expert `nn.Linear`, which bitsandbytes replaces; Mixtral's are stacked 3-D parameters, which it
cannot. The accuracy part scores `checkpoints/uni-moe-tiny` on the synthetic test split with
`training.evaluate`'s `predict` / `accuracy_report`, loading it in fp32, 8-bit and 4-bit.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from ._common import fix_threads, machine_line, markdown_table, replace_markdown_section, run_probed


REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
HEADER = "## Quantization"
MODELS = ("ours", "mixtral")
PRECISIONS = ("fp32", "bf16", "int8", "nf4", "nf4-dq")
PRECISION_LABEL = {
    "fp32": "fp32",
    "bf16": "bf16",
    "int8": "8-bit (LLM.int8)",
    "nf4": "4-bit nf4",
    "nf4-dq": "4-bit nf4 + double quant",
}
ACCURACY_PRECISIONS = ("fp32", "int8", "nf4")


def load_kwargs(precision: str) -> dict:
    """`from_pretrained` keyword arguments of a precision; modules bitsandbytes leaves alone stay in bfloat16."""
    from transformers import BitsAndBytesConfig

    if precision == "fp32":
        return {"dtype": torch.float32}
    if precision == "bf16":
        return {"dtype": torch.bfloat16}
    if precision == "int8":
        return {"dtype": torch.bfloat16, "quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    if precision in ("nf4", "nf4-dq"):
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=precision == "nf4-dq",
        )
        return {"dtype": torch.bfloat16, "quantization_config": config}
    raise ValueError(f"Unknown precision {precision!r}; expected one of {PRECISIONS}.")


def weight_bytes(model) -> dict:
    """Bytes held by the weights: parameters and buffers as stored (Params4bit: packed uint8, Int8Params: int8),
    plus bitsandbytes' quantization state (4-bit absmax / code, 8-bit row scales `SCB`)."""
    held, state, quantized_params, all_params = 0, 0, 0, 0
    seen = set()
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() in seen:  # tied weights count once
            continue
        seen.add(tensor.data_ptr())
        held += tensor.numel() * tensor.element_size()
        quant_state = getattr(tensor, "quant_state", None)
        if quant_state is not None:  # 4-bit: the logical shape is in the state
            all_params += quant_state.shape.numel()
            quantized_params += quant_state.shape.numel()
            state += sum(t.numel() * t.element_size() for t in _state_tensors(quant_state))
        elif tensor.dtype == torch.int8:
            all_params += tensor.numel()
            quantized_params += tensor.numel()
            scb = getattr(tensor, "SCB", None)
            state += 0 if scb is None else scb.numel() * scb.element_size()
        else:
            all_params += tensor.numel()
    return {
        "bytes": held + state,
        "footprint": model.get_memory_footprint(),
        "quant_state_bytes": state,
        "params": all_params,
        "quantized_share": quantized_params / max(all_params, 1),
    }


def _state_tensors(quant_state):
    tensors = [quant_state.absmax, quant_state.code]
    if getattr(quant_state, "state2", None) is not None:  # double quantization: the absmax of the absmax
        tensors += [quant_state.state2.absmax, quant_state.state2.code]
    if getattr(quant_state, "offset", None) is not None:
        tensors.append(quant_state.offset)
    return [t for t in tensors if isinstance(t, torch.Tensor)]


# ------------------------------------------------------------------------------------------- the measured processes


def _child(argv) -> None:
    """`python -m benchmarks.quantize --child KIND FOLDER PRECISION RESULT`: load one model, write its numbers as
    JSON (or the error). PRECISION `baseline` only imports."""
    kind, folder, precision, result_path = argv
    import bitsandbytes  # noqa: F401  (imported in the baseline too)
    from transformers import MixtralForCausalLM

    from modeling_unimoe import UniMoEForCausalLM

    result = {}
    if precision != "baseline":
        model_class = UniMoEForCausalLM if kind == "ours" else MixtralForCausalLM
        try:
            start = time.perf_counter()
            model = model_class.from_pretrained(folder, **load_kwargs(precision)).eval()
            result["seconds"] = time.perf_counter() - start
            result.update(weight_bytes(model))
            _touch(model)
        except Exception as error:  # recorded in the table: a mode a model cannot load in is a result
            result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    Path(result_path).write_text(json.dumps(result))


@torch.no_grad()
def _touch(model) -> None:
    """Read one element of every 4 KiB page of every weight: tensors `from_pretrained` left memory-mapped from the
    checkpoint (a bf16 load of a bf16 file) only enter RSS when read, as they are by the first forward."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.numel():
            tensor.data.reshape(-1)[::1024].float().sum()


def measure(kind: str, folder, precision: str, work: Path) -> dict:
    """Load in a fresh process (under a small probe process: ru_maxrss of children is a running maximum, and a
    child spawned straight from this large process would start with its RSS); returns the child's JSON + peak RSS."""
    result_path = work / f"{kind}-{precision}.json"
    cmd = [sys.executable, "-m", "benchmarks.quantize", "--child", kind, str(folder), precision, str(result_path)]
    try:
        _, peak_rss = run_probed(cmd, REPO)
    except RuntimeError as error:
        return {"error": f"process failed: {str(error).strip().splitlines()[-1][:200]}"}
    result = json.loads(result_path.read_text())
    result["peak_rss"] = peak_rss
    return result


# ------------------------------------------------------------------------------------------------------ the models


def build_configs(args):
    from transformers import MixtralConfig

    from modeling_unimoe import UniMoEConfig, UniMoETextConfig

    shape = dict(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        num_experts_per_tok=args.top_k,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    ours = UniMoEConfig(text_config=UniMoETextConfig(num_experts=args.experts, moe_layers="all", **shape))
    mixtral = MixtralConfig(num_local_experts=args.experts, **shape)
    return {"ours": ours, "mixtral": mixtral}


def save_random(kind: str, config, folder: Path) -> int:
    """A random-weight model of `config`, saved in bfloat16; returns its parameter count."""
    from transformers import MixtralForCausalLM

    from modeling_unimoe import UniMoEForCausalLM

    torch.manual_seed(0)
    model = (UniMoEForCausalLM if kind == "ours" else MixtralForCausalLM)(config).to(torch.bfloat16)
    count = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    gc.collect()
    return count


# ------------------------------------------------------------------------------------------ accuracy of the tiny model


def load_quantized(folder, precision: str):
    """The exported folder's model in `precision` (fp32 / int8 / nf4 with compute dtype float32) and its processor,
    through the installed classes (a checkpoint's copy of the modeling code may predate them)."""
    from transformers import BitsAndBytesConfig

    from modeling_unimoe import UniMoEForCausalLM, UniMoEProcessor

    kwargs = {"dtype": torch.float32}
    if precision == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif precision == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    model = UniMoEForCausalLM.from_pretrained(str(folder), **kwargs).eval()
    _avoid_cpu_packed_path_on_odd_shapes(model)
    return model, UniMoEProcessor.from_pretrained(str(folder))


def _avoid_cpu_packed_path_on_odd_shapes(model, block_n: int = 32) -> int:
    """bitsandbytes 0.50 repacks a 4-bit weight for its AVX512-BF16 CPU inference kernel on the first no-grad forward,
    which needs out_features % 32 == 0 and in_features % blocksize (64) == 0; the tiny model's FFNs (intermediate 176)
    have neither. Such layers take the generic dequantize-and-matmul path instead (the same numbers). Returns how
    many layers were switched."""
    switched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            blocksize = module.weight.quant_state.blocksize
            if module.out_features % block_n or module.in_features % blocksize:
                module.support_avx512bf16_for_cpu = False
                switched += 1
    return switched


def tiny_accuracy(folder, data, n_per_task: int, batch_size: int, log=print) -> dict:
    from tqdm import tqdm

    from modeling_unimoe.training.evaluate import accuracy_report, predict, test_records

    # bitsandbytes logs "MatMul8bitLt: inputs will be cast ... to float16" on every 8-bit matmul of float32 inputs
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    records, per_task = [], {}
    for record in test_records(data, "test"):
        if per_task.get(record["task"], 0) < n_per_task:
            per_task[record["task"]] = per_task.get(record["task"], 0) + 1
            records.append(record)
    tasks = list(per_task)
    reports = {}
    progress = tqdm(total=len(ACCURACY_PRECISIONS) * len(tasks), desc="tiny accuracy", file=sys.stdout)
    for precision in ACCURACY_PRECISIONS:
        model, processor = load_quantized(folder, precision)
        footprint = weight_bytes(model)["bytes"]
        predictions = []
        for task in tasks:
            chunk = [r for r in records if r["task"] == task]
            predictions += predict(model, processor, chunk, batch_size=batch_size)
            progress.update()
        ordered = [r for task in tasks for r in records if r["task"] == task]
        reports[precision] = {**accuracy_report(ordered, predictions), "bytes": footprint}
        del model
        gc.collect()
    progress.close()
    return reports


# ---------------------------------------------------------------------------------------------------------- report


def _mb(value) -> str:
    return f"{value / 1e6:,.1f} MB"


def report_text(args, threads, counts, results, baseline, accuracy) -> str:
    lines = [
        HEADER,
        "",
        f"`python -m benchmarks.quantize` ({' '.join(args.argv) or 'defaults'}): {machine_line(threads)}.",
        "",
        f"Two LLMs of the same shape, random weights saved in bfloat16: ours (`UniMoEForCausalLM`, text-only: no "
        f"towers) and transformers' `MixtralForCausalLM`; hidden {args.hidden}, intermediate {args.intermediate}, "
        f"{args.layers} layers, {args.heads} heads ({args.kv_heads} kv), vocab {args.vocab}, {args.experts} experts, "
        f"top-{args.top_k}: {counts['ours'] / 1e6:.0f}M parameters (Mixtral {counts['mixtral'] / 1e6:.0f}M). Each row "
        "is one `from_pretrained` in a fresh process; modules bitsandbytes does not replace load in bfloat16 "
        "(`dtype=torch.bfloat16`, 4-bit compute dtype bfloat16). *Weight bytes*: parameters + buffers as stored + "
        "bitsandbytes' quantization state (4-bit absmax, 8-bit row scales); `get_memory_footprint()` leaves the state "
        "out. *Peak RSS*: the loading process's ru_maxrss, which counts the checkpoint pages it read through the "
        "memory map (after loading it reads every weight once, as a first forward would: a bf16 load of the bf16 file "
        f"otherwise leaves them mapped and unread), minus {_mb(baseline)} (the same interpreter importing the same "
        "modules, loading nothing).",
        "",
    ]
    header = ["model", "precision", "weight bytes", "vs own bf16", "get_memory_footprint", "params quantized",
              "peak RSS - baseline", "load"]  # fmt: skip
    rows = []
    for kind in MODELS:
        bf16 = results[kind]["bf16"].get("bytes")
        for precision in PRECISIONS:
            r = results[kind][precision]
            name = "ours (Uni-MoE)" if kind == "ours" else "Mixtral"
            if "error" in r:
                rows.append([name, PRECISION_LABEL[precision], f"failed: `{r['error']}`", "", "", "", "", ""])
                continue
            rows.append(
                [
                    name,
                    PRECISION_LABEL[precision],
                    _mb(r["bytes"]),
                    f"{r['bytes'] / bf16:.3f}" if bf16 else "",
                    _mb(r["footprint"]),
                    f"{100 * r['quantized_share']:.1f}%",
                    _mb(r["peak_rss"] - baseline),
                    f"{r['seconds']:.1f} s",
                ]
            )
    lines += [markdown_table(header, rows), ""]

    ratio_rows = []
    for precision in PRECISIONS:
        ours, theirs = results["ours"][precision], results["mixtral"][precision]
        if "error" in ours or "error" in theirs:
            ratio_rows.append([PRECISION_LABEL[precision], "n/a", "n/a"])
            continue
        ratio_rows.append(
            [
                PRECISION_LABEL[precision],
                f"{ours['bytes'] / theirs['bytes']:.3f}",
                f"{(ours['peak_rss'] - baseline) / (theirs['peak_rss'] - baseline):.3f}",
            ]
        )
    lines += [markdown_table(["precision", "weight bytes ours / Mixtral", "peak RSS ours / Mixtral"], ratio_rows), ""]
    lines += [
        "Reading the peaks: a quantized load reads the whole bf16 checkpoint through the memory map, and those file "
        "pages count in RSS (reclaimable cache), so its peak is at least the bf16 file plus the quantized weights; the "
        "8-bit loads add transient memory of bitsandbytes' CPU int8 quantization. transformers saves Mixtral in the "
        "per-expert layout (`experts.{e}.w1/w2/w3`) and stacks the experts into 3-D tensors at load, a copy of every "
        "expert next to the mapped file: hence its higher bf16 / fp32 peaks. Our quantized loads take longer because "
        "bitsandbytes quantizes the experts too (Mixtral: attention only).",
        "",
    ]
    ours = results["ours"]
    if "error" not in ours["nf4"] and "error" not in ours["bf16"]:
        ratio = ours["nf4"]["bytes"] / ours["bf16"]["bytes"]
        lines += [
            f"Our 4-bit nf4 / bf16 weight bytes: **{ratio:.3f}** (target <= 0.35; with double quantization "
            f"{ours['nf4-dq']['bytes'] / ours['bf16']['bytes']:.3f}, without counting the quantization state "
            f"{ours['nf4']['footprint'] / ours['bf16']['footprint']:.3f}).",
            "",
        ]

    if accuracy:
        lines += [
            f"Task accuracy of `{args.tiny}` (the synthetic test split, the first {args.n_per_task} examples of each "
            f"task, greedy, scored by `training.evaluate`'s `predict` / `accuracy_report`; 4-bit compute dtype "
            "float32):",
            "",
        ]
        tasks = list(accuracy["fp32"]["per_task"])
        header = ["precision", "weight bytes", "mean", *tasks]
        rows = [
            [
                PRECISION_LABEL[p],
                _mb(accuracy[p]["bytes"]),
                f"{100 * accuracy[p]['mean_task_accuracy']:.1f}%",
                *(f"{100 * accuracy[p]['per_task'][t]['accuracy']:.0f}%" for t in tasks),
            ]
            for p in ACCURACY_PRECISIONS
        ]
        lines += [markdown_table(header, rows), ""]

    lines += [
        "What is quantized: every `nn.Linear` of the language model, i.e. attention q/k/v/o, every expert's "
        "gate/up/down and the dense FFNs, is replaced by `Linear8bitLt` / `Linear4bit`. The routers (`mlp.gate`), "
        "the vision / speech / sound towers and their connectors stay in the load dtype "
        "(`UniMoEPreTrainedModel._keep_in_fp32_modules`, which every transformers quantizer skips), and so do "
        "`lm_head` and the embeddings (transformers' default). Mixtral's experts are stacked 3-D `nn.Parameter`s "
        "(`MixtralExperts.gate_up_proj` / `down_proj`), not `nn.Linear`, so bitsandbytes quantizes only its "
        "attention: most of its bytes stay in bfloat16.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--tiny", default="checkpoints/uni-moe-tiny", help="exported tiny model (accuracy part)")
    parser.add_argument("--data", default="build/tiny/data", help="synthetic splits (test written if missing)")
    parser.add_argument("--n-per-task", type=int, default=20, help="test examples per task for the accuracy part")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--out", default=str(RESULTS), help="markdown file whose section is (re)written")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing it")
    args = parser.parse_args(argv)
    args.argv = argv
    threads = fix_threads()

    configs = build_configs(args)
    results, counts = {kind: {} for kind in MODELS}, {}
    with tempfile.TemporaryDirectory(prefix="unimoe-quantize-bench-") as tmp:
        tmp = Path(tmp)
        baseline = measure("ours", tmp, "baseline", tmp)["peak_rss"]
        print(f"baseline (imports only): {_mb(baseline)}")
        for kind in MODELS:
            start = time.perf_counter()
            counts[kind] = save_random(kind, configs[kind], tmp / kind)
            print(f"{kind}: {counts[kind] / 1e6:.0f}M parameters saved in {time.perf_counter() - start:.0f} s")
            for precision in PRECISIONS:
                r = results[kind][precision] = measure(kind, tmp / kind, precision, tmp)
                if "error" in r:
                    print(f"  {precision:>7}: failed: {r['error']}")
                else:
                    print(
                        f"  {precision:>7}: {_mb(r['bytes'])} weights, peak RSS - baseline "
                        f"{_mb(r['peak_rss'] - baseline)}, {r['seconds']:.1f} s"
                    )
    accuracy = None
    if not args.skip_accuracy:
        accuracy = tiny_accuracy(REPO / args.tiny, REPO / args.data, args.n_per_task, args.batch_size)
    text = report_text(args, threads, counts, results, baseline, accuracy)
    print(text)
    if not args.no_write:
        replace_markdown_section(args.out, text)
        print(f"Wrote the section {HEADER!r} of {args.out}")


if __name__ == "__main__":
    main()
