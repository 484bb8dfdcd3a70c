"""Fresh-process half of the conversion parity test: load converted folders the way a Hub user does and save logits.

    python -m tests.hub_export.run_converted ROOT VARIANT [VARIANT ...]

For each VARIANT, loads ROOT/VARIANT with AutoModelForCausalLM(trust_remote_code=True) while this repository's
packages are blocked from import, runs the inputs saved in ROOT/VARIANT-inputs.pt and saves ROOT/VARIANT-logits.pt.
"""

import sys

from hub_export.check import block_local_package


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    root, variants = argv[0], argv[1:]
    block_local_package()
    import torch
    from transformers import AutoModelForCausalLM

    for variant in variants:
        model = AutoModelForCausalLM.from_pretrained(f"{root}/{variant}", trust_remote_code=True, dtype=torch.float32)
        model.eval()
        print(f"{variant}: {type(model).__module__}.{type(model).__name__}")
        inputs = torch.load(f"{root}/{variant}-inputs.pt", weights_only=True)
        with torch.no_grad():
            logits = {kind: model(**kwargs).logits[0] for kind, kwargs in inputs.items()}
        torch.save(logits, f"{root}/{variant}-logits.pt")


if __name__ == "__main__":
    main()
