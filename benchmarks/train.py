"""Stage-3 training throughput: our MoE with PEFT LoRA (attention + every expert) and fully trained routers, against
transformers' MixtralForCausalLM with PEFT LoRA on the same modules (its stacked 3-D experts reached through
`target_parameters`), same dimensions, batch and optimizer, timed interleaved in one run.

    python -m benchmarks.train [--quick] [--out benchmarks/RESULTS.md]

One step = forward (with the router load-balancing loss) + backward + AdamW step on the trainable parameters. LoRA
r 8, alpha 16, dropout 0 for both (PEFT requires dropout 0 with `target_parameters`); text tokens only (the towers
are outside stage 3's LoRA and identical for both). Reports training tokens/s (median over interleaved rounds) and
the ratio ours / Mixtral (> 1: ours is faster).
"""

import argparse

import torch
from peft import LoraConfig, get_peft_model
from transformers import MixtralConfig, MixtralForCausalLM

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM, UniMoETextConfig
from modeling_unimoe.training.stages import apply_lora

from ._common import fix_threads, machine_line, markdown_table, measure_quietly, median, replace_markdown_section


HEADER = "## Stage-3 training"


def build(dims: dict, seed: int = 0):
    """(ours, mixtral): PEFT models with LoRA on q/k/v/o and the experts, routers trainable, same dimensions."""
    text = UniMoETextConfig(
        vocab_size=dims["vocab"], hidden_size=dims["hidden"], intermediate_size=dims["intermediate"],
        num_hidden_layers=dims["layers"], num_attention_heads=dims["heads"], num_key_value_heads=dims["heads"],
        num_experts=dims["experts"], num_experts_per_tok=2, router_aux_loss_coef=0.01, output_router_logits=True,
        max_position_embeddings=4096,
    )  # fmt: skip
    torch.manual_seed(seed)
    ours = UniMoEForCausalLM(UniMoEConfig(text_config=text))
    for p in ours.parameters():
        p.requires_grad_(False)
    ours = apply_lora(ours, r=8, alpha=16, dropout=0.0)

    config = MixtralConfig(
        vocab_size=dims["vocab"], hidden_size=dims["hidden"], intermediate_size=dims["intermediate"],
        num_hidden_layers=dims["layers"], num_attention_heads=dims["heads"], num_key_value_heads=dims["heads"],
        num_local_experts=dims["experts"], num_experts_per_tok=2, router_aux_loss_coef=0.01,
        output_router_logits=True, router_jitter_noise=0.0, max_position_embeddings=4096,
    )  # fmt: skip
    torch.manual_seed(seed)
    mixtral = MixtralForCausalLM(config)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
        modules_to_save=["mlp.gate"],
    )
    mixtral = get_peft_model(mixtral, lora)
    return ours, mixtral


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def step_fn(model, batch, seed):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step():
        torch.manual_seed(seed)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def run(dims, batch_size, seq_len, rounds, max_wait, give_up_after=120.0, log=print):
    threads = fix_threads()
    ours, mixtral = build(dims)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, dims["vocab"], (batch_size, seq_len), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    steps = {"ours": step_fn(ours, batch, 0), "mixtral": step_fn(mixtral, batch, 0)}
    for fn in steps.values():  # warm-up
        fn()
    log(f"trainable parameters: ours {trainable(ours):,}, mixtral {trainable(mixtral):,}")
    import inspect

    extra = (
        {"give_up_after": give_up_after} if "give_up_after" in inspect.signature(measure_quietly).parameters else {}
    )
    measured = measure_quietly(steps, rounds, max_wait, log=log, **extra)
    if isinstance(measured, tuple):  # older helper: (times, other cores)
        times, other = measured
    else:
        times, other = measured.times, measured.other_cores
    tokens = batch_size * seq_len
    rate = {name: tokens / median(values) for name, values in times.items()}
    return {"rate": rate, "ratio": rate["ours"] / rate["mixtral"], "threads": threads, "other": other,
            "trainable": {"ours": trainable(ours), "mixtral": trainable(mixtral)}}  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small dims, few rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--max-wait", type=float, default=30.0, help="seconds to wait for a quiet machine")
    parser.add_argument(
        "--give-up-after",
        type=float,
        default=120.0,
        help="after this many seconds of re-running disturbed rounds, keep them (the load is reported)",
    )
    parser.add_argument("--out", default="benchmarks/RESULTS.md", help="append the table here ('' to skip)")
    args = parser.parse_args(argv)
    if args.quick:
        dims = {"vocab": 512, "hidden": 64, "intermediate": 176, "layers": 2, "heads": 4, "experts": 4}
        batch_size, seq_len, rounds = 4, 64, args.rounds or 5
    else:
        dims = {"vocab": 32000, "hidden": 512, "intermediate": 1376, "layers": 4, "heads": 8, "experts": 4}
        batch_size, seq_len, rounds = 4, 256, args.rounds or 10
    result = run(dims, batch_size, seq_len, rounds, args.max_wait, args.give_up_after)
    dims_text = ", ".join(f"{k} {v}" for k, v in dims.items())
    table = markdown_table(
        ["model", "trainable params", "tokens/s (median)"],
        [
            ["ours (UniMoEForCausalLM, LoRA on nn.Linear experts)", f"{result['trainable']['ours']:,}",
             f"{result['rate']['ours']:.0f}"],
            ["transformers Mixtral (LoRA via target_parameters)", f"{result['trainable']['mixtral']:,}",
             f"{result['rate']['mixtral']:.0f}"],
        ],
    )  # fmt: skip
    other = "" if result["other"] is None else f" Other processes used {result['other']:.2f} cores while timing."
    text = (
        f"{HEADER}\n\n`python -m benchmarks.train{' --quick' if args.quick else ''}`: {dims_text}, top-2, batch "
        f"{batch_size} x {seq_len} tokens, fp32, one step = forward (LM + load-balancing loss) + backward + AdamW; "
        f"LoRA r 8 / alpha 16 / dropout 0 on q/k/v/o and every expert, routers fully trained; {rounds} interleaved "
        f"rounds. {machine_line(result['threads'])}.{other}\n\n{table}\n\n"
        f"Ratio ours / Mixtral: **{result['ratio']:.2f}x** (target >= 1.0x).\n"
    )
    print(text)
    if args.out:
        replace_markdown_section(args.out, text)


if __name__ == "__main__":
    main()
