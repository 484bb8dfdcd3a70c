"""chat_template.jinja against hand-written vicuna_v1 strings, media placement, assistant-token masks."""

import numpy as np
import pytest
import torch

from modeling_unimoe.processing.export import chat_template_for
from modeling_unimoe.processing.tiny_tokenizer import VICUNA_SYSTEM_PROMPT
from tests.processing.processing_helpers import SR, color_image, sine, tiny_config, tiny_processor, video_frames


SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions."
)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def render(processor, messages, **kwargs):
    return processor.apply_chat_template(messages, **kwargs)


def user(*blocks):
    return {"role": "user", "content": list(blocks)}


def text(value):
    return {"type": "text", "text": value}


def test_system_prompt_is_the_reference_one():
    assert SYSTEM == VICUNA_SYSTEM_PROMPT


def test_single_turn(processor):
    messages = [user(text("What color is the shape?"))]
    assert render(processor, messages) == f"{SYSTEM} USER: What color is the shape? "
    assert render(processor, messages, add_generation_prompt=True) == (
        f"{SYSTEM} USER: What color is the shape? ASSISTANT:"
    )
    # plain string content renders the same
    assert render(
        processor, [{"role": "user", "content": "What color is the shape?"}], add_generation_prompt=True
    ) == (f"{SYSTEM} USER: What color is the shape? ASSISTANT:")


def test_media_placeholders_in_the_reference_order(processor):
    # blocks in any order -> <image>\n<audio>\n<sound>\n<video>\n{query}, as the reference's inference prompt
    messages = [
        user(text("What happens?"), {"type": "video"}, {"type": "audio"}, {"type": "image"}, {"type": "sound"})
    ]
    assert render(processor, messages, add_generation_prompt=True) == (
        f"{SYSTEM} USER: <image>\n<audio>\n<sound>\n<video>\nWhat happens? ASSISTANT:"
    )
    two_images = [user({"type": "image"}, {"type": "image"}, text("Which is bigger?"))]
    assert render(processor, two_images, add_generation_prompt=True) == (
        f"{SYSTEM} USER: <image>\n<image>\nWhich is bigger? ASSISTANT:"
    )


def test_multi_turn_with_eos_after_each_reply(processor):
    messages = [
        user({"type": "image"}, text("What shape is this?")),
        {"role": "assistant", "content": [text("circle")]},
        user(text("What color is it?")),
        {"role": "assistant", "content": "red"},
    ]
    assert render(processor, messages) == (
        f"{SYSTEM} USER: <image>\nWhat shape is this? ASSISTANT: circle</s>USER: What color is it? ASSISTANT: red</s>"
    )
    assert render(processor, messages[:3], add_generation_prompt=True) == (
        f"{SYSTEM} USER: <image>\nWhat shape is this? ASSISTANT: circle</s>USER: What color is it? ASSISTANT:"
    )


def test_system_message_replaces_the_default(processor):
    for content in ("You count beeps.", [text("You count "), text("beeps.")]):
        messages = [{"role": "system", "content": content}, user(text("How many beeps are there?"))]
        assert render(processor, messages, add_generation_prompt=True) == (
            "You count beeps. USER: How many beeps are there? ASSISTANT:"
        )


def test_tokenizer_and_processor_render_alike(processor):
    messages = [user({"type": "audio"}, text("What number is said?")), {"role": "assistant", "content": "seven"}]
    assert processor.tokenizer.apply_chat_template(messages, tokenize=False) == render(processor, messages)


def test_bad_chats_raise(processor):
    with pytest.raises(Exception, match="media in user messages only"):
        render(processor, [user(text("hi")), {"role": "assistant", "content": [{"type": "image"}]}])
    with pytest.raises(Exception, match="got role tool"):
        render(processor, [user(text("hi")), {"role": "tool", "content": "x"}])


def test_sound_blocks_render_as_the_sound_paths_placeholder():
    config = tiny_config("sound_only")  # BEATs behind <audio>, as the released audio variant
    processor = tiny_processor("sound_only")
    template = chat_template_for(config, processor.tokenizer)
    assert template == processor.chat_template
    messages = [user({"type": "sound"}, text("What is the sound?"))]
    assert render(processor, messages, add_generation_prompt=True) == (
        f"{SYSTEM} USER: <audio>\nWhat is the sound? ASSISTANT:"
    )


def test_chat_with_media_tokenized(processor):
    messages = [
        user(
            {"type": "image", "image": color_image()},
            {"type": "audio", "audio": sine(1.0)},
            {"type": "sound", "sound": {"array": sine(1.0, sr=8000), "sampling_rate": 8000}},
            {"type": "video", "video": video_frames(8)},
            text("Describe it."),
        )
    ]
    batch = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    ids = batch["input_ids"][0]
    assert ids[0] == processor.tokenizer.bos_token_id
    counts = {kind: int((ids == token_id).sum()) for kind, (_, token_id, _) in processor._placeholders.items()}
    assert counts == {"image": 36, "video": 36, "audio": 8, "sound": 8}
    assert batch["pixel_values"].shape == (1, 3, 48, 48) and batch["pixel_values_videos"].shape == (1, 8, 3, 48, 48)
    assert batch["input_features"].shape == (1, 80, 3000) and batch["sound_features"].shape == (1, 2998, 128)
    # the expanded prompt, decoded, is the rendered one with each placeholder repeated
    decoded = processor.tokenizer.decode(ids[1:])
    assert decoded == (
        f"{SYSTEM} USER: "
        + "<image>" * 36
        + "\n"
        + "<audio>" * 8
        + "\n"
        + "<sound>" * 8
        + "\n"
        + "<video>" * 36
        + "\nDescribe it. ASSISTANT:"
    )


def test_batched_chats_keep_media_per_conversation(processor):
    red, blue = color_image((255, 0, 0)), color_image((0, 0, 255))
    chats = [
        [user({"type": "image", "image": red}, text("What color is the shape?"))],
        [user(text("No image here."))],
        [user({"type": "image", "image": blue}, text("And this one?"))],
    ]
    batch = processor.apply_chat_template(
        chats, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True},
    )  # fmt: skip
    assert batch["input_ids"].shape[0] == 3
    assert [int((row == 3).sum()) for row in batch["input_ids"]] == [36, 0, 36]
    alone = [processor(text="<image>", images=image, return_tensors="pt")["pixel_values"][0] for image in (red, blue)]
    torch.testing.assert_close(batch["pixel_values"], torch.stack(alone))


def test_assistant_masks_cover_replies_and_eos(processor):
    messages = [
        user({"type": "image", "image": color_image()}, text("What shape is this?")),
        {"role": "assistant", "content": "circle"},
        user({"type": "audio", "audio": sine(1.0)}, text("How many beeps are there?")),
        {"role": "assistant", "content": "three"},
    ]
    batch = processor.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        return_tensors="pt",
        processor_kwargs={"sampling_rate": SR},
    )
    ids, mask = batch["input_ids"][0], batch["assistant_masks"][0]
    assert mask.shape == ids.shape
    tokenizer = processor.tokenizer
    assert tokenizer.decode(ids[mask.bool()]) == " circle</s> three</s>"
    # nothing of the prompt or of the expanded placeholders is marked
    assert not mask[(ids == 3) | (ids == 4)].any()
    assert int((ids == 3).sum()) == 36 and int((ids == 4).sum()) == 8
    assert "pixel_values" in batch and "input_features" in batch


def test_generation_prompt_then_model(processor):
    from modeling_unimoe import UniMoEForCausalLM

    torch.manual_seed(0)
    model = UniMoEForCausalLM(tiny_config("vision_only")).eval()
    vision = tiny_processor("vision_only")
    messages = [user({"type": "image", "image": np.zeros((40, 40, 3), np.uint8)}, text("What shape is this?"))]
    batch = vision.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3
    assert isinstance(vision.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True), str)


def _base_has_the_modern_apply_chat_template():
    import inspect

    from transformers.processing_utils import ProcessorMixin

    parameters = inspect.signature(ProcessorMixin.apply_chat_template).parameters
    return "processor_kwargs" in parameters and hasattr(ProcessorMixin, "_adjust_assistant_masks_indices")


@pytest.mark.skipif(
    not _base_has_the_modern_apply_chat_template(),
    reason="this transformers' ProcessorMixin.apply_chat_template is not the one the processor's own reproduces",
)
def test_apply_chat_template_equals_transformers_own(processor):
    """The processor's apply_chat_template (the same on every transformers version) gives what ProcessorMixin's gives
    on the versions where that one works with this processor."""
    from transformers.processing_utils import ProcessorMixin

    red = color_image()
    chat = [user({"type": "image", "image": red}, {"type": "audio", "audio": sine(1.0, sr=8000)}, text("Where?"))]
    turns = [
        user({"type": "image", "image": red}, text("Shape?")),
        {"role": "assistant", "content": "circle", "tool_calls": None},
        user({"type": "sound", "sound": {"array": sine(1.0), "sampling_rate": SR}}, text("And?")),
        {"role": "assistant", "content": [text("three")]},
    ]
    cases = [
        ([chat], dict(add_generation_prompt=True)),
        (chat, dict(add_generation_prompt=True, tokenize=True)),
        (
            chat,
            dict(
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                processor_kwargs={"sampling_rate": 8000},
            ),
        ),  # fmt: skip
        ([chat, [user(text("Text only."))]], dict(tokenize=True, return_dict=True, padding=True, sampling_rate=8000)),
        (turns, dict(tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt")),
        (turns, dict(tokenize=True, return_dict=True, return_assistant_tokens_mask=True)),
        (turns[:3], dict(continue_final_message=True, tokenize=True, return_dict=True, return_tensors="np")),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}, text("hi")]}], {}),
    ]
    for conversation, kwargs in cases:
        ours = processor.apply_chat_template(conversation, **kwargs)
        theirs = ProcessorMixin.apply_chat_template(processor, conversation, **kwargs)
        if hasattr(ours, "keys"):  # a BatchFeature
            assert type(ours) is type(theirs) and list(ours) == list(theirs), kwargs
            for key in ours:
                ours_value, theirs_value = ours[key], theirs[key]
                assert type(ours_value) is type(theirs_value), key
                if isinstance(ours_value, torch.Tensor):
                    torch.testing.assert_close(ours_value, theirs_value, rtol=0, atol=0)
                elif isinstance(ours_value, np.ndarray):
                    np.testing.assert_array_equal(ours_value, theirs_value)
                else:
                    assert ours_value == theirs_value, key
        elif isinstance(ours, torch.Tensor):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        else:
            assert ours == theirs, kwargs
