"""Towers, connectors and the merge of media features at their placeholder tokens."""

import re

import pytest
import torch

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM
from tests.helpers import media_prompt


def test_features_land_exactly_on_their_placeholders(tiny_model):
    inputs = media_prompt(tiny_model.config)
    model, config = tiny_model.model, tiny_model.config
    captured = {}
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        tiny_model(**inputs)
        expected = {
            config.image_token_id: model.get_image_features(inputs["pixel_values"]).pooler_output,
            config.video_token_id: model.get_video_features(inputs["pixel_values_videos"]).pooler_output,
            config.speech_token_id: model.get_speech_features(inputs["input_features"]).pooler_output,
            config.sound_token_id: model.get_sound_features(
                inputs["sound_features"], inputs["sound_features_mask"]
            ).pooler_output,
        }
        text_embeds = model.get_input_embeddings()(inputs["input_ids"])
    hook.remove()
    embeds, ids = captured["embeds"][0], inputs["input_ids"][0]
    for token_id, features in expected.items():
        torch.testing.assert_close(embeds[ids == token_id], features.reshape(-1, features.shape[-1]))
    is_text = ~torch.isin(ids, torch.tensor(list(expected)))
    torch.testing.assert_close(embeds[is_text], text_embeds[0][is_text])


def test_feature_shapes(tiny_model):
    config, model = tiny_model.config, tiny_model.model
    inputs = media_prompt(config)
    hidden = config.text_config.hidden_size
    with torch.no_grad():
        assert model.get_image_features(inputs["pixel_values"]).pooler_output.shape == (
            1,
            config.image_seq_length,
            hidden,
        )
        assert model.get_video_features(inputs["pixel_values_videos"]).pooler_output.shape == (
            1,
            config.image_seq_length,
            hidden,
        )
        assert model.get_speech_features(inputs["input_features"]).pooler_output.shape == (
            2,
            config.num_speech_query_tokens,
            hidden,
        )
        sound = model.get_sound_features(inputs["sound_features"], inputs["sound_features_mask"]).pooler_output
        assert sound.shape == (2, config.num_sound_query_tokens, hidden)


def test_video_is_the_frame_mean_of_the_image_path_as_released():
    """The released models mean-pool the frames' image features: the frame order is lost."""
    torch.manual_seed(0)
    model = UniMoEForCausalLM(UniMoEConfig.from_preset("tiny", video_pooling="mean")).eval()
    video = torch.randn(2, model.config.num_video_frames, 3, 48, 48)
    with torch.no_grad():
        got = model.model.get_video_features(video).pooler_output
        frames = torch.stack(
            [model.model.get_image_features(v).pooler_output for v in video]
        )  # [2, frames, patches, hidden]
        reversed_order = model.model.get_video_features(video.flip(1)).pooler_output
    assert model.model.vision_projector.frame_weights is None
    assert not any("frame_weights" in key for key in model.state_dict())
    torch.testing.assert_close(got, frames.mean(dim=1))
    torch.testing.assert_close(reversed_order, got)


def test_weighted_video_pooling_tells_the_frame_order(tiny_model):
    model = tiny_model.model
    assert tiny_model.config.video_pooling == "weighted"
    video = torch.randn(2, tiny_model.config.num_video_frames, 3, 48, 48)
    weights = model.vision_projector.frame_weights
    torch.testing.assert_close(weights.sum(0), torch.ones(weights.shape[1]))  # a (tilted) mean at init
    with torch.no_grad():
        frames = torch.stack(
            [model.get_image_features(v).pooler_output for v in video]
        )  # [2, frames, patches, hidden]
        got = model.get_video_features(video).pooler_output
        torch.testing.assert_close(got, (frames * weights[None, :, None, :]).sum(1))
        assert (model.get_video_features(video.flip(1)).pooler_output - got).abs().max() > 1e-3
        model.vision_projector.frame_weights.copy_(torch.linspace(-1, 1, 8)[:, None].expand(8, 64))
        got = model.get_video_features(video).pooler_output
        reversed_order = model.get_video_features(video.flip(1)).pooler_output
    torch.testing.assert_close(got, (frames * torch.linspace(-1, 1, 8)[None, :, None, None]).sum(1))
    torch.testing.assert_close(reversed_order, -got)
    with pytest.raises(
        ValueError, match=r"has 4 frames per video, but this model learned its frame weights for exactly 8"
    ):
        model.get_video_features(video[:, :4])


def test_speech_chunks_are_encoded_independently(tiny_model):
    features = torch.randn(3, 80, 3000)
    with torch.no_grad():
        together = tiny_model.model.get_speech_features(features).pooler_output
        alone = torch.cat([tiny_model.model.get_speech_features(chunk[None]).pooler_output for chunk in features])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_sound_padding_frames_do_not_matter(tiny_model):
    features = 10 + 5 * torch.randn(1, 2998, 128)
    mask = torch.ones(1, 2998, dtype=torch.long)
    mask[0, 1600:] = 0
    changed = features.clone()
    changed[0, 1600:] = 50.0
    with torch.no_grad():
        a = tiny_model.model.get_sound_features(features, mask).pooler_output
        b = tiny_model.model.get_sound_features(changed, mask).pooler_output
        c = tiny_model.model.get_sound_features(changed).pooler_output
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - c).abs().max() > 1e-4  # without the mask the padding is seen


def test_batch_with_padding_and_several_media_per_sample(tiny_model):
    """Each sample alone gives the same logits as inside a left-padded batch with other media."""
    config = tiny_model.config
    first, second = media_prompt(config, seed=1), media_prompt(config, seed=2)
    image_tokens = [config.image_token_id] * config.image_seq_length
    second["input_ids"] = torch.tensor([[1, 30] + image_tokens + [31] + image_tokens + [32]])
    second = {"input_ids": second["input_ids"], "pixel_values": torch.randn(2, 3, 48, 48)}
    len1, len2 = first["input_ids"].shape[1], second["input_ids"].shape[1]
    pad = len1 - len2
    batch_ids = torch.cat(
        [first["input_ids"], torch.cat([torch.zeros(1, pad, dtype=torch.long), second["input_ids"]], 1)]
    )
    attention_mask = torch.ones_like(batch_ids)
    attention_mask[1, :pad] = 0
    batch = dict(first, input_ids=batch_ids, attention_mask=attention_mask)
    batch["pixel_values"] = torch.cat([first["pixel_values"], second["pixel_values"]])  # row-major placeholder order
    with torch.no_grad():
        together = tiny_model(**batch).logits
        alone_1 = tiny_model(**first).logits
        alone_2 = tiny_model(**second).logits
    torch.testing.assert_close(together[0], alone_1[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(together[1, pad:], alone_2[0], atol=1e-4, rtol=0)


def test_count_mismatch_names_both_counts(tiny_model):
    inputs = media_prompt(tiny_model.config)
    inputs["input_features"] = inputs["input_features"][:1]
    message = (
        "speech features and speech placeholder tokens do not match: the input has 16 placeholder tokens (id 4) but "
        "`input_features` gives 8 feature vectors (1 x 8)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_model(**inputs)


def test_placeholders_without_media_are_text_tokens(tiny_model):
    """As in Llava: without `pixel_values` the image placeholders keep their token embeddings."""
    inputs = media_prompt(tiny_model.config)
    ids = inputs["input_ids"]
    with torch.no_grad():
        by_ids = tiny_model(input_ids=ids).logits
        by_embeds = tiny_model(inputs_embeds=tiny_model.get_input_embeddings()(ids)).logits
    torch.testing.assert_close(by_ids, by_embeds)


def test_media_for_a_missing_tower_is_refused():
    config = UniMoEConfig.from_preset("tiny", speech_config=None, speech_token_id=None)
    model = UniMoEForCausalLM(config).eval()
    assert not hasattr(model.model, "speech_tower")
    with pytest.raises(ValueError, match=re.escape("`input_features` was given, but this model has no speech_tower")):
        model(torch.tensor([[1, 2]]), input_features=torch.randn(1, 80, 3000))


def test_absent_modalities_build_no_tower():
    config = UniMoEConfig.from_preset(
        "tiny",
        vision_config=None,
        speech_config=None,
        sound_config=None,
        sound_qformer_config=None,
        image_token_id=None,
        video_token_id=None,
        speech_token_id=None,
        sound_token_id=None,
    )
    model = UniMoEForCausalLM(config)
    assert [name for name, _ in model.model.named_children()] == ["language_model"]
