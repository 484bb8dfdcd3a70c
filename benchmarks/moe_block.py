"""Our sparse MoE block against transformers' Mixtral block with the same weights, per experts implementation.

    python -m benchmarks.moe_block [--quick] [--out benchmarks/RESULTS.md] [--sizes 1,16,512,4096]

`UniMoESparseMoeBlock` (separate `nn.Linear` experts, one stable sort, one slice per expert, `index_add_`) against
`MixtralSparseMoeBlock` (experts stacked as 3-D `gate_up_proj` [E, 2F, H] / `down_proj` [E, H, F], router
`gate.weight` [E, H]) under each of its experts implementations (`eager`, `grouped_mm`, `batched_mm`; chosen with
the config's `_experts_implementation`, which `from_pretrained(experts_implementation=...)` and
`model.set_experts_implementation()` set on full models). Both blocks hold the same weights; the outputs (and, for
forward+backward, the input, router and expert gradients) are checked to agree before anything is timed.

H=512, F=1376, E=4, top-2, fp32, batch 1. Forward runs under no_grad; forward+backward backpropagates a fixed random
output gradient into the input and all parameters. All peers of a row are timed interleaved in the same run
(A B C D, B C D A, ...), and the table gives medians and the ratio best-Mixtral / ours (> 1: ours is faster).
"""

import argparse
import copy
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from modeling_unimoe.configuration_unimoe import UniMoETextConfig
from modeling_unimoe.modeling_unimoe import UniMoESparseMoeBlock

from ._common import (
    fix_threads,
    interleaved,
    machine_line,
    markdown_table,
    measure_quietly,
    median,
    replace_markdown_section,
    rounds_for,
)


IMPLS = ("eager", "grouped_mm", "batched_mm")
MODES = ("forward", "forward+backward")
HEADER = "## MoE block"


def text_config(hidden, intermediate, experts, top_k) -> UniMoETextConfig:
    return UniMoETextConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=8,
        num_experts=experts,
        num_experts_per_tok=top_k,
    )


def mixtral_blocks(ours: UniMoESparseMoeBlock, hidden, intermediate, impls) -> dict[str, MixtralSparseMoeBlock]:
    """One Mixtral block per experts implementation, all sharing one set of parameters copied from `ours`."""
    config = MixtralConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=8,
        num_local_experts=ours.num_experts,
        num_experts_per_tok=ours.top_k,
        router_jitter_noise=0.0,
    )
    first = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        first.gate.weight.copy_(ours.gate.weight)  # router: [E, H]
        for e, expert in enumerate(ours.experts):
            # gate_up_proj[e] = [gate_proj; up_proj] ([2F, H], gate first: `_default_apply_gate` chunks gate, up)
            first.experts.gate_up_proj[e].copy_(torch.cat([expert.gate_proj.weight, expert.up_proj.weight], dim=0))
            first.experts.down_proj[e].copy_(expert.down_proj.weight)  # [H, F]
    blocks = {}
    for impl in impls:
        cfg = copy.deepcopy(config)
        cfg._experts_implementation = impl  # what the experts' forward dispatches on (integrations/moe.py)
        block = MixtralSparseMoeBlock(cfg)
        block.gate.weight = first.gate.weight
        block.experts.gate_up_proj = first.experts.gate_up_proj
        block.experts.down_proj = first.experts.down_proj
        blocks[impl] = block
    return blocks


def _ours_call(block):
    return lambda x: block(x)


def _mixtral_call(block):
    return lambda x: block(x)


def grads_in_mixtral_layout(block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(router, gate_up_proj, down_proj) gradients of either kind of block, in Mixtral's layout."""

    def grad(p):
        return p.grad.clone() if p.grad is not None else torch.zeros_like(p)

    if isinstance(block, MixtralSparseMoeBlock):
        return grad(block.gate.weight), grad(block.experts.gate_up_proj), grad(block.experts.down_proj)
    gate_up = torch.stack([torch.cat([grad(e.gate_proj.weight), grad(e.up_proj.weight)]) for e in block.experts])
    down = torch.stack([grad(e.down_proj.weight) for e in block.experts])
    return grad(block.gate.weight), gate_up, down


def check(ours, peers: dict, x: torch.Tensor, with_grad: bool) -> dict[str, float]:
    """Max abs difference of each peer (name -> (call, block)) to ours: the output, and with `with_grad` also the
    gradients of the input, the router and the experts."""
    diffs = {}
    if not with_grad:
        with torch.no_grad():
            ref = ours(x)
            for name, (call, _) in peers.items():
                diffs[name] = (call(x) - ref).abs().max().item()
        return diffs
    gy = torch.randn_like(x)
    xg = x.clone().requires_grad_()
    ours.zero_grad(set_to_none=True)
    ref = ours(xg)
    ref.backward(gy)
    ref_grads = (xg.grad.clone(), *grads_in_mixtral_layout(ours))
    for name, (call, block) in peers.items():
        block.zero_grad(set_to_none=True)
        xg.grad = None
        out = call(xg)
        out.backward(gy)
        grads = (xg.grad, *grads_in_mixtral_layout(block))
        diffs[name] = max(
            [(out - ref).abs().max().item()]
            + [(a - b).abs().max().item() for a, b in zip(grads, ref_grads, strict=True)]
        )
    return diffs


def batched_mm_skip(tokens, top_k, hidden, intermediate, mode, max_tokens) -> str | None:
    """batched_mm gathers a full weight copy per (token, expert) pair: [tokens * k, 3 * F * H] floats."""
    if tokens > max_tokens:
        return f"skipped: > {max_tokens} tokens (too slow on CPU)"
    gathered = tokens * top_k * 3 * hidden * intermediate * 4
    need = gathered * (1 if mode == "forward" else 2.5)  # backward keeps the gathers and makes their gradients
    available = _available_memory()
    if available and need > 0.6 * available:
        return f"skipped: needs ~{need / 2**30:.0f} GiB (gathered weights), {available / 2**30:.0f} GiB free"
    return None


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def make_step(call, params, x, mode, gy):
    if mode == "forward":

        def step():
            with torch.no_grad():
                call(x)

        return step

    xg = x.clone().requires_grad_()

    def step():
        for p in params:
            p.grad = None
        xg.grad = None
        call(xg).backward(gy)

    return step


def run(args) -> str:
    threads = fix_threads(args.threads)
    torch.manual_seed(0)
    H, F, E, K = args.hidden, args.intermediate, args.experts, args.top_k
    ours = UniMoESparseMoeBlock(text_config(H, F, E, K))
    impls = [i for i in args.impls.split(",") if i]
    mixtral = mixtral_blocks(ours, H, F, impls)

    sizes = (
        [int(s) for s in args.sizes.split(",")] if args.sizes else ([1, 16, 512] if args.quick else [1, 16, 512, 4096])
    )
    budget, min_rounds, max_rounds = (0.5, 3, 5) if args.quick else (args.budget, args.min_rounds, 200)
    batched_max = min(args.batched_mm_max_tokens, 16) if args.quick else args.batched_mm_max_tokens

    head = f"# MoE block: ours vs Mixtral (H={H}, F={F}, E={E}, top-{K}, fp32, batch 1)\n# {machine_line(threads)}"
    print(head)
    cases = [(t, m) for t in sizes for m in MODES]
    rows, checks, notes = [], [], []
    bar = tqdm(cases, desc="moe_block", unit="case")
    for tokens, mode in bar:
        bar.set_postfix_str(f"{tokens} tokens, {mode}")
        torch.manual_seed(tokens)
        x = torch.randn(1, tokens, H)
        gy = torch.randn_like(x)
        peers = {"ours": (_ours_call(ours), ours)}
        skipped = {}
        for impl in impls:
            reason = batched_mm_skip(tokens, K, H, F, mode, batched_max) if impl == "batched_mm" else None
            if reason:
                skipped[impl] = reason
            else:
                peers[impl] = (_mixtral_call(mixtral[impl]), mixtral[impl])

        others = {n: p for n, p in peers.items() if n != "ours"}
        diffs = check(ours, others, x, with_grad=mode != "forward")
        checks.append([tokens, mode] + [f"{diffs[i]:.1e}" if i in diffs else "-" for i in list(others)])
        bad = {n: d for n, d in diffs.items() if not d < args.tolerance}
        if bad:
            raise SystemExit(f"{tokens} tokens {mode}: outputs differ from ours: {bad}")
        tqdm.write(
            f"{tokens:>5} tokens {mode:<17} max |peer - ours| " + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items())
        )

        steps = {}
        for name, (call, block) in peers.items():
            steps[name] = make_step(call, list(block.parameters()), x, mode, gy)
        warm = interleaved(steps, 2)
        per_round = sum(t[-1] for t in warm.values())
        rounds = rounds_for(per_round, budget, min_rounds, max_rounds)
        measured = measure_quietly(steps, rounds, args.wait_quiet, log=tqdm.write)
        times, other = measured.times, measured.other_cores
        ms = {n: 1e3 * median(t) for n, t in times.items()}
        timed_impls = [i for i in impls if i in ms]
        best = min(timed_impls, key=ms.get) if timed_impls else None
        row = [tokens, mode, f"{ms['ours']:.2f}"]
        row += [f"{ms[i]:.2f}" if i in ms else "skipped" for i in impls]
        row += [best or "-", f"{ms[best] / ms['ours']:.2f}x" if best else "-"]
        row += [f"{rounds} ({measured.dropped_rounds})", f"{other:.2f}"]
        rows.append(row)
        for impl, reason in skipped.items():
            notes.append(f"{impl} at {tokens} tokens, {mode}: {reason}")
        tqdm.write(
            "      ms: "
            + ", ".join(f"{n} {v:.2f}" for n, v in ms.items())
            + f"  ({rounds} rounds, {measured.dropped_rounds} dropped, other processes {other:.2f} cores)"
        )

    cols = ["tokens", "mode", "ours ms"]
    cols += [f"mixtral {i} ms" for i in impls] + ["best mixtral", "ratio best/ours"]
    cols += ["rounds (dropped)", "other load (cores)"]
    table = markdown_table(cols, rows)
    check_cols = ["tokens", "mode"] + [f"max abs diff {n}" for n in impls]
    check_rows = [r + ["-"] * (len(check_cols) - len(r)) for r in checks]
    text = "\n".join(
        [
            HEADER,
            "",
            f"`python -m benchmarks.moe_block{' --quick' if args.quick else ''}`: "
            f"`UniMoESparseMoeBlock` vs transformers' `MixtralSparseMoeBlock` with the same weights, H={H}, F={F}, "
            f"E={E}, top-{K}, fp32, batch 1; forward under no_grad, forward+backward into the input and all "
            f"parameters. Medians of interleaved rounds in one run; ratio = best Mixtral / ours (> 1: ours faster). "
            "Rounds during which other processes kept more than 0.25 cores busy were dropped and run again; "
            "'other load' is the CPU (in cores) that other processes used during the kept rounds.",
            "",
            f"Machine: {machine_line(threads)}.",
            "",
            table,
            "",
            *(f"- {n}" for n in notes),
            *([""] if notes else []),
            "Agreement checked before timing (max abs difference to ours of the output, and for forward+backward "
            "also of the input, router and expert gradients):",
            "",
            markdown_table(check_cols, check_rows),
        ]
    )
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1/16/512 tokens, a few rounds")
    parser.add_argument("--out", help="write the section into this markdown file")
    parser.add_argument("--sizes", help="comma-separated token counts (default 1,16,512,4096)")
    parser.add_argument("--impls", default=",".join(IMPLS), help="Mixtral experts implementations to compare")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1376)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch.get_num_threads())")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timing per row (full run)")
    parser.add_argument("--min-rounds", type=int, default=7)
    parser.add_argument("--batched-mm-max-tokens", type=int, default=512)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        help="before each row wait up to this many s for other processes to go idle (default 120, 0 with --quick)",
    )
    args = parser.parse_args(argv)
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 120.0
    text = run(args)
    print()
    print(text)
    if args.out:
        replace_markdown_section(args.out, text)


if __name__ == "__main__":
    main()
