"""The BEATs sound tower (`UniMoEBEATsModel` in modeling_beats.py) against an independent reference.

The reference below is written independently, straight from the facts of the original BEATs (microsoft/unilm
beats/BEATs.py + beats/backbone.py): explicit patch extraction, Python-int relative buckets, a tap-by-tap weight-normed
grouped conv, naive softmax attention without the alpha trick, and per-frame mask loops.
"""

import math
import re

import pytest
import torch

from modeling_unimoe.configuration_beats import UniMoEBEATsConfig
from modeling_unimoe.modeling_beats import UniMoEBEATsModel, beats_relative_position_bucket, beats_token_padding_mask


# the original lists layer 0's shared relative position embedding under every layer; we keep only layer 0's
BEATS_DUPLICATE_KEYS_PATTERN = r"encoder\.layers\.[1-9][0-9]*\.self_attn\.relative_attention_bias\.weight"

TINY = dict(
    embed_dim=32,
    encoder_embed_dim=32,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_embed_dim=64,
    conv_pos=16,
    conv_pos_groups=4,
    num_buckets=32,
    max_distance=64,
)
VARIANTS = {
    "released": {},  # post-LN + DeepNorm + gated relative bias, as the iter3+ checkpoint
    "proj": dict(embed_dim=24),  # embed_dim != encoder_embed_dim -> post_extract_proj exists
    "pre_ln": dict(layer_norm_first=True, deep_norm=False, gru_rel_pos=False, relative_position_embedding=False),
    "no_gate": dict(gru_rel_pos=False),
}


def tiny_config(**overrides):
    return UniMoEBEATsConfig(**{**TINY, **overrides})


def make_model(config, seed=0):
    torch.manual_seed(seed)
    model = UniMoEBEATsModel(config).eval()
    with torch.no_grad():  # perturb every parameter so LayerNorm affines, biases, grep_a, weight_g all matter
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def make_fbank(batch, frames, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 128, generator=generator) * 6.0 + 15.0  # roughly kaldi fbank statistics


# --- independent reference --------------------------------------------------------------------------------------------
def python_bucket(rel, num_buckets, max_distance):
    half = num_buckets // 2
    offset = half if rel > 0 else 0
    distance = abs(rel)
    max_exact = half // 2
    if distance < max_exact:
        return offset + distance
    large = max_exact + int(math.log(distance / max_exact) / math.log(max_distance / max_exact) * (half - max_exact))
    return offset + min(large, half - 1)


def ref_layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def ref_gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def ref_token_mask(frame_mask, num_tokens):
    frames_per_token = frame_mask.shape[1] // num_tokens
    out = torch.zeros(frame_mask.shape[0], num_tokens, dtype=torch.bool)
    for b in range(frame_mask.shape[0]):
        for j in range(num_tokens):
            out[b, j] = bool(frame_mask[b, j * frames_per_token : (j + 1) * frames_per_token].all())
    return out


def ref_pos_conv(x, sd, cfg):  # x [B, T, C]
    v, g, bias = sd["encoder.pos_conv.0.weight_v"], sd["encoder.pos_conv.0.weight_g"], sd["encoder.pos_conv.0.bias"]
    kernel, groups = cfg.conv_pos, cfg.conv_pos_groups
    weight = torch.stack([v[:, :, k] * g[0, 0, k] / v[:, :, k].pow(2).sum().sqrt() for k in range(kernel)], dim=-1)
    batch, length, channels = x.shape
    per_group = channels // groups
    padded = torch.cat([x.new_zeros(batch, kernel // 2, channels), x, x.new_zeros(batch, kernel // 2, channels)], 1)
    out = bias.expand(batch, length, channels).clone()
    for k in range(kernel):  # output t sees padded[t + k]; keeping only the first T outputs is the SamePad trim
        window = padded[:, k : k + length]
        for grp in range(groups):
            cols = slice(grp * per_group, (grp + 1) * per_group)
            out[:, :, cols] += window[:, :, cols] @ weight[cols, :, k].T
    return ref_gelu(out)


def ref_ffn(x, sd, p):
    hidden = ref_gelu(x @ sd[p + "fc1.weight"].T + sd[p + "fc1.bias"])
    return hidden @ sd[p + "fc2.weight"].T + sd[p + "fc2.bias"]


def ref_attention(x, sd, p, cfg, mask, bias_table):
    heads = cfg.encoder_attention_heads
    head_dim = cfg.encoder_embed_dim // heads
    batch, length, _ = x.shape
    q = x @ sd[p + "q_proj.weight"].T + sd[p + "q_proj.bias"]
    k = x @ sd[p + "k_proj.weight"].T + sd[p + "k_proj.bias"]
    v = x @ sd[p + "v_proj.weight"].T + sd[p + "v_proj.bias"]
    out = torch.zeros_like(x)
    for h in range(heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        qh, kh, vh = q[:, :, cols], k[:, :, cols], v[:, :, cols]
        scores = qh @ kh.transpose(1, 2) / math.sqrt(head_dim)  # [B, Tq, Tk]
        if bias_table is not None:
            rel = bias_table[h].expand(batch, length, length)
            if cfg.gru_rel_pos:
                gates = qh @ sd[p + "grep_linear.weight"].T + sd[p + "grep_linear.bias"]  # [B, T, 8]
                gate_a = torch.sigmoid(gates[..., :4].sum(-1, keepdim=True))
                gate_b = torch.sigmoid(gates[..., 4:].sum(-1, keepdim=True))
                rel = (gate_a * (gate_b * sd[p + "grep_a"][0, h, 0, 0] - 1.0) + 2.0) * rel
            scores = scores + rel
        if mask is not None:
            scores = scores.masked_fill(mask[:, None, :], float("-inf"))
        weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
        weights = weights / weights.sum(-1, keepdim=True)
        out[:, :, cols] = weights @ vh
    return out @ sd[p + "out_proj.weight"].T + sd[p + "out_proj.bias"]


def original_names(state_dict: dict) -> dict:
    """Our state dict under the original BEATs key names: torch's weight-norm parametrization of the positional conv
    is `weight_g` / `weight_v` there (every transformers release renames them at load)."""
    renames = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    out = {}
    for key, value in state_dict.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        out[key] = value
    return out


def reference_forward(model, fbank, frame_mask):
    cfg, sd = model.config, original_names({k: v.detach() for k, v in model.state_dict().items()})
    patch = cfg.input_patch_size
    x = (fbank - cfg.fbank_mean) / (2 * cfg.fbank_std)
    batch, frames, mel = x.shape
    t_patches, m_patches = frames // patch, mel // patch
    patches = x[:, : t_patches * patch, : m_patches * patch].reshape(batch, t_patches, patch, m_patches, patch)
    patches = patches.permute(0, 1, 3, 2, 4).reshape(batch, t_patches * m_patches, patch * patch)  # time-major
    x = patches @ sd["patch_embedding.weight"].reshape(cfg.embed_dim, -1).T
    x = ref_layer_norm(x, sd["layer_norm.weight"], sd["layer_norm.bias"])
    length = x.shape[1]
    mask = None if frame_mask is None else ref_token_mask(frame_mask, length)
    if "post_extract_proj.weight" in sd:
        x = x @ sd["post_extract_proj.weight"].T + sd["post_extract_proj.bias"]
    if mask is not None:
        x = torch.where(mask[..., None], torch.zeros_like(x), x)
    x = x + ref_pos_conv(x, sd, cfg)

    bias_table = None
    if cfg.relative_position_embedding:
        table = sd["encoder.layers.0.self_attn.relative_attention_bias.weight"]
        buckets = [
            [python_bucket(j - i, cfg.num_buckets, cfg.max_distance) for j in range(length)] for i in range(length)
        ]
        bias_table = table[torch.tensor(buckets)].permute(2, 0, 1)  # [heads, query, key]

    def ln(y, name):
        return ref_layer_norm(y, sd[name + ".weight"], sd[name + ".bias"])

    alpha = (2 * cfg.encoder_layers) ** 0.25 if cfg.deep_norm else 1.0
    if not cfg.layer_norm_first:
        x = ln(x, "encoder.layer_norm")
    for i in range(cfg.encoder_layers):
        p = f"encoder.layers.{i}."

        if cfg.layer_norm_first:
            x = x + ref_attention(ln(x, p + "self_attn_layer_norm"), sd, p + "self_attn.", cfg, mask, bias_table)
            x = x + ref_ffn(ln(x, p + "final_layer_norm"), sd, p)
        else:
            x = ln(
                alpha * x + ref_attention(x, sd, p + "self_attn.", cfg, mask, bias_table), p + "self_attn_layer_norm"
            )
            x = ln(alpha * x + ref_ffn(x, sd, p), p + "final_layer_norm")
    if cfg.layer_norm_first:
        x = ln(x, "encoder.layer_norm")
    return x, mask


def original_state_dict_keys(cfg):
    """The original BEATs (finetuned_model=False) state-dict keys, written down from the facts, including the
    relative_attention_bias entries that every layer carries for the module shared from layer 0."""
    keys = ["patch_embedding.weight", "layer_norm.weight", "layer_norm.bias"]
    if cfg.conv_bias:
        keys.append("patch_embedding.bias")
    if cfg.embed_dim != cfg.encoder_embed_dim:
        keys += ["post_extract_proj.weight", "post_extract_proj.bias"]
    keys += ["encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v", "encoder.pos_conv.0.bias"]
    keys += ["encoder.layer_norm.weight", "encoder.layer_norm.bias"]
    for i in range(cfg.encoder_layers):
        p = f"encoder.layers.{i}."
        for name in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "fc1",
            "fc2",
            "self_attn_layer_norm",
            "final_layer_norm",
        ):
            keys += [p + name + ".weight", p + name + ".bias"]
        if cfg.relative_position_embedding:
            keys.append(p + "self_attn.relative_attention_bias.weight")
        if cfg.gru_rel_pos:
            keys += [p + "self_attn.grep_linear.weight", p + "self_attn.grep_linear.bias", p + "self_attn.grep_a"]
    return keys


# --- tests -----------------------------------------------------------------------------------------------------------
def test_shapes():
    model = make_model(tiny_config())
    hidden, token_mask = model(make_fbank(2, 200))
    assert hidden.shape == (2, (200 // 16) * (128 // 16), 32)
    assert token_mask is None
    hidden, token_mask = model(make_fbank(2, 200), torch.zeros(2, 200, dtype=torch.bool))
    assert token_mask.shape == (2, 96) and token_mask.dtype == torch.bool and not token_mask.any()
    assert torch.isfinite(hidden).all()


@pytest.mark.parametrize("cfg", [TINY, dict(num_buckets=320, max_distance=800)], ids=["tiny", "released"])
def test_relative_bucket_matches_python_ints(cfg):
    rel = torch.arange(-2000, 2001)
    got = beats_relative_position_bucket(rel, cfg["num_buckets"], cfg["max_distance"]).tolist()
    assert got == [python_bucket(r, cfg["num_buckets"], cfg["max_distance"]) for r in rel.tolist()]


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_matches_independent_reference(variant):
    model = make_model(tiny_config(**VARIANTS[variant]))
    fbank = make_fbank(2, 200)
    frame_mask = torch.zeros(2, 200, dtype=torch.bool)
    frame_mask[1, 150:] = True  # starts inside a 16-frame patch: exercises the partial token mask
    with torch.no_grad():
        for mask in (None, frame_mask):
            hidden, token_mask = model(fbank, mask)
            ref_hidden, ref_mask = reference_forward(model, fbank, mask)
            torch.testing.assert_close(hidden, ref_hidden, atol=1e-5, rtol=1e-5)
            if mask is None:
                assert token_mask is None
            else:
                assert torch.equal(token_mask, ref_mask) and token_mask[1].any() and not token_mask[0].any()


def test_padding_isolation():
    model = make_model(tiny_config())
    fbank = make_fbank(2, 200)
    frame_mask = torch.zeros(2, 200, dtype=torch.bool)
    frame_mask[1, 160:] = True  # 10 whole time patches valid -> tokens 0..79 valid
    with torch.no_grad():
        hidden, token_mask = model(fbank, frame_mask)
        valid = ~token_mask[1]
        assert valid.sum() == 80 and valid[:80].all()

        noisy = fbank.clone()
        noisy[1, 160:] = torch.randn(40, 128) * 50.0  # junk in the padded frames
        hidden_noisy, _ = model(noisy, frame_mask)
        torch.testing.assert_close(hidden_noisy[0], hidden[0], atol=0, rtol=0)  # other item untouched
        torch.testing.assert_close(hidden_noisy[1][valid], hidden[1][valid], atol=1e-5, rtol=1e-5)

        alone0, _ = model(fbank[:1], frame_mask[:1])
        alone1, alone1_mask = model(fbank[1:], frame_mask[1:])
        torch.testing.assert_close(hidden[0], alone0[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hidden[1][valid], alone1[0][valid], atol=1e-5, rtol=1e-5)
        assert torch.equal(alone1_mask[0], token_mask[1])

        # padded tokens are zeroed before the positional conv and masked as keys: same as the truncated input
        truncated, _ = model(fbank[1:, :160])
        torch.testing.assert_close(hidden[1][valid], truncated[0], atol=1e-5, rtol=1e-5)


def test_small_patches_mask_by_time_patch():
    """Patches of 8 on 128 mel bins make more tokens than frames: the original's mask rule would mask every token
    (and attention would give NaN); each token is judged by its own time patch's frames instead."""
    model = make_model(tiny_config(input_patch_size=8))
    fbank = make_fbank(2, 200)
    frame_mask = torch.zeros(2, 200, dtype=torch.bool)
    frame_mask[1, 84:] = True  # starts inside time patch 10 (frames 80-87), which keeps its tokens
    with torch.no_grad():
        hidden, token_mask = model(fbank, frame_mask)
        assert hidden.shape == (2, 25 * 16, 32) and torch.isfinite(hidden).all()
        assert not token_mask[0].any()
        assert token_mask[1].tolist() == [False] * 11 * 16 + [True] * 14 * 16
        truncated, _ = model(fbank[1:, :88])  # 11 whole time patches: the unpadded tokens see the same input
        torch.testing.assert_close(hidden[1][~token_mask[1]], truncated[0], atol=1e-5, rtol=1e-5)


def test_token_mask_keeps_the_original_rule_where_defined():
    frame_mask = torch.zeros(1, 200, dtype=torch.bool)
    frame_mask[0, 150:] = True
    assert torch.equal(beats_token_padding_mask(frame_mask, 16, 12, 8), ref_token_mask(frame_mask, 96))


def test_state_dict_keys_match_original():
    for overrides in VARIANTS.values():
        config = tiny_config(**overrides)
        ours = list(original_names(UniMoEBEATsModel(config).state_dict()))
        original = original_state_dict_keys(config)
        duplicates = [k for k in original if re.fullmatch(BEATS_DUPLICATE_KEYS_PATTERN, k)]
        assert sorted(ours) == sorted(set(original) - set(duplicates))
        if config.relative_position_embedding:
            assert duplicates == [f"encoder.layers.{i}.self_attn.relative_attention_bias.weight" for i in range(1, 2)]

    # an original-style state dict (with the duplicates) loads strictly once they are dropped
    model = UniMoEBEATsModel(tiny_config())
    state = dict(model.state_dict())
    state["encoder.layers.1.self_attn.relative_attention_bias.weight"] = state[
        "encoder.layers.0.self_attn.relative_attention_bias.weight"
    ]
    model.load_state_dict({k: v for k, v in state.items() if not re.fullmatch(BEATS_DUPLICATE_KEYS_PATTERN, k)})


def test_released_config_shapes():
    config = UniMoEBEATsConfig()
    shapes = {k: tuple(v.shape) for k, v in original_names(UniMoEBEATsModel(config).state_dict()).items()}
    assert sorted(shapes) == sorted(
        k for k in original_state_dict_keys(config) if not re.fullmatch(BEATS_DUPLICATE_KEYS_PATTERN, k)
    )
    assert shapes["patch_embedding.weight"] == (512, 1, 16, 16)
    assert shapes["post_extract_proj.weight"] == (768, 512)
    assert shapes["encoder.pos_conv.0.weight_v"] == (768, 48, 128)
    assert shapes["encoder.pos_conv.0.weight_g"] == (1, 1, 128)
    assert shapes["encoder.layers.0.self_attn.relative_attention_bias.weight"] == (320, 12)
    assert shapes["encoder.layers.11.self_attn.grep_linear.weight"] == (8, 64)
    assert shapes["encoder.layers.11.self_attn.grep_a"] == (1, 12, 1, 1)
    assert shapes["encoder.layers.11.fc1.weight"] == (3072, 768)
