# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Fine-tune Uni-MoE with trl's `SFTTrainer` and a PEFT LoRA, then merge the adapter and save a Hub folder.

    python recipes/transformers/trl_sft.py --model checkpoints/uni-moe-tiny --steps 60

Needs only the model folder or Hub id (its code loads with `trust_remote_code=True`) and
`pip install transformers peft accelerate datasets pillow trl`. The dataset is in trl's vision format,
{"images": [...], "messages": [...]}: `SFTTrainer` collates it with the processor (the images go into the user turn),
and `assistant_only_loss=True` keeps the labels on the assistant replies that the chat template marks. LoRA goes on
the language model only (`TARGET_MODULES` in finetune_common.py). `SFTTrainer` adds the load-balancing loss by
itself, weighted by the model's `router_aux_loss_coef` (or `SFTConfig(router_aux_loss_coef=...)`), and turns on
gradient checkpointing.
"""

import argparse

import torch
from datasets import Dataset
from finetune_common import TARGET_MODULES, answer, save, toy_examples
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoProcessor
from trl import SFTConfig, SFTTrainer


def to_trl(example: dict) -> dict:
    """{"image", "question", "answer"} -> trl's vision format {"images": [image], "messages": [user, assistant]}."""
    messages = [{"role": "user", "content": example["question"]}, {"role": "assistant", "content": example["answer"]}]
    return {"images": [example["image"]], "messages": messages}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="checkpoints/uni-moe-tiny", help="model folder or Hub id")
    parser.add_argument(
        "--out", default="build/finetuned/uni-moe-tiny-sft", help="folder for the merged model and processor"
    )
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True)
    data = Dataset.from_list([to_trl(example) for example in toy_examples(32)])
    config = SFTConfig(
        output_dir=f"{args.out}-checkpoints",  # nothing is saved there (save_strategy="no")
        assistant_only_loss=True,
        max_length=None,  # no truncation: it would cut image placeholders
        bf16=torch.cuda.is_available(),  # trl's default is bf16, which needs a GPU; CPUs train in float32
        max_steps=args.steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGET_MODULES, task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=data, eval_dataset=data, processing_class=processor, peft_config=lora
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    print(f"eval loss {before:.4f} -> {after:.4f}")

    model = trainer.model.merge_and_unload().eval()  # a plain model again, the LoRA weights folded in
    model.config.output_router_logits = False  # inference needs no router logits
    held_out = toy_examples(20, seed=1)
    accuracy = sum(answer(model, processor, ex["image"], ex["question"]) == ex["answer"] for ex in held_out) / 20
    print(f"accuracy on new images: {accuracy:.2f}")
    save(model, processor, args.model, args.out)
    print(f"saved the merged model and its processor in {args.out}")
    return {
        "eval_loss_before": before,
        "eval_loss_after": after,
        "accuracy": accuracy,
        "log": trainer.state.log_history,
    }


if __name__ == "__main__":
    main()
