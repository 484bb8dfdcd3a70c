# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Fine-tune Uni-MoE with transformers' `Trainer` and a PEFT LoRA, then merge the adapter and save a Hub folder.

    python recipes/transformers/trainer_lora.py --model checkpoints/uni-moe-tiny --steps 60

Needs only the model folder or Hub id (its code loads with `trust_remote_code=True`) and
`pip install transformers peft accelerate pillow`. The parts to copy into your own script:

- `ChatCollator`: the processor turns a batch of chats (images inside their content blocks) into model inputs; the
  labels are the assistant replies, which the chat template marks (`return_assistant_tokens_mask=True`), and -100
  elsewhere.
- `TARGET_MODULES` (finetune_common.py): LoRA on the language model only (attention, every expert, dense MLPs); the
  vision / speech / sound towers, their connectors and the routers stay frozen.
- `model.config.output_router_logits = True`: the training loss includes the load-balancing losses
  (`router_aux_loss_coef * aux_loss + router_z_loss_coef * z_loss`).

The data is a toy task (`finetune_common.toy_examples`: is the square on the left or the right?); the script prints
the eval loss before and after training and the merged model's accuracy on new images.
"""

import argparse

import torch
from finetune_common import TARGET_MODULES, answer, save, toy_examples
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoProcessor, Trainer, TrainingArguments


def to_chat(example: dict) -> dict:
    """{"image", "question", "answer"} -> {"messages": a user turn (image and question) and the assistant's answer}."""
    user = [{"type": "image", "image": example["image"]}, {"type": "text", "text": example["question"]}]
    reply = [{"type": "text", "text": example["answer"]}]
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


class ChatCollator:
    """A list of {"messages": chat} -> a right-padded batch whose labels are the assistant replies (-100 elsewhere)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.processor.apply_chat_template(
            [example["messages"] for example in examples],
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=True,
            processor_kwargs={"padding": True, "padding_side": "right"},  # the processor's settings go here
        )
        assistant = batch.pop("assistant_masks").bool()
        batch["labels"] = batch["input_ids"].masked_fill(~assistant, -100)
        return batch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="checkpoints/uni-moe-tiny", help="model folder or Hub id")
    parser.add_argument(
        "--out", default="build/finetuned/uni-moe-tiny-lora", help="folder for the merged model and processor"
    )
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True)
    model.config.output_router_logits = True  # the loss includes the load-balancing losses
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGET_MODULES, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.print_trainable_parameters()

    data = [to_chat(example) for example in toy_examples(32)]
    training_args = TrainingArguments(
        output_dir=f"{args.out}-checkpoints",  # nothing is saved there (save_strategy="no")
        max_steps=args.steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,  # the collator reads the "messages" column
        seed=0,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=data, eval_dataset=data, data_collator=ChatCollator(processor)
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    print(f"eval loss {before:.4f} -> {after:.4f}")

    model = model.merge_and_unload().eval()  # a plain model again, the LoRA weights folded in
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
