"""Load an exported folder the way a Hub user does and generate a few tokens.

The uni-moe package is blocked from import in this process, so everything runs from the folder's own remote code
(`trust_remote_code=True`), offline.

Example:
    python -m hub_export.check build/uni-moe-tiny-random --save-logits /tmp/logits.pt
"""

import argparse
import importlib.abc
import os
import sys


BLOCKED_PACKAGES = ("modeling_unimoe", "processing", "demo")


class _BlockPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED_PACKAGES:
            raise ModuleNotFoundError(f"{fullname} is blocked: this process must use the folder's remote code only")
        return None


def block_local_package():
    """Make `import modeling_unimoe` (and our other top-level packages) fail in this process."""
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED_PACKAGES:
            raise RuntimeError(f"{name} was imported before the block was installed")
    sys.meta_path.insert(0, _BlockPackages())


def fixed_prompt(config, seq_len: int = 12):
    """A deterministic text-only prompt of ids outside the special/placeholder range."""
    import torch

    generator = torch.Generator().manual_seed(0)
    vocab = config.get_text_config().vocab_size
    return torch.randint(16, min(vocab, 32000), (1, seq_len), generator=generator)


def chat_with_an_image(folder, model, max_new_tokens: int):
    """AutoProcessor + chat template + generate on a drawn picture: the whole user path."""
    import torch
    from PIL import Image, ImageDraw
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill="red")
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What color is it?"}]}
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    answer = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"{type(processor).__name__}: image chat, {inputs['input_ids'].shape[1]} prompt tokens -> {answer!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument(
        "--save-logits",
        help="save {'causal_lm': logits, 'auto_model': the base model's last hidden state, 'tokens': ...} here",
    )
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args(argv)

    block_local_package()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(args.folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(args.folder, trust_remote_code=True).eval()
    auto_model = AutoModel.from_pretrained(args.folder, trust_remote_code=True).eval()
    print(
        f"Loaded {type(config).__name__} / {type(model).__name__} / {type(auto_model).__name__} from "
        f"{type(model).__module__} (remote code)"
    )

    input_ids = fixed_prompt(config)
    with torch.no_grad():
        logits = model(input_ids).logits
        auto_hidden = auto_model(input_ids).last_hidden_state
        tokens = model.generate(input_ids, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(f"prompt ids {input_ids.tolist()[0]}\ngenerated ids {tokens[0, input_ids.shape[1] :].tolist()}")
    if os.path.exists(os.path.join(args.folder, "processor_config.json")):
        chat_with_an_image(args.folder, model, args.max_new_tokens)
    if args.save_logits:
        torch.save({"causal_lm": logits, "auto_model": auto_hidden, "tokens": tokens}, args.save_logits)


if __name__ == "__main__":
    main()
