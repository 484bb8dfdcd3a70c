"""UniMoEConfig: presets, validation, serialisation, and the released models' parameter counts."""

import re

import pytest
import torch

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM, UniMoETextConfig


def test_text_config_is_the_text_sub_config(tiny_config):
    assert tiny_config.get_text_config() is tiny_config.text_config
    assert tiny_config.model_type == "unimoe" and tiny_config.text_config.model_type == "unimoe_text"


@pytest.mark.parametrize(
    "pattern, layers, expected",
    [("all", 4, [0, 1, 2, 3]), ("even", 5, [0, 2, 4]), ([3, 1], 4, [1, 3])],
)
def test_moe_layer_patterns(pattern, layers, expected):
    assert UniMoETextConfig(moe_layers=pattern, num_hidden_layers=layers).moe_layer_indices == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(num_experts=2, num_experts_per_tok=3),
            "`num_experts_per_tok` (top-k) must be between 1 and `num_experts` (2), got 3.",
        ),
        (dict(moe_layers="odd"), "`moe_layers` must be one of ['all', 'even'], got 'odd'."),
        (dict(moe_layers=[0, 40], num_hidden_layers=4), "`moe_layers` lists layer indices [40]"),
        (dict(capacity_factor=0.0), "`capacity_factor` must be a positive number, or None for dropless routing"),
        (dict(num_experts=0), "`num_experts` must be at least 1, got 0."),
    ],
)
def test_invalid_text_config(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        UniMoETextConfig(**kwargs)


def test_invalid_top_level_values():
    with pytest.raises(ValueError, match=re.escape("Unknown preset 'uni-moe-9e'. Available presets: [")):
        UniMoEConfig.from_preset("uni-moe-9e")
    with pytest.raises(ValueError, match=re.escape("`image_token_id` is required when its tower is configured")):
        UniMoEConfig.from_preset("tiny", image_token_id=None)
    with pytest.raises(ValueError, match=re.escape("`speech_token_id` must be a token id in [0, 512)")):
        UniMoEConfig.from_preset("tiny", speech_token_id=512)
    distinct = "Placeholder token ids must be distinct, got {'image': 3, 'video': 3, 'speech': 4, 'sound': 6}."
    with pytest.raises(ValueError, match=re.escape(distinct)):
        UniMoEConfig.from_preset("tiny", video_token_id=3)


def test_placeholder_token_ids_name_each_configured_modality(tiny_config):
    assert tiny_config.placeholder_token_ids == {"image": 3, "video": 5, "speech": 4, "sound": 6}
    audio = UniMoEConfig.from_preset("uni-moe-audio-4e")
    assert audio.placeholder_token_ids == {"image": 32000, "video": 32002, "sound": 32001}
    assert UniMoEConfig().placeholder_token_ids == {}


def test_config_json_with_unused_connector_keys_loads_without_them(tmp_path, tiny_config):
    """config.json files that name the connector types (`vision_connector`, ...) load; the keys are not kept."""
    import json

    tiny_config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "vision_connector" not in saved
    saved.update(vision_connector="mlp2x_gelu", speech_connector="whisper_decoder", sound_connector="qformer")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = UniMoEConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == tiny_config.to_dict()
    assert not hasattr(loaded, "vision_connector")


def test_config_json_with_the_earlier_audio_names_loads_under_speech_and_sound(tmp_path, tiny_config):
    """Folders saved with `audio_token_id`, `audio_config` and `audio_qformer_config` load with those values as
    `speech_token_id`, `sound_config` and `sound_qformer_config`; the earlier names still read and set them."""
    import json

    tiny_config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for old, new in (("audio_token_id", "speech_token_id"), ("audio_config", "sound_config"),
                     ("audio_qformer_config", "sound_qformer_config")):  # fmt: skip
        assert old not in saved
        saved[old] = saved.pop(new)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = UniMoEConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == tiny_config.to_dict()
    assert type(loaded.sound_config).__name__ == "UniMoEBEATsConfig"
    assert loaded.audio_token_id == loaded.speech_token_id == 4
    assert loaded.audio_config is loaded.sound_config
    loaded.audio_token_id = 7
    assert loaded.speech_token_id == 7


def test_a_new_config_maps_every_auto_class_and_a_loaded_one_keeps_its_map(tmp_path):
    import json

    config = UniMoEConfig.from_preset("tiny")
    expected = {
        "AutoConfig": "configuration_unimoe.UniMoEConfig",
        "AutoModel": "modeling_unimoe.UniMoEModel",
        "AutoModelForCausalLM": "modeling_unimoe.UniMoEForCausalLM",
        "AutoModelForImageTextToText": "modeling_unimoe.UniMoEForCausalLM",
    }
    assert config.auto_map == expected
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"] == expected
    assert (tmp_path / "configuration_unimoe.py").is_file() and (tmp_path / "configuration_beats.py").is_file()
    saved["auto_map"] = {"AutoConfig": "org/code--configuration_unimoe.UniMoEConfig"}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert UniMoEConfig.from_pretrained(tmp_path).auto_map == saved["auto_map"]


def expected_llm_parameters(text) -> int:
    """LLaMA decoder with E SwiGLU experts in MoE layers, counted from the dimensions alone."""
    h, f, v = text.hidden_size, text.intermediate_size, text.vocab_size
    kv = text.num_key_value_heads * text.head_dim
    attention = 2 * h * h + 2 * h * kv
    moe_layers = len(text.moe_layer_indices)
    dense_layers = text.num_hidden_layers - moe_layers
    ffn = moe_layers * (text.num_experts * 3 * h * f + text.num_experts * h) + dense_layers * 3 * h * f
    return 2 * v * h + text.num_hidden_layers * (attention + 2 * h) + ffn + h


# Published sizes of the frozen towers: CLIP ViT-L/14-336 vision model, whisper-small encoder, whisper-small decoder.
CLIP_L_336 = 303_507_456
WHISPER_SMALL_ENCODER = 88_154_112
WHISPER_SMALL_DECODER = 153_580_800


@pytest.mark.parametrize(
    "preset, billions",
    [("uni-moe-speech-4e", 20.3), ("uni-moe-speech-v1.5", 13.8), ("uni-moe-audio-4e", 13.75), ("uni-moe-8e", 37.6)],
)
def test_released_presets_have_the_released_parameter_counts(preset, billions):
    config = UniMoEConfig.from_preset(preset)
    with torch.device("meta"):
        model = UniMoEForCausalLM(config)
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in model.model.named_children()}
    text = config.text_config
    assert counts["language_model"] + model.lm_head.weight.numel() == expected_llm_parameters(text)
    assert counts["vision_tower"] == CLIP_L_336
    assert counts["vision_projector"] == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    if config.speech_config is not None:
        assert counts["speech_tower"] == WHISPER_SMALL_ENCODER
        assert counts["speech_connector"] == WHISPER_SMALL_DECODER + 50 * 768 + 768 * 4096 + 4096
    if config.sound_config is not None:
        assert abs(counts["sound_tower"] / 1e6 - 90) < 0.5  # BEATs iter3+: "90M parameters"
    total = sum(p.numel() for p in model.parameters())
    assert abs(total / 1e9 - billions) < 0.05, total


def test_moe_settings_are_readable_and_settable_at_the_top_level(tmp_path):
    config = UniMoEConfig.from_preset("tiny")
    for name in ("num_experts", "num_experts_per_tok", "output_router_logits", "router_aux_loss_coef"):
        assert getattr(config, name) == getattr(config.text_config, name)
    config.output_router_logits = True
    config.router_aux_loss_coef = 0.25
    assert config.text_config.output_router_logits is True and config.text_config.router_aux_loss_coef == 0.25
    saved = config.to_dict()
    assert "output_router_logits" not in saved and saved["text_config"]["router_aux_loss_coef"] == 0.25
    assert UniMoEConfig.from_preset("tiny", output_router_logits=True).text_config.output_router_logits is True

    UniMoEForCausalLM(UniMoEConfig.from_preset("tiny")).save_pretrained(tmp_path)
    model = UniMoEForCausalLM.from_pretrained(tmp_path, output_router_logits=True, router_aux_loss_coef=0.5)
    text = model.config.text_config
    assert text.output_router_logits is True and text.router_aux_loss_coef == 0.5
    assert model.model.language_model.config.output_router_logits is True


def test_rope_scaling_legacy_keyword_and_missing_factor():
    text = UniMoETextConfig(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0})
    assert text.rope_parameters == {"rope_type": "linear", "rope_theta": 5e5, "factor": 2.0}
    with pytest.raises(ValueError, match=r"RoPE type 'yarn' needs a scaling factor.*Add \"factor\""):
        UniMoETextConfig(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0})
    with pytest.raises(ValueError, match=r"`rope_parameters\['rope_type'\]` must be one of .*'linear'.*got 'ntk'"):
        UniMoETextConfig(rope_parameters={"rope_type": "ntk", "factor": 2.0})
