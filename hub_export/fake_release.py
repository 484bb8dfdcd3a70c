"""Small fake Uni-MoE v1 releases in the exact released layout, for the converter's tests and benchmarks.

`build_release(root, variant, shapes)` writes random checkpoints with the released file names and key names: pickled
`.bin` shards with an index, PEFT 0.4 adapter files (`base_model.model.` keys without adapter name),
`non_lora_trainables.bin` in the PEFT-wrapped namespace, `mm_audio_aligner.bin`, `mlp_gates.bin` (with the router LoRA
factors of the interval/audio runs), the 8e expert files (`{g}_mlp_experts.bin` with rank-local DeepSpeed expert
numbering as saved by two expert-parallel ranks, plus the stage-2 FFN files `mlp_*.bin`), CLIP and Whisper folders in
transformers' format and a BEATs `.pt` with `cfg` and `model`, and a SentencePiece tokenizer. `ReleaseShapes` sizes
the language model and sets the tensors' dtype; the towers and the vocabulary stay tiny. The same seed and shapes
write the same files.
"""

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch


EXPERT_FILES = (
    "mlp_audiocap",
    "mlp_basev",
    "mlp_base",
    "mlp_base1",
    "mlp_base4",
    "mlp_base7",
    "mlp_base",
    "mlp_base7",
)

VOCAB = 320  # the tokenizer is trained on a small corpus, so the vocabulary stays small at every size


@dataclass(frozen=True)
class ReleaseShapes:
    """The language model's sizes and the dtype of every tensor written (the released checkpoints are float16)."""

    hidden: int = 32
    intermediate: int = 64
    layers: int = 4
    heads: int = 4
    dtype: torch.dtype = torch.float32


# the adapters and the towers: tiny (the key names and file layout are the released ones)
LORA_R, LORA_ALPHA = 4, 8  # PEFT adapter: scaling 2
EXPERT_LORA_R, EXPERT_LORA_ALPHA = 8, 16  # 8e built-in expert LoRA (config defaults): scaling 2
CLIP_CFG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=16,
    hidden_act="quick_gelu",
)
WHISPER_CFG = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    vocab_size=64,
    num_mel_bins=80,
    max_source_positions=1500,
    max_target_positions=16,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
)
SPEECH_QUERIES, SOUND_QUERIES = 4, 4
BEATS_CFG = dict(
    input_patch_size=16,
    embed_dim=24,
    conv_bias=False,
    encoder_layers=2,
    encoder_embed_dim=32,
    encoder_ffn_embed_dim=64,
    encoder_attention_heads=4,
    activation_fn="gelu",
    layer_norm_first=False,
    deep_norm=True,
    conv_pos=8,
    conv_pos_groups=4,
    relative_position_embedding=True,
    num_buckets=16,
    max_distance=64,
    gru_rel_pos=True,
    finetuned_model=False,
    dropout=0.0,
    attention_dropout=0.0,
)
QFORMER_CFG = dict(hidden_size=48, num_attention_heads=12, num_hidden_layers=2, intermediate_size=64)

VARIANT_LAYOUT = {
    # variant: (base folder, fine-tuned folder, experts, MoE layers, audio path, router LoRA quirk)
    "speech-4e": ("Uni-MoE-speech-base", "Uni-MoE-speech-e2", 4, "all", "speech", False),
    "audio-4e": ("Uni-MoE-audio-base", "Uni-MoE-audio-e2", 4, "even", "sound", True),
    "speech-v1.5": ("Uni-MoE-speech-base-interval", "Uni-MoE-speech-v1.5", 4, "even", "speech", True),
    "8e": ("Uni-MoE-speech-base", "Uni-MoE-8e-e2", 8, "all", "speech", False),
}


# -- fake releases ----------------------------------------------------------------------------------------------------
class _Rand:
    def __init__(self, seed: int, dtype: torch.dtype):
        self.g, self.dtype = torch.Generator().manual_seed(seed), dtype

    def __call__(self, *shape, std=0.2):
        return (torch.randn(*shape, generator=self.g) * std).to(self.dtype)

    def norm(self, n):
        return (1.0 + 0.1 * torch.randn(n, generator=self.g)).to(self.dtype)


def _save(obj, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)


def _llava_config(variant: str, experts: int, s: ReleaseShapes) -> dict:
    cfg = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 512,
        "vocab_size": VOCAB,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "mm_vision_tower": "checkpoints/clip-vit-large-patch14-336",
        "mm_audio_tower": "checkpoints/whisper-small",
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "audio_projector_type": "linear",
        "query_tokens_size": SPEECH_QUERIES,
        "moe": {"moe_enable": True},
        "num_experts": experts,
        "num_experts_per_tok": 2,
    }
    if variant == "8e":
        cfg.update(ep_size=2, enable_deepspeed_moe=True)
    if variant == "audio-4e":
        cfg["mm_audio_tower"] = "checkpoints/BEATs_iter3_plus_AS2M.pt"
    return cfg


def _tokenizer_files(folder: Path, corpus_seed: int = 0):
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    words = "the a cat dog sat on mat image audio video hello world what is in this picture describe sound".split()
    rng = random.Random(corpus_seed)
    text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(300))
    corpus = folder / ".corpus.txt"
    corpus.write_text(text)
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=VOCAB,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": None,
                "legacy": False,
                "model_max_length": 2048,
                "padding_side": "right",
                "tokenizer_class": "LlamaTokenizer",
            }
        )
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )


def _mlp(r: _Rand, prefix: str, s: ReleaseShapes) -> dict:
    return {
        f"{prefix}.gate_proj.weight": r(s.intermediate, s.hidden),
        f"{prefix}.up_proj.weight": r(s.intermediate, s.hidden),
        f"{prefix}.down_proj.weight": r(s.hidden, s.intermediate),
    }


def _linear_shape(module: str, s: ReleaseShapes) -> tuple[int, int]:
    """[out, in] of a language-model linear layer, by its module name."""
    if module.endswith("down_proj"):
        return s.hidden, s.intermediate
    if module.endswith(("gate_proj", "up_proj")):
        return s.intermediate, s.hidden
    return s.hidden, s.hidden  # attention projections


def moe_layers(moe: str, layers: int) -> list[int]:
    """The MoE layers of a VARIANT_LAYOUT entry's layout ("all" or "even") in a model of `layers` layers."""
    return list(range(layers)) if moe == "all" else list(range(0, layers, 2))


def _llm(r: _Rand, experts: int, moe: str, s: ReleaseShapes) -> dict:
    sd = {"model.embed_tokens.weight": r(VOCAB, s.hidden, std=1.0), "model.norm.weight": r.norm(s.hidden)}
    sd["lm_head.weight"] = r(VOCAB, s.hidden)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, s.hidden // s.heads, 2).float() / (s.hidden // s.heads)))
    for layer in range(s.layers):
        p = f"model.layers.{layer}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[f"{p}.self_attn.{name}.weight"] = r(s.hidden, s.hidden)
        sd[f"{p}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()  # transformers 4.31 saved this buffer
        sd[f"{p}.input_layernorm.weight"] = r.norm(s.hidden)
        sd[f"{p}.post_attention_layernorm.weight"] = r.norm(s.hidden)
        if layer in moe_layers(moe, s.layers):
            sd[f"{p}.mlp.gate.weight"] = r(experts, s.hidden)
            for e in range(experts):
                sd.update(_mlp(r, f"{p}.mlp.experts.{e}", s))
        else:
            sd.update(_mlp(r, f"{p}.mlp", s))
    return sd


def _clip_state(r: _Rand) -> dict:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(int(r(1).abs().item() * 1e6) % 2**31)
    model = CLIPVisionModel(CLIPVisionConfig(**CLIP_CFG))
    sd = {k if k.startswith("vision_model.") else f"vision_model.{k}": v for k, v in model.state_dict().items()}
    for k in list(sd):  # stronger-than-default random weights
        if sd[k].is_floating_point() and sd[k].dim() > 0:
            sd[k] = sd[k] + r(*sd[k].shape, std=0.05)
    return sd


def _whisper_state(r: _Rand) -> dict:
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(int(r(1).abs().item() * 1e6) % 2**31)
    model = WhisperModel(WhisperConfig(**WHISPER_CFG))
    sd = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point() and v.dim() > 0 and "embed_positions" not in k:
            v = v + r(*v.shape, std=0.05)
        sd[k] = v
    return sd


def _qformer_state(r: _Rand, encoder_hidden: int) -> dict:
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    torch.manual_seed(int(r(1).abs().item() * 1e6) % 2**31)
    model = Blip2QFormerModel(Blip2QFormerConfig(**QFORMER_CFG, encoder_hidden_size=encoder_hidden))
    return {
        k: v + r(*v.shape, std=0.05) if v.is_floating_point() and v.dim() > 0 else v
        for k, v in model.state_dict().items()
    }


def _beats_state(r: _Rand, cfg: dict) -> dict:
    """A random BEATs `model` state dict with the original BEATs parameter names."""
    c, e, ffn, heads, k = (
        cfg[n]
        for n in ("encoder_embed_dim", "embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads", "conv_pos")
    )
    p = cfg["input_patch_size"]
    sd = {
        "patch_embedding.weight": r(e, 1, p, p, std=0.05),
        "layer_norm.weight": r.norm(e),
        "layer_norm.bias": r(e, std=0.05),
        "post_extract_proj.weight": r(c, e),
        "post_extract_proj.bias": r(c, std=0.05),
        "encoder.pos_conv.0.weight_g": 0.5 + r(1, 1, k).abs(),
        "encoder.pos_conv.0.weight_v": r(c, c // cfg["conv_pos_groups"], k),
        "encoder.pos_conv.0.bias": r(c, std=0.05),
        "encoder.layer_norm.weight": r.norm(c),
        "encoder.layer_norm.bias": r(c, std=0.05),
    }
    table = r(cfg["num_buckets"], heads, std=0.5)
    for i in range(cfg["encoder_layers"]):
        q = f"encoder.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{q}.self_attn.{name}.weight"] = r(c, c)
            sd[f"{q}.self_attn.{name}.bias"] = r(c, std=0.05)
        sd[f"{q}.self_attn.relative_attention_bias.weight"] = table.clone()  # one table shared by every layer
        sd[f"{q}.self_attn.grep_linear.weight"] = r(8, c // heads)
        sd[f"{q}.self_attn.grep_linear.bias"] = r(8, std=0.05)
        sd[f"{q}.self_attn.grep_a"] = 1.0 + r(1, heads, 1, 1, std=0.1)
        sd[f"{q}.self_attn_layer_norm.weight"] = r.norm(c)
        sd[f"{q}.self_attn_layer_norm.bias"] = r(c, std=0.05)
        sd[f"{q}.fc1.weight"] = r(ffn, c)
        sd[f"{q}.fc1.bias"] = r(ffn, std=0.05)
        sd[f"{q}.fc2.weight"] = r(c, ffn)
        sd[f"{q}.fc2.bias"] = r(c, std=0.05)
        sd[f"{q}.final_layer_norm.weight"] = r.norm(c)
        sd[f"{q}.final_layer_norm.bias"] = r(c, std=0.05)
    return sd


def _aligner(r: _Rand, audio: str, s: ReleaseShapes) -> dict:
    """The audio connector: Whisper decoder + query tokens + projector (speech) or Q-Former + query tokens + projector
    (sound)."""
    if audio == "speech":
        wsd = _whisper_state(r)
        aligner = {
            f"model.mm_audio_aligner.decoder.audio_decoder.{k[8:]}": v
            for k, v in wsd.items()
            if k.startswith("decoder.")
        }
        aligner["model.mm_audio_aligner.projector.weight"] = r(s.hidden, 32)
        aligner["model.mm_audio_aligner.projector.bias"] = r(s.hidden, std=0.05)
        aligner["model.query_tokens"] = r(1, SPEECH_QUERIES, 32, std=1.0)
    else:
        qsd = _qformer_state(r, BEATS_CFG["encoder_embed_dim"])
        aligner = {f"model.mm_audio_aligner.qformer.qformer.{k}": v for k, v in qsd.items()}
        aligner["model.mm_audio_aligner.query_tokens"] = r(1, SOUND_QUERIES, QFORMER_CFG["hidden_size"], std=1.0)
        aligner["model.mm_audio_aligner.projector.weight"] = r(s.hidden, QFORMER_CFG["hidden_size"])
        aligner["model.mm_audio_aligner.projector.bias"] = r(s.hidden, std=0.05)
    return aligner


def _write_shards(folder: Path, sd: dict, n: int = 2):
    keys = list(sd)
    per = math.ceil(len(keys) / n)
    weight_map = {}
    for i in range(n):
        name = f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
        part = {k: sd[k] for k in keys[i * per : (i + 1) * per]}
        _save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )


def _peft(sd: dict, prefix: str = "base_model.model.") -> dict:
    return {prefix + k: v for k, v in sd.items()}


def _build_encoders(root: Path, dtype: torch.dtype, seed: int = 100) -> dict:
    """CLIP and Whisper folders in transformers' format and a BEATs checkpoint, shared by every variant."""
    r = _Rand(seed, dtype)
    clip = root / "clip-vit-large-patch14-336"
    if not clip.exists():
        clip_sd = _clip_state(r)
        clip_sd.update(
            {
                "vision_model.embeddings.position_ids": torch.arange(17)[None],
                "text_model.embeddings.token_embedding.weight": r(16, 8),
                "text_model.final_layer_norm.weight": r.norm(8),
                "visual_projection.weight": r(16, 32),
                "text_projection.weight": r(16, 8),
                "logit_scale": torch.tensor(2.6592),
            }
        )
        _save(clip_sd, clip / "pytorch_model.bin")
        (clip / "config.json").write_text(
            json.dumps(
                {
                    "architectures": ["CLIPModel"],
                    "model_type": "clip",
                    "projection_dim": 16,
                    "text_config": {"hidden_size": 8, "num_hidden_layers": 1},
                    "vision_config": CLIP_CFG,
                }
            )
        )
    whisper = root / "whisper-small"
    if not whisper.exists():
        wsd = _whisper_state(r)
        sd = {f"model.{k}": v for k, v in wsd.items()}
        sd["proj_out.weight"] = wsd["decoder.embed_tokens.weight"].clone()
        from safetensors.torch import save_file

        whisper.mkdir(parents=True)
        save_file(sd, str(whisper / "model.safetensors"))
        (whisper / "config.json").write_text(
            json.dumps({"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper", **WHISPER_CFG})
        )
    beats = root / "BEATs_iter3_plus_AS2M.pt"
    if not beats.exists():
        _save({"cfg": dict(BEATS_CFG), "model": _beats_state(r, BEATS_CFG)}, beats)
    return {"clip": clip, "whisper": whisper, "beats": beats}


def build_release(root: Path, variant: str, shapes: ReleaseShapes = ReleaseShapes(), seed: int = 0) -> dict:
    """Write the released folders of `variant` under `root`; return the paths as converter arguments.

    Folders already under `root` are kept (the variants share the encoders, and 8e shares speech-4e's base), so one
    `root` holds releases of one `shapes` only."""
    s = shapes
    base_name, e2_name, experts, moe, audio, router_lora = VARIANT_LAYOUT[variant]
    paths = _build_encoders(root, s.dtype)
    base = root / base_name
    if not base.exists():  # the 8e model shares Uni-MoE-speech-base with speech-4e
        r = _Rand(seed + 1, s.dtype)
        base_experts = 4 if variant == "8e" else experts
        sd = _llm(r, base_experts, moe, s)
        sd["model.mm_projector.0.weight"], sd["model.mm_projector.0.bias"] = r(s.hidden, 32), r(s.hidden, std=0.05)
        sd["model.mm_projector.2.weight"], sd["model.mm_projector.2.bias"] = (
            r(s.hidden, s.hidden),
            r(s.hidden, std=0.05),
        )
        sd["model.vision_tower.vision_tower.vision_model.post_layernorm.weight"] = r.norm(32)  # never used
        sd.update(_aligner(r, audio, s))
        if audio == "speech":
            sd["model.audio_tower.audio_tower.layer_norm.weight"] = r.norm(32)  # never used
            sd["model.audio_tower.encoder.layer_norm.weight"] = r.norm(32)  # stray WhisperModel-subclass params
            sd["model.audio_tower.decoder.layer_norm.weight"] = r.norm(32)
        _write_shards(base, sd)
        _save({k: v for k, v in sd.items() if "mm_projector" in k}, base / "mm_projector.bin")
        _save(
            {k: v for k, v in sd.items() if "mm_audio_aligner" in k or "query_tokens" in k},
            base / "mm_audio_aligner.bin",
        )
        cfg = _llava_config(variant, base_experts, s)
        (base / "config.json").write_text(json.dumps(cfg))
        if audio == "speech" and moe == "all":
            (base / "4config.json").write_text(json.dumps(_llava_config("speech-4e", 4, s)))
            (base / "8config.json").write_text(json.dumps(_llava_config("8e", 8, s)))
        _tokenizer_files(base)

    e2 = root / e2_name
    r = _Rand(seed + 2, s.dtype)
    cfg = _llava_config(variant, experts, s)
    e2.mkdir(parents=True, exist_ok=True)
    (e2 / "config.json").write_text(json.dumps(cfg))
    _tokenizer_files(e2)

    # PEFT 0.4 LoRA on every LLM linear (4e; router too in the audio / interval runs) or on attention only (8e)
    modules = []
    for layer in range(s.layers):
        p = f"model.layers.{layer}"
        modules += [f"{p}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        if variant == "8e":
            continue
        if layer in moe_layers(moe, s.layers):
            modules += [
                f"{p}.mlp.experts.{e}.{n}" for e in range(experts) for n in ("gate_proj", "up_proj", "down_proj")
            ]
            if router_lora:
                modules.append(f"{p}.mlp.gate")
        else:
            modules += [f"{p}.mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")]
    adapter = {}
    for m in modules:
        out_f, in_f = (experts, s.hidden) if m.endswith("mlp.gate") else _linear_shape(m, s)
        adapter[f"base_model.model.{m}.lora_A.weight"] = r(LORA_R, in_f)
        adapter[f"base_model.model.{m}.lora_B.weight"] = r(out_f, LORA_R, std=0.1)
    _save(adapter, e2 / "adapter_model.bin")
    (e2 / "adapter_config.json").write_text(
        json.dumps(
            {
                "base_model_name_or_path": str(base),
                "bias": "none",
                "fan_in_fan_out": False,
                "inference_mode": True,
                "init_lora_weights": True,
                "lora_alpha": LORA_ALPHA,
                "lora_dropout": 0.05,
                "modules_to_save": None,
                "peft_type": "LORA",
                "r": LORA_R,
                "revision": None,
                "target_modules": modules,
                "task_type": "CAUSAL_LM",
            }
        )
    )

    # non-LoRA trainables, saved from the PEFT-wrapped model: routers and the vision projector
    non_lora = {
        "model.model.mm_projector.0.weight": r(s.hidden, 32),
        "model.model.mm_projector.0.bias": r(s.hidden, std=0.05),
        "model.model.mm_projector.2.weight": r(s.hidden, s.hidden),
        "model.model.mm_projector.2.bias": r(s.hidden, std=0.05),
    }
    gate_key = "mlp.deepspeed_moe.gate.wg.weight" if variant == "8e" else "mlp.gate.weight"
    for layer in moe_layers(moe, s.layers):
        non_lora[f"model.model.layers.{layer}.{gate_key}"] = r(experts, s.hidden)
    _save(_peft(non_lora, "base_model."), e2 / "non_lora_trainables.bin")

    # audio connector (whole aligner, fine-tuned) and routers (last)
    _save(_aligner(r, audio, s), e2 / "mm_audio_aligner.bin")
    gates = {}
    for layer in moe_layers(moe, s.layers):
        gates[f"model.layers.{layer}.{gate_key}"] = r(experts, s.hidden)
        if router_lora:  # saved next to the router because its name contains "mlp.gate."
            gates[f"model.layers.{layer}.mlp.gate.lora_A.default.weight"] = r(LORA_R, s.hidden)
            gates[f"model.layers.{layer}.mlp.gate.lora_B.default.weight"] = r(experts, LORA_R)
    _save(gates, e2 / "mlp_gates.bin")

    paths.update(variant=variant, base=base, finetuned=e2)
    if variant == "8e":
        paths["experts"] = _build_8e_experts(root, e2, r, s)
    return paths


def _build_8e_experts(root: Path, e2: Path, r: _Rand, s: ReleaseShapes) -> Path:
    """Stage-2 FFN files and `{g}_mlp_experts.bin` as two expert-parallel ranks (4 local experts each) saved them."""
    experts = root / "Uni-MoE-8e-Experts"
    for name in sorted(set(EXPERT_FILES)):
        sd = {}
        for layer in range(s.layers):
            sd.update(_mlp(r, f"model.layers.{layer}.mlp", s))
        _save(sd, experts / f"{name}.bin")
    local_experts = 8 // 2
    for g in range(8):
        j = g % local_experts  # rank-local slot of global expert g on its rank
        sd = {}
        for layer in range(s.layers):
            p = f"model.layers.{layer}.mlp.deepspeed_moe.experts.deepspeed_experts.{j}"
            for name, (out_f, in_f) in (
                ("gate_proj", (s.intermediate, s.hidden)),
                ("up_proj", (s.intermediate, s.hidden)),
                ("down_proj", (s.hidden, s.intermediate)),
            ):
                sd[f"{p}.{name}.weight"] = r(out_f, in_f)  # stale copy: the stage-2 FFN overrides it
                sd[f"{p}.{name}_lora_A.weight"] = r(EXPERT_LORA_R, in_f)
                sd[f"{p}.{name}_lora_B.weight"] = r(out_f, EXPERT_LORA_R, std=0.1)
        _save(sd, e2 / f"{g}_mlp_experts.bin")
    return experts
