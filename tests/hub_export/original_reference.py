"""An independent reference of the original Uni-MoE forward pass, for the converter's parity tests.

`OriginalReference` computes the original model's logits from a fake release (`hub_export.fake_release`) written only
from the reference document (shared/docs/uni-moe-reference.md) and the original loader's order: state dicts updated in
load order, LoRA applied unmerged at run time (y = W x + alpha / r * B A x), a LoRA whose weight is overwritten after
the merge discarded, media spliced in at negative placeholder ids, and per-token top-2 routing in a plain loop. It
shares no code with the converter or the model (only the fake release's layout constants); CLIP, Whisper and the
Q-Former are transformers' own classes, as in the original. `make_prompts` and `hf_inputs` write the same prompts for
the reference and for the converted model.
"""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from hub_export.fake_release import (
    BEATS_CFG,
    CLIP_CFG,
    EXPERT_FILES,
    EXPERT_LORA_ALPHA,
    EXPERT_LORA_R,
    QFORMER_CFG,
    VARIANT_LAYOUT,
    VOCAB,
    WHISPER_CFG,
    moe_layers,
)


IMAGE_INDEX, AUDIO_INDEX, VIDEO_INDEX = -200, -300, -400
FBANK_MEAN, FBANK_STD = 15.41663, 6.55582


# -- the reference forward --------------------------------------------------------------------------------------------
def _load_shards(folder: Path) -> dict:
    sd = {}
    for path in sorted(folder.glob("pytorch_model-*.bin")):
        sd.update(torch.load(path, map_location="cpu", weights_only=True))
    return sd


def _normalize(sd: dict) -> dict:
    sd = {(k[11:] if k.startswith("base_model.") else k): v for k, v in sd.items()}
    if any(k.startswith("model.model.") for k in sd):
        sd = {(k[6:] if k.startswith("model.") else k): v for k, v in sd.items()}
    return sd


class OriginalReference:
    """The original model's forward pass on a fake release, written from the reference document."""

    def __init__(self, paths: dict):
        self.variant = paths["variant"]
        _, _, self.num_experts, moe, self.audio, _ = VARIANT_LAYOUT[self.variant]
        load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
        e2 = Path(paths["finetuned"])
        config = json.loads((e2 / "config.json").read_text())  # the LLaVA config the original builds its model from
        self.hidden, self.layers, self.heads = (
            config[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")
        )
        self.moe_layers = set(moe_layers(moe, self.layers))
        self.sd = _load_shards(Path(paths["base"]))
        self.lora = {}  # module -> (A, B, scale), applied at run time
        self.expert_lora = {}

        def overwrite(update: dict):
            for k, v in update.items():
                self.sd[k] = v
                self.lora.pop(k.rsplit(".", 1)[0], None)  # merged, then overwritten: the LoRA is gone

        def peft():
            cfg = json.loads((e2 / "adapter_config.json").read_text())
            adapter = load(e2 / "adapter_model.bin")
            for k, a in adapter.items():
                if k.endswith("lora_A.weight"):
                    module = k[len("base_model.model.") : -len(".lora_A.weight")]
                    b = adapter[k.replace("lora_A", "lora_B")]
                    self.lora[module] = (a, b, cfg["lora_alpha"] / cfg["r"])

        if self.variant != "8e":
            overwrite(_normalize(load(e2 / "non_lora_trainables.bin")))
            peft()
            overwrite(load(e2 / "mm_audio_aligner.bin"))
            overwrite(load(e2 / "mlp_gates.bin"))
        else:
            experts_dir = Path(paths["experts"])
            for g in range(8):
                merged = load(e2 / f"{g}_mlp_experts.bin")
                merged.update(load(experts_dir / f"{EXPERT_FILES[g]}.bin"))
                for key, value in merged.items():
                    parts = key.split(".")
                    self.sd[f"model.layers.{parts[2]}.mlp.experts.{g}.{parts[-2]}.weight"] = value
            overwrite(_normalize(load(e2 / "non_lora_trainables.bin")))
            overwrite(load(e2 / "mlp_gates.bin"))
            peft()
            overwrite(load(e2 / "mm_audio_aligner.bin"))
            for layer in range(self.layers):  # DeepSpeed-MoE router name
                self.sd[f"model.layers.{layer}.mlp.gate.weight"] = self.sd[
                    f"model.layers.{layer}.mlp.deepspeed_moe.gate.wg.weight"
                ]

        self._load_towers(paths)

    def _load_towers(self, paths):
        from transformers import Blip2QFormerConfig, Blip2QFormerModel, CLIPVisionModel, WhisperConfig, WhisperModel

        clip_sd = torch.load(Path(paths["clip"]) / "pytorch_model.bin", weights_only=True)
        self.clip = CLIPVisionModel(CLIPVisionModel.config_class(**CLIP_CFG)).eval()
        own = self.clip.state_dict()
        prefix = "" if "vision_model.embeddings.class_embedding" in own else "vision_model."
        self.clip.load_state_dict(
            {
                k[len(prefix) :]: v
                for k, v in clip_sd.items()
                if k.startswith("vision_model.") and k[len(prefix) :] in own
            }
        )
        if self.audio == "speech":
            self.whisper_encoder = WhisperModel.from_pretrained(str(paths["whisper"])).encoder.eval()
            self.whisper_decoder = WhisperModel(WhisperConfig(**WHISPER_CFG)).decoder.eval()
            prefix = "model.mm_audio_aligner.decoder.audio_decoder."
            self.whisper_decoder.load_state_dict(
                {k[len(prefix) :]: v for k, v in self.sd.items() if k.startswith(prefix)}
            )
        else:
            ckpt = torch.load(paths["beats"], weights_only=True)
            self.beats_cfg, self.beats = ckpt["cfg"], ckpt["model"]
            self.qformer = Blip2QFormerModel(
                Blip2QFormerConfig(**QFORMER_CFG, encoder_hidden_size=BEATS_CFG["encoder_embed_dim"])
            ).eval()
            prefix = "model.mm_audio_aligner.qformer.qformer."
            self.qformer.load_state_dict({k[len(prefix) :]: v for k, v in self.sd.items() if k.startswith(prefix)})

    # ---- LLM pieces
    def linear(self, x, module):
        y = x @ self.sd[module + ".weight"].T
        if module in self.lora:
            a, b, scale = self.lora[module]
            y = y + scale * ((x @ a.T) @ b.T)
        return y

    def expert(self, x, layer, e):
        p = f"model.layers.{layer}.mlp.experts.{e}"
        if self.variant != "8e":
            gate, up = self.linear(x, f"{p}.gate_proj"), self.linear(x, f"{p}.up_proj")
            return self.linear(F.silu(gate) * up, f"{p}.down_proj")

        def proj(h, name):  # built-in expert LoRA, never merged in the original
            w, a, b = (self.sd[f"{p}.{name}{s}.weight"] for s in ("", "_lora_A", "_lora_B"))
            return h @ w.T + (EXPERT_LORA_ALPHA / EXPERT_LORA_R) * ((h @ a.T) @ b.T)

        return proj(F.silu(proj(x, "gate_proj")) * proj(x, "up_proj"), "down_proj")

    def mlp(self, x, layer):
        if layer not in self.moe_layers:
            p = f"model.layers.{layer}.mlp"
            return self.linear(
                F.silu(self.linear(x, f"{p}.gate_proj")) * self.linear(x, f"{p}.up_proj"), f"{p}.down_proj"
            )
        out = torch.zeros_like(x)
        for t in range(x.shape[0]):  # per-token routing: top-2 logits, softmax over the two
            logits = self.linear(x[t], f"model.layers.{layer}.mlp.gate")
            top, idx = torch.topk(logits, 2)
            weights = torch.softmax(top, dim=-1)
            for w, e in zip(weights, idx.tolist(), strict=True):
                out[t] += w * self.expert(x[t : t + 1], layer, e)[0]
        return out

    def rms(self, x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.sd[name]

    def llm(self, embeds):
        x, n, d = embeds, embeds.shape[0], self.hidden // self.heads
        pos = torch.arange(n).float()
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
        ang = torch.cat([pos[:, None] * inv[None]] * 2, dim=-1)  # [n, d]
        cos, sin = ang.cos(), ang.sin()

        def rope(t):  # t [heads, n, d]
            half = torch.cat([-t[..., d // 2 :], t[..., : d // 2]], dim=-1)
            return t * cos + half * sin

        mask = torch.full((n, n), float("-inf")).triu(1)
        for layer in range(self.layers):
            p = f"model.layers.{layer}"
            h = self.rms(x, f"{p}.input_layernorm.weight")
            q, k, v = (
                self.linear(h, f"{p}.self_attn.{m}").view(n, self.heads, d).transpose(0, 1)
                for m in ("q_proj", "k_proj", "v_proj")
            )
            scores = rope(q) @ rope(k).transpose(1, 2) / math.sqrt(d) + mask
            attn = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(n, self.hidden)
            x = x + self.linear(attn, f"{p}.self_attn.o_proj")
            x = x + self.mlp(self.rms(x, f"{p}.post_attention_layernorm.weight"), layer)
        return self.rms(x, "model.norm.weight") @ self.sd["lm_head.weight"].T

    # ---- media
    def image_features(self, pixel_values):  # [n, 3, H, W] -> [n, patches, hidden]
        hidden = self.clip(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        h = hidden @ self.sd["model.mm_projector.0.weight"].T + self.sd["model.mm_projector.0.bias"]
        return F.gelu(h) @ self.sd["model.mm_projector.2.weight"].T + self.sd["model.mm_projector.2.bias"]

    def speech_features(self, mel_chunks):  # [chunks, 80, 3000] -> [chunks * Q, hidden], chunk by chunk
        out = []
        for mel in mel_chunks:
            enc = self.whisper_encoder(mel[None]).last_hidden_state
            dec = self.whisper_decoder(
                inputs_embeds=self.sd["model.query_tokens"], encoder_hidden_states=enc
            ).last_hidden_state
            out.append(
                dec[0] @ self.sd["model.mm_audio_aligner.projector.weight"].T
                + self.sd["model.mm_audio_aligner.projector.bias"]
            )
        return torch.cat(out)

    def sound_features(self, fbank_chunks):  # raw kaldi fbank [chunks, frames, 128] -> [chunks * Q, hidden]
        out = []
        for fbank in fbank_chunks:
            x = beats_forward(self.beats, self.beats_cfg, ((fbank - FBANK_MEAN) / (2 * FBANK_STD))[None])
            queries = self.sd["model.mm_audio_aligner.query_tokens"]
            ones = torch.ones(x.shape[:2], dtype=torch.long)  # the original Q-Former attends to every frame
            q = self.qformer(
                query_embeds=queries, encoder_hidden_states=x, encoder_attention_mask=ones
            ).last_hidden_state
            out.append(
                q[0] @ self.sd["model.mm_audio_aligner.projector.weight"].T
                + self.sd["model.mm_audio_aligner.projector.bias"]
            )
        return torch.cat(out)

    @torch.no_grad()
    def logits(self, ids, images=(), videos=(), audios=()):
        """`ids`: token ids with IMAGE/AUDIO/VIDEO_INDEX placeholders; media items in order. Returns [positions, V]."""
        images, videos, audios = list(images), list(videos), list(audios)
        embed = self.sd["model.embed_tokens.weight"]
        pieces = []
        for token in ids:
            if token == IMAGE_INDEX:
                pieces.append(self.image_features(images.pop(0)[None])[0])
            elif token == VIDEO_INDEX:
                pieces.append(self.image_features(videos.pop(0)).mean(0))
            elif token == AUDIO_INDEX:
                chunks = audios.pop(0)
                pieces.append(self.speech_features(chunks) if self.audio == "speech" else self.sound_features(chunks))
            else:
                pieces.append(embed[token][None])
        return self.llm(torch.cat(pieces))


# ---- BEATs, from the BEATs paper / reference document: patch embedding, conv positions, deep-norm post-LN layers
# with gated relative position bias
def _buckets(rel, num_buckets, max_distance):
    half = num_buckets // 2
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = (
        exact + (torch.log(rel.clamp_min(1).float() / exact) / math.log(max_distance / exact) * (half - exact)).long()
    )
    large = large.clamp(max=half - 1)
    return out + torch.where(rel < exact, rel, large)


def beats_forward(sd: dict, cfg: dict, fbank: torch.Tensor) -> torch.Tensor:
    """[batch, frames, 128] normalised fbank -> [batch, patches, encoder_embed_dim]."""
    p, heads, c = cfg["input_patch_size"], cfg["encoder_attention_heads"], cfg["encoder_embed_dim"]
    x = F.conv2d(fbank[:, None], sd["patch_embedding.weight"], sd.get("patch_embedding.bias"), stride=p)
    x = x.flatten(2).transpose(1, 2)  # [B, time * freq patches, embed]
    x = F.layer_norm(x, x.shape[-1:], sd["layer_norm.weight"], sd["layer_norm.bias"])
    if "post_extract_proj.weight" in sd:
        x = x @ sd["post_extract_proj.weight"].T + sd["post_extract_proj.bias"]
    v, g = sd["encoder.pos_conv.0.weight_v"], sd["encoder.pos_conv.0.weight_g"]
    w = g * v / v.norm(dim=(0, 1), keepdim=True)  # weight norm over every dim but the kernel dim
    k = cfg["conv_pos"]
    xc = F.conv1d(x.transpose(1, 2), w, sd["encoder.pos_conv.0.bias"], padding=k // 2, groups=cfg["conv_pos_groups"])
    if k % 2 == 0:
        xc = xc[..., :-1]
    x = x + F.gelu(xc).transpose(1, 2)
    x = F.layer_norm(x, (c,), sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"])
    b, n, _ = x.shape
    d = c // heads
    alpha = (2 * cfg["encoder_layers"]) ** 0.25 if cfg["deep_norm"] else 1.0
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    pos_bias = None
    for i in range(cfg["encoder_layers"]):
        q_ = f"encoder.layers.{i}.self_attn"

        def lin(h, name, prefix=q_):
            return h @ sd[f"{prefix}.{name}.weight"].T + sd[f"{prefix}.{name}.bias"]

        if pos_bias is None:  # computed by the first layer, reused by every later one
            table = sd[f"{q_}.relative_attention_bias.weight"]
            pos_bias = table[_buckets(rel, cfg["num_buckets"], cfg["max_distance"])].permute(2, 0, 1)  # [H, n, n]
        raw_q = lin(x, "q_proj").view(b, n, heads, d).transpose(1, 2)  # [B, H, n, d]
        q = raw_q * d**-0.5 / 32
        key = lin(x, "k_proj").view(b, n, heads, d).transpose(1, 2)
        val = lin(x, "v_proj").view(b, n, heads, d).transpose(1, 2)
        scores = q @ key.transpose(-1, -2)
        scores = (scores - scores.amax(-1, keepdim=True)) * 32
        gates = torch.sigmoid(
            (raw_q @ sd[f"{q_}.grep_linear.weight"].T + sd[f"{q_}.grep_linear.bias"]).view(b, heads, n, 2, 4).sum(-1)
        )
        gate_a, gate_b = gates[..., :1], gates[..., 1:]
        scores = scores + (gate_a * (gate_b * sd[f"{q_}.grep_a"] - 1.0) + 2.0) * pos_bias
        attn = (torch.softmax(scores, -1) @ val).transpose(1, 2).reshape(b, n, c)
        layer = f"encoder.layers.{i}"

        def ln(h, name, prefix=layer):
            return F.layer_norm(h, (c,), sd[f"{prefix}.{name}.weight"], sd[f"{prefix}.{name}.bias"])

        x = ln(x * alpha + lin(attn, "out_proj"), "self_attn_layer_norm")
        x = ln(x * alpha + lin(F.gelu(lin(x, "fc1", layer)), "fc2", layer), "final_layer_norm")
    return x


# -- prompts ------------------------------------------------------------------------------------------------------------
def make_prompts(variant: str, seed: int = 0) -> dict:
    """Per prompt kind: the original's ids (negative placeholders) and media, in the original inference order."""
    g = torch.Generator().manual_seed(seed)
    audio = VARIANT_LAYOUT[variant][4]
    text = lambda n: torch.randint(3, VOCAB, (n,), generator=g).tolist()  # noqa: E731
    prompts = {"text": {"ids": [1] + text(10)}}
    image = torch.randn(3, 32, 32, generator=g)
    video = torch.randn(8, 3, 32, 32, generator=g)
    prompts["image"] = {
        "ids": [1] + text(3) + [IMAGE_INDEX] + text(2) + [VIDEO_INDEX] + text(4),
        "images": [image],
        "videos": [video],
    }
    if audio == "speech":
        mel = torch.randn(2, 80, 3000, generator=g)
        prompts["speech"] = {"ids": [1] + text(3) + [AUDIO_INDEX] + text(5), "audios": [mel]}
    else:
        fbank = 10 + 5 * torch.randn(2, 320, 128, generator=g)
        prompts["sound"] = {"ids": [1] + text(3) + [AUDIO_INDEX] + text(5), "audios": [fbank]}
    return prompts


def hf_inputs(prompt: dict, config: dict) -> dict:
    """The same prompt for the converted model: placeholders expanded into their token ids, standard input names."""
    patches = (CLIP_CFG["image_size"] // CLIP_CFG["patch_size"]) ** 2
    ids, inputs = [], {}
    audio_key = "speech_token_id" if config.get("speech_token_id") is not None else "sound_token_id"
    for token in prompt["ids"]:
        if token == IMAGE_INDEX:
            ids += [config["image_token_id"]] * patches
        elif token == VIDEO_INDEX:
            ids += [config["video_token_id"]] * patches
        elif token == AUDIO_INDEX:
            chunks = prompt["audios"][0].shape[0]
            queries = (
                config["num_speech_query_tokens"]
                if audio_key == "speech_token_id"
                else config["num_sound_query_tokens"]
            )
            ids += [config[audio_key]] * (chunks * queries)
        else:
            ids.append(token)
    if prompt.get("images"):
        inputs["pixel_values"] = torch.stack(prompt["images"])
    if prompt.get("videos"):
        inputs["pixel_values_videos"] = torch.stack(prompt["videos"])
    if prompt.get("audios"):
        inputs["input_features" if audio_key == "speech_token_id" else "sound_features"] = prompt["audios"][0]
    inputs["input_ids"] = torch.tensor([ids])
    return inputs
