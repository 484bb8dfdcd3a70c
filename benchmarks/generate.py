"""End-to-end greedy generation speed: our text model against transformers' Mixtral and against cache-less generation.

    python -m benchmarks.generate [--quick] [--out benchmarks/RESULTS.md] [--mixtral-impls grouped_mm,eager]

Model: H=512, 8 layers, 8 heads, intermediate 1376, 4 experts top-2 in every layer, vocab 32000, fp32, text only
(`UniMoEForCausalLM` from `UniMoEConfig(text_config=UniMoETextConfig(...))`, no towers). Peers, all with the same
weights and timed interleaved in one run:

- `MixtralForCausalLM` with the same dimensions (sliding window off, the same RoPE theta), under its default experts
  implementation (`grouped_mm`) and each other one named in `--mixtral-impls` (default: `eager`, the fastest at
  1 token and at 4096 tokens in `benchmarks.moe_block`);
- our model with `use_cache=False`, as the original Uni-MoE inference does (the whole prefix is recomputed for every
  token); it is slow, so it runs fewer times (`--no-cache-runs`);
- compiled decoding, ours and Mixtral (default experts implementation): a static cache and generate()'s own
  `torch.compile` of the decode step (`CompileConfig(fullgraph=True)`; on GPUs generate() does this by itself with
  `cache_implementation="static"`, on CPUs only when asked through `compile_config._compile_all_devices`). While
  compiling, our MoE blocks run every expert (zero weights where not routed), so the ratio shows that cost too.

The logits of the prompt are checked to agree with Mixtral's (max abs difference printed) and the generated tokens are
compared. Greedy, batch 1, a 128-token random prompt, 128 new tokens (`min_new_tokens = max_new_tokens`, so every run
generates the same count); tokens/s = new tokens / wall time of `generate()` (prefill included).
"""

import argparse

import torch
from tqdm import tqdm
from transformers import CompileConfig, MixtralConfig, MixtralForCausalLM

from modeling_unimoe.configuration_unimoe import UniMoEConfig, UniMoETextConfig
from modeling_unimoe.modeling_unimoe import UniMoEForCausalLM

from ._common import (
    fix_threads,
    interleaved,
    machine_line,
    markdown_table,
    measure_quietly,
    median,
    replace_markdown_section,
)


HEADER = "## Generation"
DIMS = dict(
    vocab_size=32000,
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=2048,
)


def build_ours(experts: int, top_k: int) -> UniMoEForCausalLM:
    text = UniMoETextConfig(**DIMS, num_experts=experts, num_experts_per_tok=top_k, moe_layers="all")
    config = UniMoEConfig(text_config=text)  # no towers: no placeholder token ids needed
    return UniMoEForCausalLM(config).eval()


def mixtral_config(ours: UniMoEForCausalLM, impl: str) -> MixtralConfig:
    text = ours.config.text_config
    return MixtralConfig(
        **DIMS,
        num_local_experts=text.num_experts,
        num_experts_per_tok=text.num_experts_per_tok,
        rms_norm_eps=text.rms_norm_eps,
        rope_parameters=dict(text.rope_parameters),  # Mixtral's default theta is 1e6, LLaMA's 1e4
        sliding_window=None,
        router_jitter_noise=0.0,
        tie_word_embeddings=False,
        pad_token_id=text.pad_token_id,
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        experts_implementation=impl,
    )


def mixtral_state_dict(ours: UniMoEForCausalLM) -> dict[str, torch.Tensor]:
    """Our weights under Mixtral's names: experts stacked into gate_up_proj [E, 2F, H] (gate rows first) and
    down_proj [E, H, F]; the router `mlp.gate.weight` [E, H] keeps its name."""
    src = ours.state_dict()
    lm = "model.language_model."
    out = {"model.embed_tokens.weight": src[lm + "embed_tokens.weight"], "model.norm.weight": src[lm + "norm.weight"]}
    out["lm_head.weight"] = src["lm_head.weight"]
    text = ours.config.text_config
    for i in range(text.num_hidden_layers):
        a, b = f"{lm}layers.{i}.", f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{b}self_attn.{name}.weight"] = src[f"{a}self_attn.{name}.weight"]
        for name in ("input_layernorm", "post_attention_layernorm"):
            out[f"{b}{name}.weight"] = src[f"{a}{name}.weight"]
        out[f"{b}mlp.gate.weight"] = src[f"{a}mlp.gate.weight"]
        experts = range(text.num_experts)
        out[f"{b}mlp.experts.gate_up_proj"] = torch.stack(
            [
                torch.cat([src[f"{a}mlp.experts.{e}.gate_proj.weight"], src[f"{a}mlp.experts.{e}.up_proj.weight"]])
                for e in experts
            ]
        )
        out[f"{b}mlp.experts.down_proj"] = torch.stack([src[f"{a}mlp.experts.{e}.down_proj.weight"] for e in experts])
    return out


def build_mixtral(ours: UniMoEForCausalLM, impl: str) -> MixtralForCausalLM:
    model = MixtralForCausalLM(mixtral_config(ours, impl)).eval()
    missing, unexpected = model.load_state_dict(mixtral_state_dict(ours), strict=True)
    assert not missing and not unexpected
    assert model.config._experts_implementation == impl, model.config._experts_implementation
    return model


def run(args) -> str:
    threads = fix_threads(args.threads)
    if args.quick:
        args.prompt_tokens, args.new_tokens, args.rounds, args.no_cache_runs = 32, 16, 2, 1
    torch.manual_seed(0)
    ours = build_ours(args.experts, args.top_k)
    default_impl = MixtralForCausalLM(mixtral_config(ours, None)).config._experts_implementation
    impls = [default_impl] + [i for i in args.mixtral_impls.split(",") if i and i != default_impl]
    mixtral = {impl: build_mixtral(ours, impl) for impl in impls}

    head = (
        f"# Generation: ours vs Mixtral vs ours without cache (H=512, 8 layers, E={args.experts}, top-{args.top_k}, "
        f"vocab 32000, fp32)\n# {machine_line(threads)}"
    )
    print(head)
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, DIMS["vocab_size"], (1, args.prompt_tokens), generator=generator)
    attention_mask = torch.ones_like(input_ids)

    with torch.no_grad():
        ref = ours(input_ids).logits
        diffs = {impl: (model(input_ids).logits - ref).abs().max().item() for impl, model in mixtral.items()}
    print("prompt logits, max |mixtral - ours|: " + ", ".join(f"{i} {d:.1e}" for i, d in diffs.items()))
    bad = {i: d for i, d in diffs.items() if not d < args.tolerance}
    if bad:
        raise SystemExit(f"Mixtral logits differ from ours: {bad}")

    n = args.new_tokens
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    outputs = {}

    compiled = CompileConfig(fullgraph=True, dynamic=False)
    compiled._compile_all_devices = (
        True  # generate() compiles on GPUs only unless told (transformers' own tests do so)
    )
    static = dict(cache_implementation="static", compile_config=compiled)

    def generate(name, model, use_cache, extra=None):
        def step():
            with torch.no_grad():
                out = model.generate(input_ids, use_cache=use_cache, **kwargs, **(extra or {}))
            assert out.shape[1] == args.prompt_tokens + n, out.shape
            outputs[name] = out

        return step

    peers = {"ours": generate("ours", ours, True)}
    for impl, model in mixtral.items():
        peers[f"mixtral {impl}"] = generate(f"mixtral {impl}", model, True)
    peers["ours compiled"] = generate("ours compiled", ours, True, static)
    peers[f"mixtral {default_impl} compiled"] = generate(
        f"mixtral {default_impl} compiled", mixtral[default_impl], True, static
    )
    peers["ours no-cache"] = generate("ours no-cache", ours, False)

    for _ in tqdm(range(1), desc="warm-up (compiles the compiled peers)"):
        interleaved({k: v for k, v in peers.items() if k != "ours no-cache"}, 1)
    max_calls = {"ours no-cache": args.no_cache_runs}
    steps = {}
    # tqdm over the peers' runs: wrap each step so the bar advances per generate() call
    total = args.rounds * (len(peers) - 1) + min(args.no_cache_runs, args.rounds)
    bar = tqdm(total=total, desc="generate", unit="run")
    for name, step in peers.items():

        def counted(step=step, name=name):
            bar.set_postfix_str(name)
            step()
            bar.update(1)

        steps[name] = counted
    measured = measure_quietly(steps, args.rounds, args.wait_quiet, log=tqdm.write, max_calls=max_calls)
    times, other = measured.times, measured.other_cores
    bar.close()

    tps = {name: n / median(t) for name, t in times.items()}
    same = {name: torch.equal(out, outputs["ours"]) for name, out in outputs.items()}
    best_impl = max(impls, key=lambda i: tps[f"mixtral {i}"])
    rows = []
    for name in peers:
        t = times[name]
        rows.append(
            [
                name + (" (default experts impl)" if name == f"mixtral {default_impl}" else ""),
                f"{tps[name]:.1f}",
                f"{1e3 * median(t) / n:.2f}",
                f"{median(t):.2f}",
                len(t),
                f"{tps['ours'] / tps[name]:.2f}x",  # eager ours against every peer
                "yes" if same[name] else "no",
            ]
        )
    table = markdown_table(
        ["peer", "tokens/s", "ms/token", "s/generate (median)", "runs", "ours / peer", "same tokens as ours"], rows
    )
    compiled_mixtral = f"mixtral {default_impl} compiled"
    summary = [
        f"- ours / mixtral {default_impl} (default): **{tps['ours'] / tps[f'mixtral {default_impl}']:.2f}x**; "
        f"ours / fastest mixtral ({best_impl}): **{tps['ours'] / tps[f'mixtral {best_impl}']:.2f}x** (target >= 1.2x)",
        f"- compiled: ours / {compiled_mixtral}: **{tps['ours compiled'] / tps[compiled_mixtral]:.2f}x**; "
        f"ours compiled / ours eager: **{tps['ours compiled'] / tps['ours']:.2f}x**",
        f"- ours / ours no-cache: **{tps['ours'] / tps['ours no-cache']:.1f}x** (target >= 10x); the no-cache peer "
        f"ran {len(times['ours no-cache'])} times (interleaved with the first rounds), the others {args.rounds} times",
        "- prompt logits, max abs diff mixtral - ours: " + ", ".join(f"{i} {d:.1e}" for i, d in diffs.items()),
        f"- other processes used {other:.2f} cores on average during the kept rounds ({measured.dropped_rounds} "
        "disturbed rounds were dropped and run again)",
    ]
    text = "\n".join(
        [
            HEADER,
            "",
            f"`python -m benchmarks.generate{' --quick' if args.quick else ''}`: "
            "greedy generation, batch 1, "
            f"{args.prompt_tokens}-token random prompt, {n} new tokens (min_new_tokens = max_new_tokens), fp32; model "
            f"H=512, 8 layers, 8 heads, intermediate 1376, {args.experts} experts top-{args.top_k} in every layer, "
            "vocab 32000, text only. Mixtral = transformers' `MixtralForCausalLM` with the same weights; tokens/s = "
            "new tokens / wall time of `generate()` (prefill included), median of interleaved runs in one run.",
            "",
            f"Machine: {machine_line(threads)}.",
            "",
            table,
            "",
            *summary,
        ]
    )
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 32-token prompt, 16 new tokens, 2 rounds")
    parser.add_argument("--out", help="write the section into this markdown file")
    parser.add_argument("--mixtral-impls", default="eager", help="Mixtral experts implementations besides the default")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7, help="runs of each cached peer")
    parser.add_argument("--no-cache-runs", type=int, default=3)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch.get_num_threads())")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        help="first wait up to this many s for other processes to go idle (default 120, 0 with --quick)",
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
