"""Run under `torchrun --nproc-per-node N`: loads a Hub folder with `tp_plan="auto"` (remote code, so it runs in any
transformers venv), computes the prefill logits and greedy tokens of the inputs saved in INPUTS, and on rank 0 the
same with the whole model in one process; rank 0 writes both, and the shapes of the sharded parameters, to OUT.

    torchrun --nproc-per-node 2 tests/training/parallel_tp_worker.py FOLDER INPUTS OUT
"""

import json
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM


NEW_TOKENS = 8


def run(model, inputs):
    with torch.no_grad():
        logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
    return logits, tokens[0, inputs["input_ids"].shape[1] :].tolist()


def main(folder, inputs_path, out_path):
    inputs = torch.load(inputs_path, weights_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, tp_plan="auto").eval()
    logits, tokens = run(model, inputs)
    local_shapes = {
        name: list(param.to_local().shape if hasattr(param, "to_local") else param.shape)
        for name, param in model.named_parameters()
        if ".layers.0." in name and "language_model" in name or name.startswith("lm_head")
    }
    if dist.get_rank() == 0:
        reference = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        reference_logits, reference_tokens = run(reference, inputs)
        torch.save({"logits": logits, "reference_logits": reference_logits}, out_path + ".pt")
        report = {"world_size": dist.get_world_size(), "tokens": tokens, "reference_tokens": reference_tokens,
                  "local_shapes": local_shapes}  # fmt: skip
        with open(out_path, "w") as f:
            json.dump(report, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
