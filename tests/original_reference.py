"""Test helpers for the converter: small fake releases in the exact released layouts, and an independent reference
of the original Uni-MoE forward pass.

`build_release` writes random tiny checkpoints with the released file names and key names: pickled `.bin` shards with
an index, PEFT 0.4 adapter files (`base_model.model.` keys without adapter name), `non_lora_trainables.bin` in the
PEFT-wrapped namespace, `mm_audio_aligner.bin`, `mlp_gates.bin` (with the router LoRA factors of the interval/audio
runs), the 8e expert files (`{g}_mlp_experts.bin` with rank-local DeepSpeed expert numbering as saved by two
expert-parallel ranks, plus the stage-2 FFN files `mlp_*.bin`), CLIP and Whisper folders in transformers' format and a
BEATs `.pt` with `cfg` and `model`.

`OriginalReference` computes the original model's logits from those files written only from the reference document
(shared/docs/uni-moe-reference.md) and the original loader's order: state dicts updated in load order, LoRA applied
unmerged at run time (y = W x + alpha / r * B A x), a LoRA whose weight is overwritten after the merge discarded,
media spliced in at negative placeholder ids, and per-token top-2 routing in a plain loop. It shares no code with
the converter or the model; CLIP, Whisper and the Q-Former are transformers' own classes, as in the original.
"""

import json
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F


IMAGE_INDEX, AUDIO_INDEX, VIDEO_INDEX = -200, -300, -400
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

# tiny dimensions (the key names and file layout are the released ones)
VOCAB, HIDDEN, INTER, LAYERS, HEADS = 320, 32, 64, 4, 4
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
FBANK_MEAN, FBANK_STD = 15.41663, 6.55582
DTYPE = torch.float32  # dtype of the generated checkpoint tensors (the benchmark uses float16, as released)

VARIANT_LAYOUT = {
    # variant: (base folder, fine-tuned folder, experts, MoE layers, audio path, router LoRA quirk)
    "speech-4e": ("Uni-MoE-speech-base", "Uni-MoE-speech-e2", 4, "all", "speech", False),
    "audio-4e": ("Uni-MoE-audio-base", "Uni-MoE-audio-e2", 4, "even", "sound", True),
    "speech-v1.5": ("Uni-MoE-speech-base-interval", "Uni-MoE-speech-v1.5", 4, "even", "speech", True),
    "8e": ("Uni-MoE-speech-base", "Uni-MoE-8e-e2", 8, "all", "speech", False),
}


# -- fake releases ----------------------------------------------------------------------------------------------------
class _Rand:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, *shape, std=0.2):
        return (torch.randn(*shape, generator=self.g) * std).to(DTYPE)

    def norm(self, n):
        return (1.0 + 0.1 * torch.randn(n, generator=self.g)).to(DTYPE)


def _save(obj, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)


def _llava_config(variant: str, experts: int) -> dict:
    cfg = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
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


def _mlp(r: _Rand, prefix: str) -> dict:
    return {
        f"{prefix}.gate_proj.weight": r(INTER, HIDDEN),
        f"{prefix}.up_proj.weight": r(INTER, HIDDEN),
        f"{prefix}.down_proj.weight": r(HIDDEN, INTER),
    }


def _moe_layers(moe: str) -> list[int]:
    return list(range(LAYERS)) if moe == "all" else list(range(0, LAYERS, 2))


def _llm(r: _Rand, experts: int, moe: str) -> dict:
    sd = {"model.embed_tokens.weight": r(VOCAB, HIDDEN, std=1.0), "model.norm.weight": r.norm(HIDDEN)}
    sd["lm_head.weight"] = r(VOCAB, HIDDEN)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, HIDDEN // HEADS, 2).float() / (HIDDEN // HEADS)))
    for layer in range(LAYERS):
        p = f"model.layers.{layer}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[f"{p}.self_attn.{name}.weight"] = r(HIDDEN, HIDDEN)
        sd[f"{p}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()  # transformers 4.31 saved this buffer
        sd[f"{p}.input_layernorm.weight"] = r.norm(HIDDEN)
        sd[f"{p}.post_attention_layernorm.weight"] = r.norm(HIDDEN)
        if layer in _moe_layers(moe):
            sd[f"{p}.mlp.gate.weight"] = r(experts, HIDDEN)
            for e in range(experts):
                sd.update(_mlp(r, f"{p}.mlp.experts.{e}"))
        else:
            sd.update(_mlp(r, f"{p}.mlp"))
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


def beats_state(r: _Rand, cfg: dict) -> dict:
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


def build_encoders(root: Path, seed: int = 100) -> dict:
    """CLIP and Whisper folders in transformers' format and a BEATs checkpoint, shared by every variant."""
    r = _Rand(seed)
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
        _save({"cfg": dict(BEATS_CFG), "model": beats_state(r, BEATS_CFG)}, beats)
    return {"clip": clip, "whisper": whisper, "beats": beats}


def build_release(root: Path, variant: str, seed: int = 0) -> dict:
    """Write the released folders of `variant` under `root`; return the paths as converter arguments."""
    base_name, e2_name, experts, moe, audio, router_lora = VARIANT_LAYOUT[variant]
    paths = build_encoders(root)
    base = root / base_name
    if not base.exists():  # the 8e model shares Uni-MoE-speech-base with speech-4e
        r = _Rand(seed + 1)
        base_experts = 4 if variant == "8e" else experts
        sd = _llm(r, base_experts, moe)
        sd["model.mm_projector.0.weight"], sd["model.mm_projector.0.bias"] = r(HIDDEN, 32), r(HIDDEN, std=0.05)
        sd["model.mm_projector.2.weight"], sd["model.mm_projector.2.bias"] = r(HIDDEN, HIDDEN), r(HIDDEN, std=0.05)
        sd["model.vision_tower.vision_tower.vision_model.post_layernorm.weight"] = r.norm(32)  # never used
        if audio == "speech":
            wsd = _whisper_state(r)
            sd.update(
                {
                    f"model.mm_audio_aligner.decoder.audio_decoder.{k[8:]}": v
                    for k, v in wsd.items()
                    if k.startswith("decoder.")
                }
            )
            sd["model.mm_audio_aligner.projector.weight"] = r(HIDDEN, 32)
            sd["model.mm_audio_aligner.projector.bias"] = r(HIDDEN, std=0.05)
            sd["model.query_tokens"] = r(1, SPEECH_QUERIES, 32, std=1.0)
            sd["model.audio_tower.audio_tower.layer_norm.weight"] = r.norm(32)  # never used
            sd["model.audio_tower.encoder.layer_norm.weight"] = r.norm(32)  # stray WhisperModel-subclass params
            sd["model.audio_tower.decoder.layer_norm.weight"] = r.norm(32)
        else:
            qsd = _qformer_state(r, BEATS_CFG["encoder_embed_dim"])
            sd.update({f"model.mm_audio_aligner.qformer.qformer.{k}": v for k, v in qsd.items()})
            sd["model.mm_audio_aligner.query_tokens"] = r(1, SOUND_QUERIES, QFORMER_CFG["hidden_size"], std=1.0)
            sd["model.mm_audio_aligner.projector.weight"] = r(HIDDEN, QFORMER_CFG["hidden_size"])
            sd["model.mm_audio_aligner.projector.bias"] = r(HIDDEN, std=0.05)
        _write_shards(base, sd)
        _save({k: v for k, v in sd.items() if "mm_projector" in k}, base / "mm_projector.bin")
        _save(
            {k: v for k, v in sd.items() if "mm_audio_aligner" in k or "query_tokens" in k},
            base / "mm_audio_aligner.bin",
        )
        cfg = _llava_config(variant, base_experts)
        (base / "config.json").write_text(json.dumps(cfg))
        if audio == "speech" and moe == "all":
            (base / "4config.json").write_text(json.dumps(_llava_config("speech-4e", 4)))
            (base / "8config.json").write_text(json.dumps(_llava_config("8e", 8)))
        _tokenizer_files(base)

    e2 = root / e2_name
    r = _Rand(seed + 2)
    base_sd = _load_shards(base)
    cfg = _llava_config(variant, experts)
    e2.mkdir(parents=True, exist_ok=True)
    (e2 / "config.json").write_text(json.dumps(cfg))
    _tokenizer_files(e2)

    # PEFT 0.4 LoRA on every LLM linear (4e; router too in the audio / interval runs) or on attention only (8e)
    modules = []
    for layer in range(LAYERS):
        p = f"model.layers.{layer}"
        modules += [f"{p}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        if variant == "8e":
            continue
        if layer in _moe_layers(moe):
            modules += [
                f"{p}.mlp.experts.{e}.{n}" for e in range(experts) for n in ("gate_proj", "up_proj", "down_proj")
            ]
            if router_lora:
                modules.append(f"{p}.mlp.gate")
        else:
            modules += [f"{p}.mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")]
    adapter = {}
    for m in modules:
        out_f, in_f = (experts, HIDDEN) if m.endswith("mlp.gate") else base_sd[m + ".weight"].shape
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
        "model.model.mm_projector.0.weight": r(HIDDEN, 32),
        "model.model.mm_projector.0.bias": r(HIDDEN, std=0.05),
        "model.model.mm_projector.2.weight": r(HIDDEN, HIDDEN),
        "model.model.mm_projector.2.bias": r(HIDDEN, std=0.05),
    }
    gate_key = "mlp.deepspeed_moe.gate.wg.weight" if variant == "8e" else "mlp.gate.weight"
    for layer in _moe_layers(moe):
        non_lora[f"model.model.layers.{layer}.{gate_key}"] = r(experts, HIDDEN)
    _save(_peft(non_lora, "base_model."), e2 / "non_lora_trainables.bin")

    # audio connector (whole aligner, fine-tuned) and routers (last)
    if audio == "speech":
        wsd = _whisper_state(r)
        aligner = {
            f"model.mm_audio_aligner.decoder.audio_decoder.{k[8:]}": v
            for k, v in wsd.items()
            if k.startswith("decoder.")
        }
        aligner["model.mm_audio_aligner.projector.weight"] = r(HIDDEN, 32)
        aligner["model.mm_audio_aligner.projector.bias"] = r(HIDDEN, std=0.05)
        aligner["model.query_tokens"] = r(1, SPEECH_QUERIES, 32, std=1.0)
    else:
        qsd = _qformer_state(r, BEATS_CFG["encoder_embed_dim"])
        aligner = {f"model.mm_audio_aligner.qformer.qformer.{k}": v for k, v in qsd.items()}
        aligner["model.mm_audio_aligner.query_tokens"] = r(1, SOUND_QUERIES, QFORMER_CFG["hidden_size"], std=1.0)
        aligner["model.mm_audio_aligner.projector.weight"] = r(HIDDEN, QFORMER_CFG["hidden_size"])
        aligner["model.mm_audio_aligner.projector.bias"] = r(HIDDEN, std=0.05)
    _save(aligner, e2 / "mm_audio_aligner.bin")
    gates = {}
    for layer in _moe_layers(moe):
        gates[f"model.layers.{layer}.{gate_key}"] = r(experts, HIDDEN)
        if router_lora:  # saved next to the router because its name contains "mlp.gate."
            gates[f"model.layers.{layer}.mlp.gate.lora_A.default.weight"] = r(LORA_R, HIDDEN)
            gates[f"model.layers.{layer}.mlp.gate.lora_B.default.weight"] = r(experts, LORA_R)
    _save(gates, e2 / "mlp_gates.bin")

    paths.update(variant=variant, base=base, finetuned=e2)
    if variant == "8e":
        paths["experts"] = build_8e_experts(root, e2, r)
    return paths


def build_8e_experts(root: Path, e2: Path, r: _Rand) -> Path:
    """Stage-2 FFN files and `{g}_mlp_experts.bin` as two expert-parallel ranks (4 local experts each) saved them."""
    experts = root / "Uni-MoE-8e-Experts"
    for name in sorted(set(EXPERT_FILES)):
        sd = {}
        for layer in range(LAYERS):
            sd.update(_mlp(r, f"model.layers.{layer}.mlp"))
        _save(sd, experts / f"{name}.bin")
    local_experts = 8 // 2
    for g in range(8):
        j = g % local_experts  # rank-local slot of global expert g on its rank
        sd = {}
        for layer in range(LAYERS):
            p = f"model.layers.{layer}.mlp.deepspeed_moe.experts.deepspeed_experts.{j}"
            for name, (out_f, in_f) in (
                ("gate_proj", (INTER, HIDDEN)),
                ("up_proj", (INTER, HIDDEN)),
                ("down_proj", (HIDDEN, INTER)),
            ):
                sd[f"{p}.{name}.weight"] = r(out_f, in_f)  # stale copy: the stage-2 FFN overrides it
                sd[f"{p}.{name}_lora_A.weight"] = r(EXPERT_LORA_R, in_f)
                sd[f"{p}.{name}_lora_B.weight"] = r(out_f, EXPERT_LORA_R, std=0.1)
        _save(sd, e2 / f"{g}_mlp_experts.bin")
    return experts


def _load_shards(folder: Path) -> dict:
    sd = {}
    for path in sorted(folder.glob("pytorch_model-*.bin")):
        sd.update(torch.load(path, map_location="cpu", weights_only=True))
    return sd


# -- the reference forward --------------------------------------------------------------------------------------------
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
        self.moe_layers = set(_moe_layers(moe))
        load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
        e2 = Path(paths["finetuned"])
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
            for layer in range(LAYERS):  # DeepSpeed-MoE router name
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
        x, n, d = embeds, embeds.shape[0], HIDDEN // HEADS
        pos = torch.arange(n).float()
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
        ang = torch.cat([pos[:, None] * inv[None]] * 2, dim=-1)  # [n, d]
        cos, sin = ang.cos(), ang.sin()

        def rope(t):  # t [heads, n, d]
            half = torch.cat([-t[..., d // 2 :], t[..., : d // 2]], dim=-1)
            return t * cos + half * sin

        mask = torch.full((n, n), float("-inf")).triu(1)
        for layer in range(LAYERS):
            p = f"model.layers.{layer}"
            h = self.rms(x, f"{p}.input_layernorm.weight")
            q, k, v = (
                self.linear(h, f"{p}.self_attn.{m}").view(n, HEADS, d).transpose(0, 1)
                for m in ("q_proj", "k_proj", "v_proj")
            )
            scores = rope(q) @ rope(k).transpose(1, 2) / math.sqrt(d) + mask
            attn = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(n, HIDDEN)
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
    audio_key = "audio_token_id" if config.get("audio_token_id") is not None else "sound_token_id"
    for token in prompt["ids"]:
        if token == IMAGE_INDEX:
            ids += [config["image_token_id"]] * patches
        elif token == VIDEO_INDEX:
            ids += [config["video_token_id"]] * patches
        elif token == AUDIO_INDEX:
            chunks = prompt["audios"][0].shape[0]
            queries = (
                config["num_speech_query_tokens"]
                if audio_key == "audio_token_id"
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
        inputs["input_features" if audio_key == "audio_token_id" else "sound_features"] = prompt["audios"][0]
    inputs["input_ids"] = torch.tensor([ids])
    return inputs
