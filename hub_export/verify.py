"""`--verify`: compare the converted folder's logits with the source checkpoints' on a fixed text prompt.

Source side: the language model computed straight from the source files, one layer at a time, with every LoRA
applied unmerged (y = W x + alpha / r * B A x) and per-token top-k routing, in float32. Converted side: the folder
loaded in a fresh process through AutoModelForCausalLM with trust_remote_code, this repository's packages blocked.
The comparison covers the original vocabulary (the placeholder rows are new).

    python -m hub_export.verify --converted-logits FOLDER IDS.pt OUT.pt   (the fresh-process half)
"""

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ConversionError
from .plan import NUM_PLACEHOLDERS, plan_release, resolve_dtype, resolve_variant


def fixed_prompt_ids(text_vocab: int, length: int = 12) -> list[int]:
    generator = torch.Generator().manual_seed(0)
    return [1] + torch.randint(3, text_vocab, (length - 1,), generator=generator).tolist()


class SourceLM:
    """The source language model, read lazily from the conversion plan's sources."""

    def __init__(self, targets: dict, files: dict, config):
        self.targets, self.files, self.config = targets, files, config.get_text_config()

    def weight(self, key: str) -> torch.Tensor:
        return self.files[self.targets[key].value.file].get(self.targets[key].value.key).float()

    def linear(self, x: torch.Tensor, key: str) -> torch.Tensor:
        target = self.targets[key]
        y = x @ self.weight(key).T
        for delta in target.deltas:
            a = self.files[delta.a.file].get(delta.a.key).float()
            b = self.files[delta.b.file].get(delta.b.key).float()
            update = (x @ a.T) @ b.T if not delta.transpose else x @ (b @ a)
            y = y + delta.scale * update
        return y

    def swiglu(self, x, prefix):
        gate, up = self.linear(x, f"{prefix}.gate_proj.weight"), self.linear(x, f"{prefix}.up_proj.weight")
        return self.linear(F.silu(gate) * up, f"{prefix}.down_proj.weight")

    @torch.no_grad()
    def logits(self, ids: list[int]) -> torch.Tensor:
        c = self.config
        n, heads, kv, d = len(ids), c.num_attention_heads, c.num_key_value_heads, c.head_dim
        x = self.weight("model.language_model.embed_tokens.weight")[torch.tensor(ids)]
        theta = (c.rope_parameters or {}).get("rope_theta", 10000.0)
        inv = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
        angles = torch.arange(n).float()[:, None] * inv[None]
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

        def rope(t):  # [heads, n, d]
            return t * cos + torch.cat([-t[..., d // 2 :], t[..., : d // 2]], -1) * sin

        def rms(h, key):
            return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps) * self.weight(key)

        mask = torch.full((n, n), float("-inf")).triu(1)
        for layer in range(c.num_hidden_layers):
            p = f"model.language_model.layers.{layer}"
            h = rms(x, f"{p}.input_layernorm.weight")
            q = self.linear(h, f"{p}.self_attn.q_proj.weight").view(n, heads, d).transpose(0, 1)
            k = self.linear(h, f"{p}.self_attn.k_proj.weight").view(n, kv, d).transpose(0, 1)
            v = self.linear(h, f"{p}.self_attn.v_proj.weight").view(n, kv, d).transpose(0, 1)
            k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
            attn = torch.softmax(rope(q) @ rope(k).transpose(1, 2) / math.sqrt(d) + mask, -1) @ v
            x = x + self.linear(attn.transpose(0, 1).reshape(n, heads * d), f"{p}.self_attn.o_proj.weight")
            h = rms(x, f"{p}.post_attention_layernorm.weight")
            if f"{p}.mlp.gate.weight" in self.targets:
                out = torch.zeros_like(h)
                for t in range(n):
                    top, experts = torch.topk(self.linear(h[t], f"{p}.mlp.gate.weight"), c.num_experts_per_tok)
                    for w, e in zip(torch.softmax(top, -1), experts.tolist(), strict=True):
                        out[t] += w * self.swiglu(h[t : t + 1], f"{p}.mlp.experts.{e}")[0]
                x = x + out
            else:
                x = x + self.swiglu(h, f"{p}.mlp")
        x = rms(x, "model.language_model.norm.weight")
        return x @ self.weight("lm_head.weight").T


def converted_logits(folder, ids: list[int], dtype: str | None = None) -> torch.Tensor:
    """Logits of the converted folder, computed in a fresh process from its own remote code."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(torch.tensor([ids]), f"{tmp}/ids.pt")
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        cmd = [
            sys.executable,
            "-m",
            "hub_export.verify",
            "--converted-logits",
            str(folder),
            f"{tmp}/ids.pt",
            f"{tmp}/out.pt",
        ]
        if dtype:
            cmd.append(dtype)
        proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"loading {folder} through the Auto classes failed:\n{proc.stderr[-3000:]}")
        return torch.load(f"{tmp}/out.pt", weights_only=True)


def verify(out, variant, base, finetuned, clip, whisper=None, beats=None, experts=None, log=print) -> float:
    """Compare converted and source logits on a fixed prompt; raise ConversionError when they differ."""
    with plan_release(resolve_variant(variant), base, finetuned, clip, whisper, beats, experts) as plan:
        text_vocab = plan.config.get_text_config().vocab_size - NUM_PLACEHOLDERS
        ids = fixed_prompt_ids(text_vocab)
        expected = SourceLM(plan.targets, plan.sources.files, plan.config).logits(ids)
        out_dtype = resolve_dtype("auto", plan.sources, plan.targets)
    got = converted_logits(out, ids)[0, :, :text_vocab].float()
    diff = (got - expected).abs().max().item()
    tolerance = 1e-4 if _saved_dtype(out) == "float32" else 2e-2 * expected.abs().max().item()
    agree = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    log(
        f"verify: max |logit difference| {diff:.3e} (tolerance {tolerance:.1e}), argmax agreement {agree:.0%} ({out_dtype})"
    )
    if diff > tolerance:
        raise ConversionError(
            f"Verification failed: the converted folder's logits differ from the source's by {diff:.3e} (expected at "
            f"most {tolerance:.1e}) on a fixed {len(ids)}-token prompt. Re-run the conversion; report the issue if it "
            "persists."
        )
    return diff


def _saved_dtype(folder) -> str:
    import json

    config = json.loads((Path(folder) / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def _converted_main(folder, ids_path, out_path, dtype=None):
    from .check import block_local_package

    block_local_package()
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, **kwargs).eval()
    with torch.no_grad():
        logits = model(torch.load(ids_path, weights_only=True)).logits
    torch.save(logits.float(), out_path)


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "--converted-logits":
        _converted_main(*sys.argv[2:])
    else:
        print(__doc__)
        sys.exit(2)
