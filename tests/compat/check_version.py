# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""The transformers compatibility checks of an exported Uni-MoE folder, run in one process of any Python environment.

    python tests/compat/check_version.py checkpoints/uni-moe-tiny build/compat/5.0.0.json

runs every check in `CHECKS` on a copy of the folder (the folder itself is never written to) through the folder's
remote code only: the uni-moe package (and this repository's other top-level packages) is blocked from import, and the
Hub is offline. It imports only torch, transformers (and what transformers imports: safetensors), the standard
library, numpy, PIL, soundfile and av, so it runs in a bare venv of any transformers version
(tests/test_version_matrix.py runs it in one venv per version of its matrix).

Each check is independent: a failure in one does not stop the others (a check whose model cannot load fails with the
load's exception). The JSON report holds, per check, "ok", "failed: <exception type>: <message>" or
"skipped: <reason>"; the greedy tokens of each modality and the pipelines' replies; the versions; the seconds each
check took. The prefill logits of the last prompt position, per modality, go to a .safetensors file next to it
(`<report stem>.safetensors`, keys `logits.<modality>`).
"""

import argparse
import importlib.abc
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
BLOCKED_PACKAGES = ("modeling_unimoe", "processing", "hub_export", "training", "demo", "benchmarks")
MODALITIES = ("text", "image", "video", "speech", "sound")
CHECKS = (
    "load",
    *(f"generate_{modality}" for modality in MODALITIES),
    "pipeline_image_text_to_text",
    "pipeline_any_to_text",
    "save_reload",
    "return_dict_false",
    "eager_attentions",
    "prompt_lookup",
    "assistant_model",
    "quantized_4bit",
)
MAX_NEW_TOKENS = 8
SAMPLING_RATE = 16_000
# a spoken digit of a speaker never heard in training (training/synthetic.py: speakers 20-23 are the test split)
SPEECH_FILE = REPO / "training" / "assets" / "speech" / "7_20.flac"


# --------------------------------------------------------------------------------------------------- import blocking


class _BlockPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED_PACKAGES:
            raise ModuleNotFoundError(f"{fullname} is blocked: this process must use the folder's remote code only")
        return None


def block_local_packages() -> None:
    """Make `import modeling_unimoe` (and the repository's other top-level packages) fail in this process."""
    imported = [name for name in sys.modules if name.split(".")[0] in BLOCKED_PACKAGES]
    if imported:
        raise RuntimeError(f"{imported} were imported before the block was installed")
    sys.meta_path.insert(0, _BlockPackages())


# ------------------------------------------------------------------------------------------------------------- media


def red_circle():
    """A red circle on white, 64 x 64."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(220, 30, 30))
    return image


def moving_square(num_frames: int = 8):
    """`num_frames` 64 x 64 frames of a blue square moving from left to right."""
    from PIL import Image, ImageDraw

    frames = []
    for i in range(num_frames):
        frame = Image.new("RGB", (64, 64), "white")
        x = 4 + round(36 * i / (num_frames - 1))
        ImageDraw.Draw(frame).rectangle((x, 24, x + 16, 40), fill=(30, 30, 220))
        frames.append(frame)
    return frames


def tone(seconds: float = 2.0, freq: float = 440.0):
    """A sine of `seconds` at 16 kHz, amplitude 0.5, float32."""
    import numpy as np

    t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speech_block() -> dict:
    """A spoken digit from training/assets/speech/ (a 1 kHz tone where the file is missing)."""
    if SPEECH_FILE.is_file():
        return {"type": "audio", "path": str(SPEECH_FILE)}
    return {"type": "audio", "audio": tone(2.0, 1000.0), "sampling_rate": SAMPLING_RATE}


def chats() -> dict:
    """One single-turn chat per modality."""

    def user(*blocks):
        return [{"role": "user", "content": list(blocks)}]

    def text(value):
        return {"type": "text", "text": value}

    return {
        "text": user(text("What is 2 plus 3?")),
        "image": user({"type": "image", "image": red_circle()}, text("What color is the shape?")),
        "video": user({"type": "video", "video": moving_square()}, text("Which way does the shape move?")),
        "speech": user(speech_block(), text("What number is said?")),
        "sound": user(
            {"type": "sound", "sound": tone(), "sampling_rate": SAMPLING_RATE}, text("How many beeps are there?")
        ),
    }


# ------------------------------------------------------------------------------------------------------------ checks


class Checks:
    """The checks, as methods named after `CHECKS`, sharing a lazily loaded model and processor."""

    def __init__(self, folder: Path, scratch: Path):
        self.folder, self.scratch = folder, scratch
        self.chats = chats()
        self.tokens, self.texts, self.logits = {}, {}, {}
        self._loaded = None

    # --- shared state

    def loaded(self):
        """(model, processor) through the Auto classes, loaded once; an exception is raised again on each call."""
        if self._loaded is None:
            try:
                self._loaded = self._load()
            except Exception as error:  # kept, and raised again by every check that needs the model
                self._loaded = error
        if isinstance(self._loaded, Exception):
            raise self._loaded
        return self._loaded

    def _load(self):
        from transformers import AutoModelForCausalLM, AutoProcessor

        processor = AutoProcessor.from_pretrained(self.folder, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(self.folder, trust_remote_code=True).eval()
        return model, processor

    def inputs(self, modality: str, processor=None):
        processor = processor or self.loaded()[1]
        return processor.apply_chat_template(
            self.chats[modality], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )

    def greedy(self, model, inputs, **kwargs) -> list[int]:
        """The new tokens of greedy generation."""
        import torch

        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, **kwargs)
        return out[0, inputs["input_ids"].shape[1] :].tolist()

    # --- the checks

    def load(self):
        """AutoConfig, AutoModel, AutoModelForCausalLM and AutoProcessor give the folder's remote-code classes."""
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(self.folder, trust_remote_code=True)
        base = AutoModel.from_pretrained(self.folder, trust_remote_code=True)
        model, processor = self.loaded()
        for name, obj in (("config", config), ("AutoModel", base), ("model", model), ("processor", processor)):
            module = type(obj).__module__
            assert module.startswith("transformers_modules."), f"{name} is {type(obj).__name__} from {module}"
        assert type(model).__name__ == "UniMoEForCausalLM", type(model).__name__

    def generate(self, modality: str):
        """Prefill logits of the last position, and greedy tokens with and without the KV cache (equal)."""
        import torch

        model, _ = self.loaded()
        inputs = self.inputs(modality)
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        assert torch.isfinite(logits).all(), "non-finite logits"
        self.logits[modality] = logits.float().numpy()
        cached = self.greedy(model, inputs)
        uncached = self.greedy(model, inputs, use_cache=False)
        self.tokens[modality] = cached
        assert cached == uncached, f"greedy tokens with the cache {cached} != without {uncached}"
        assert cached, "no new tokens"

    def pipeline_image_text_to_text(self):
        from transformers import pipeline

        pipe = pipeline("image-text-to-text", model=str(self.folder), trust_remote_code=True)
        out = pipe(text=self.chats["image"], max_new_tokens=MAX_NEW_TOKENS, return_full_text=False)
        reply = out[0]["generated_text"]
        assert isinstance(reply, str), f"generated_text is a {type(reply).__name__}"
        self.texts["pipeline_image_text_to_text"] = reply

    def pipeline_any_to_text(self):
        from transformers import pipeline

        pipe = pipeline("unimoe-any-to-text", model=str(self.folder), trust_remote_code=True)
        assert type(pipe).__name__ == "UniMoEPipeline", type(pipe).__name__
        mixed = [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": red_circle()},
                    speech_block(),
                    {"type": "sound", "sound": tone(), "sampling_rate": SAMPLING_RATE},
                    {"type": "text", "text": "What do you hear?"},
                ],
            }
        ]
        reply = pipe(mixed, max_new_tokens=MAX_NEW_TOKENS)["generated_text"]
        assert isinstance(reply, str), f"generated_text is a {type(reply).__name__}"
        self.texts["pipeline_any_to_text"] = reply

    def save_reload(self):
        """save_pretrained (model and processor) into a new folder, reload through the Auto classes: same inputs,
        same logits."""
        import torch
        from transformers import AutoModelForCausalLM, AutoProcessor

        model, processor = self.loaded()
        out = self.scratch / "saved"
        model.save_pretrained(out)
        processor.save_pretrained(out)
        reloaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
        reprocessor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
        inputs, reinputs = self.inputs("image"), self.inputs("image", reprocessor)
        assert sorted(inputs) == sorted(reinputs), f"{sorted(inputs)} != {sorted(reinputs)}"
        for key in inputs:
            assert torch.equal(inputs[key], reinputs[key]), f"the reloaded processor's {key} differs"
        with torch.no_grad():
            torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=1e-6)

    def return_dict_false(self):
        import torch

        model, _ = self.loaded()
        inputs = self.inputs("image")
        with torch.no_grad():
            out = model(**inputs, return_dict=False)
            expected = model(**inputs).logits
        assert isinstance(out, tuple), f"return_dict=False gave a {type(out).__name__}"
        torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-6)

    def eager_attentions(self):
        """Eager attention returns one attention tensor per LLM layer, and logits within 1e-4 of sdpa."""
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.folder, trust_remote_code=True).eval()
        inputs = self.inputs("image")
        with torch.no_grad():
            sdpa = model(**inputs).logits
            model.set_attn_implementation("eager")
            now = model.config._attn_implementation
            assert now == "eager", f"set_attn_implementation('eager') left the attention implementation at {now!r}"
            out = model(**inputs, output_attentions=True)
        layers = model.config.get_text_config().num_hidden_layers
        attentions = [a for a in (out.attentions or ()) if a is not None]
        assert len(attentions) == layers, f"{len(attentions)} attention tensors for {layers} layers"
        length = inputs["input_ids"].shape[1]
        for attention in attentions:
            assert attention.dim() == 4 and attention.shape[-2:] == (length, length), tuple(attention.shape)
        torch.testing.assert_close(out.logits, sdpa, rtol=0, atol=1e-4)

    def prompt_lookup(self):
        model, _ = self.loaded()
        inputs = self.inputs("image")
        plain, lookup = self.greedy(model, inputs), self.greedy(model, inputs, prompt_lookup_num_tokens=3)
        assert lookup == plain, f"prompt lookup gave {lookup}, plain greedy {plain}"

    def assistant_model(self):
        from transformers import AutoModelForCausalLM

        model, _ = self.loaded()
        assistant = AutoModelForCausalLM.from_pretrained(self.folder, trust_remote_code=True).eval()
        inputs = self.inputs("image")
        plain, assisted = self.greedy(model, inputs), self.greedy(model, inputs, assistant_model=assistant)
        assert assisted == plain, f"assisted generation gave {assisted}, plain greedy {plain}"

    def quantized_4bit(self):
        """bitsandbytes nf4 (fp32 compute): the LLM's linears become Linear4bit, and a text chat generates."""
        import torch
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        try:
            import bitsandbytes  # noqa: F401
        except Exception as error:  # any import failure means bitsandbytes cannot run here
            return f"skipped: bitsandbytes does not import: {type(error).__name__}: {error}"
        nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(
            self.folder, trust_remote_code=True, quantization_config=nf4
        ).eval()
        # bitsandbytes' AVX512-BF16 CPU path for 4-bit layers needs out_features % 32 == 0 and in_features a multiple
        # of the quantization block (not the tiny model's 176-wide FFNs): such layers keep the generic path
        packed = 0
        for module in model.modules():
            if type(module).__name__ == "Linear4bit":
                packed += 1
                blocksize = getattr(getattr(module.weight, "quant_state", None), "blocksize", 64)
                if getattr(module, "support_avx512bf16_for_cpu", False) and (
                    module.out_features % 32 or module.in_features % blocksize
                ):
                    module.support_avx512bf16_for_cpu = False
        assert packed, "no Linear4bit layer in the quantized model"
        tokens = self.greedy(model, self.inputs("text"))
        assert tokens, "no new tokens"
        self.tokens["quantized_4bit"] = tokens


def run_check(checks: Checks, name: str) -> str:
    """Run one check: "ok", "skipped: ..." (a check returns it) or "failed: <type>: <message> (at file:line)"."""
    method = getattr(checks, name, None)
    try:
        if method is None:
            result = checks.generate(name.removeprefix("generate_"))
        else:
            result = method()
        return result or "ok"
    except Exception as error:  # a failed check is reported, the others still run
        frame = traceback.extract_tb(error.__traceback__)[-1]
        message = " ".join(str(error).split())[:1500]
        return f"failed: {type(error).__name__}: {message} (at {Path(frame.filename).name}:{frame.lineno})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the exported Uni-MoE folder (copied before use)")
    parser.add_argument("report", type=Path, help="the JSON report to write (logits next to it, .safetensors)")
    parser.add_argument("--only", nargs="+", choices=CHECKS, help="run these checks only")
    args = parser.parse_args(argv)

    block_local_packages()
    scratch = Path(tempfile.mkdtemp(prefix="unimoe-compat-"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    # the remote code is copied here rather than into the shared ~/.cache/huggingface/modules
    os.environ["HF_MODULES_CACHE"] = str(scratch / "modules")
    # one thread: the tiny model gains nothing from more, and OpenMP threads that compete with other processes for
    # the cores slow it down many times (53 s instead of 5 s for all the checks, on a busy 2-core machine)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import save_file

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(0)
    folder = scratch / "model"
    shutil.copytree(args.folder, folder)
    checks = Checks(folder, scratch)
    results, seconds = {}, {}
    try:
        for name in args.only or CHECKS:
            start = time.perf_counter()
            results[name] = run_check(checks, name)
            seconds[name] = round(time.perf_counter() - start, 2)
            print(f"{name}: {results[name]} ({seconds[name]} s)", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    try:
        from importlib.metadata import version

        bnb_version = version("bitsandbytes")
    except Exception:  # not installed
        bnb_version = None
    logits_file = args.report.with_suffix(".safetensors")
    report = {
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "bitsandbytes": bnb_version,
        },
        "checks": results,
        "tokens": checks.tokens,
        "texts": checks.texts,
        "seconds": seconds,
        "logits_file": logits_file.name,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"logits.{m}": np.ascontiguousarray(v) for m, v in checks.logits.items()}, str(logits_file))
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
