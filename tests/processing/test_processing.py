"""UniMoEProcessor: media decoding, placeholder expansion, every modality end to end through the tiny model, batches,
long audio, the BEATs filterbank against an independent reference, the tiny tokenizer, and the documented errors."""

import json

import numpy as np
import pytest
import torch

from modeling_unimoe import UniMoEForCausalLM
from modeling_unimoe.processing.feature_extraction_unimoe import (
    CHUNK_SAMPLES,
    kaldi_fbank,
)
from modeling_unimoe.processing.media_unimoe import (
    EmptyAudioError,
    MediaDecodeError,
    NotEnoughFramesError,
    PlaceholderCountError,
    PromptTooLongError,
    TooManyChunksError,
    UniMoEProcessingError,
    load_video,
    sample_frame_indices,
)
from modeling_unimoe.processing.processing_unimoe import UniMoEProcessor
from modeling_unimoe.processing.tiny_tokenizer import TINY_SPECIAL_TOKENS, build_tiny_tokenizer
from tests.processing.processing_helpers import (
    SR,
    color_image,
    frame_values,
    sine,
    tiny_config,
    tiny_processor,
    truncated_copy,
    video_frames,
    write_audio,
    write_garbage,
    write_image,
    write_video,
)


PROMPT = "USER: {}What is this? ASSISTANT:"


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UniMoEForCausalLM(tiny_config()).eval()


def placeholder_counts(processor, input_ids):
    return {kind: int((input_ids == token_id).sum()) for kind, (_, token_id, _) in processor._placeholders.items()}


def assert_counts_match(processor, batch):
    """Placeholder tokens == the feature vectors the model will produce, for every modality."""
    counts = placeholder_counts(processor, torch.as_tensor(batch["input_ids"]))
    q = processor.image_seq_length
    expected = {
        "image": len(batch["pixel_values"]) * q if "pixel_values" in batch else 0,
        "video": len(batch["pixel_values_videos"]) * q if "pixel_values_videos" in batch else 0,
        "audio": len(batch["input_features"]) * processor.num_speech_query_tokens if "input_features" in batch else 0,
        "sound": len(batch["sound_features"]) * processor.num_sound_query_tokens if "sound_features" in batch else 0,
    }
    assert counts == {kind: expected[kind] for kind in counts}


def run_model(model, batch, max_new_tokens=3):
    with torch.no_grad():
        logits = model(**batch).logits
        generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    assert logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(logits).all()
    assert generated.shape == (batch["input_ids"].shape[0], batch["input_ids"].shape[1] + max_new_tokens)
    return logits, generated


# --- the tiny tokenizer -----------------------------------------------------------------------------------------------
def test_tiny_tokenizer_layout_and_determinism():
    first, second = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert len(first) == 512
    assert [first.convert_ids_to_tokens(i) for i in range(7)] == list(TINY_SPECIAL_TOKENS)
    assert first.pad_token_id == first.unk_token_id == 0 and first.bos_token_id == 1 and first.eos_token_id == 2
    assert json.loads(first.backend_tokenizer.to_str()) == json.loads(second.backend_tokenizer.to_str())
    text = "USER: <image>\nWhat color is the shape? ASSISTANT: red</s>"
    ids = first(text)["input_ids"]
    assert ids[0] == 1 and 3 in ids and ids[-1] == 2
    assert first.decode(ids) == "<s>" + text
    assert len(first("What is 7 plus 2?")["input_ids"]) <= 10  # the merges fit the project's text


# --- each modality end to end -----------------------------------------------------------------------------------------
def test_text_only(processor, model):
    batch = processor(text=PROMPT.format(""), return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}
    run_model(model, batch)


def test_image_end_to_end(processor, model, tmp_path):
    path = write_image(tmp_path / "red.png")
    batch = processor(text=PROMPT.format("<image>\n"), images=path, return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 3, 48, 48)
    assert_counts_match(processor, batch)
    # a path, a PIL image and a uint8 array of the same picture give the same pixels
    same = processor(text="<image>", images=color_image(), return_tensors="pt")["pixel_values"]
    array = processor(text="<image>", images=np.asarray(color_image()), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(batch["pixel_values"], same)
    torch.testing.assert_close(batch["pixel_values"], array)
    run_model(model, batch)


def test_video_end_to_end(processor, model, tmp_path):
    path = write_video(tmp_path / "clip.mp4", num_frames=20)
    batch = processor(text=PROMPT.format("<video>\n"), videos=path, return_tensors="pt")
    assert batch["pixel_values_videos"].shape == (1, 8, 3, 48, 48)
    assert_counts_match(processor, batch)
    run_model(model, batch)


def test_video_frames_sampled_like_the_reference(processor, tmp_path):
    # 20 frames, 8 wanted: every 20 // 8 = 2nd frame from frame 0
    assert sample_frame_indices(20, 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    levels = frame_values(20)
    decoded = load_video(write_video(tmp_path / "clip.mp4", num_frames=20), 8)
    from_frames = load_video(video_frames(20), 8)
    for i, (frame, listed) in enumerate(zip(decoded, from_frames, strict=True)):
        assert abs(float(np.asarray(frame).mean()) - levels[2 * i]) < 6  # lossy codec
        assert np.asarray(listed).mean() == levels[2 * i]


def test_speech_end_to_end(processor, model, tmp_path):
    path = write_audio(tmp_path / "tone.wav", sine(3.0), subtype="FLOAT")
    batch = processor(text=PROMPT.format("<audio>\n"), audio=path, return_tensors="pt")
    assert batch["input_features"].shape == (1, 80, 3000)
    assert_counts_match(processor, batch)
    # the Whisper features of a short clip are those of WhisperFeatureExtractor on the same samples
    expected = processor.feature_extractor(sine(3.0), sampling_rate=SR, return_tensors="pt")["input_features"]
    torch.testing.assert_close(batch["input_features"], expected, atol=1e-4, rtol=0)
    run_model(model, batch)


def test_sound_end_to_end(processor, model, tmp_path):
    path = write_audio(tmp_path / "tone.flac", sine(2.0, freq=1000), format="FLAC")
    batch = processor(text=PROMPT.format("<sound>\n"), sound=path, return_tensors="pt")
    assert batch["sound_features"].shape == (1, 2998, 128)
    assert batch["sound_features_mask"].dtype == torch.int64
    assert int(batch["sound_features_mask"].sum()) == 2 * SR // 160  # 200 frames of real audio
    assert_counts_match(processor, batch)
    run_model(model, batch)


def test_all_modalities_in_one_prompt(processor, model, tmp_path):
    text = PROMPT.format("<image>\n<audio>\n<sound>\n<video>\n")
    batch = processor(
        text=text,
        images=color_image(),
        audio=sine(1.0),
        sound=sine(1.0, freq=2000),
        videos=video_frames(8),
        sampling_rate=SR,
        return_tensors="pt",
    )
    assert_counts_match(processor, batch)
    run_model(model, batch)


# --- batches ----------------------------------------------------------------------------------------------------------
def test_mm_token_type_ids(processor):
    """1 image, 2 video, 3 audio placeholder, 0 else: as transformers 5's `create_mm_token_type_ids`, which older
    versions lack (the processor has its own)."""
    batch = processor(
        text=["USER: <image>\n<audio>\n<sound>\n<video>\nWhat? ASSISTANT:", "hi"],
        images=color_image(),
        audio=sine(1.0),
        sound=sine(1.0),
        videos=[video_frames(8)],
        padding=True,
        return_mm_token_type_ids=True,
        return_tensors="pt",
    )
    ids, types = batch["input_ids"], batch["mm_token_type_ids"]
    assert types.dtype == torch.int64 and types.shape == ids.shape
    for kind, value in (("image", 1), ("video", 2), ("audio", 3)):
        assert torch.equal(types == value, ids == processor._placeholders[kind][1])
    if hasattr(processor, "create_mm_token_type_ids"):
        assert types.tolist() == processor.create_mm_token_type_ids(ids.tolist())


def test_batch_rows_follow_text_order(processor):
    red, blue, green = color_image((255, 0, 0)), color_image((0, 0, 255)), color_image((0, 255, 0))
    batch = processor(
        text=["<image> and <image>", "only <image>"], images=[red, blue, green], padding=True, return_tensors="pt"
    )
    alone = [
        processor(text="<image>", images=image, return_tensors="pt")["pixel_values"][0] for image in (red, blue, green)
    ]
    for row, expected in zip(batch["pixel_values"], alone, strict=True):
        torch.testing.assert_close(row, expected)
    nested = processor(
        text=["<image> and <image>", "only <image>"], images=[[red, blue], [green]], padding=True, return_tensors="pt"
    )
    torch.testing.assert_close(nested["pixel_values"], batch["pixel_values"])


def test_mixed_batch_with_padding_matches_single_samples(model, tmp_path):
    processor = tiny_processor()
    processor.tokenizer.padding_side = "right"  # logits of real positions are then those of the sample alone
    try:
        samples = [
            ("USER: <image>\n<audio>\nWhat is it? ASSISTANT:", {"images": [color_image()], "audio": [sine(31.0)]}),
            ("USER: How many beeps are there? ASSISTANT:", {}),
            ("USER: <sound>\n<video>\nAnd this? ASSISTANT:", {"sound": [sine(2.0)], "videos": [video_frames(9)]}),
        ]
        merged = {"images": [], "audio": [], "sound": [], "videos": []}
        for _, media in samples:
            for key, items in media.items():
                merged[key] += items
        batch = processor(
            text=[text for text, _ in samples], padding=True, sampling_rate=SR, return_tensors="pt", **merged
        )
        assert_counts_match(processor, batch)
        assert batch["input_features"].shape[0] == 2  # 31 s of speech = 2 chunks
        lengths = batch["attention_mask"].sum(-1)
        assert len(set(lengths.tolist())) == 3
        with torch.no_grad():
            logits = model(**batch).logits
            for index, (text, media) in enumerate(samples):
                alone = processor(text=text, sampling_rate=SR, return_tensors="pt", **media)
                expected = model(**alone).logits[0]
                torch.testing.assert_close(logits[index, : lengths[index]], expected, atol=2e-4, rtol=1e-4)
    finally:
        processor.tokenizer.padding_side = "left"
    # left padding (the tiny tokenizer's default) generates for the whole batch
    batch = processor(text=[t for t, _ in samples], padding=True, sampling_rate=SR, return_tensors="pt", **merged)
    assert (batch["attention_mask"][:, -1] == 1).all()
    run_model(model, batch)


# --- long audio ------------------------------------------------------------------------------------------------------
def test_speech_longer_than_90_seconds(processor, model):
    wave = sine(95.0)
    batch = processor(
        text="USER: <audio>\nWhat number is said? ASSISTANT:", audio=wave, sampling_rate=SR, return_tensors="pt"
    )
    assert batch["input_features"].shape == (4, 80, 3000)  # ceil(95 / 30) chunks
    assert_counts_match(processor, batch)
    # chunk 2 is exactly Whisper's features of samples [960000, 1440000)
    chunk = processor.feature_extractor(
        wave[2 * CHUNK_SAMPLES : 3 * CHUNK_SAMPLES], sampling_rate=SR, return_tensors="pt"
    )
    torch.testing.assert_close(batch["input_features"][2], chunk["input_features"][0], atol=1e-4, rtol=0)
    run_model(model, batch, max_new_tokens=2)


def test_sound_longer_than_90_seconds(processor, model):
    wave = sine(95.0, freq=800)
    batch = processor(text="<sound>", sound=wave, sampling_rate=SR, return_tensors="pt")
    assert batch["sound_features"].shape == (4, 2998, 128)
    assert batch["sound_features_mask"].sum(-1).tolist() == [2998, 2998, 2998, 5 * SR // 160]
    assert_counts_match(processor, batch)
    # chunks are independent 30 s windows, the last zero-padded
    torch.testing.assert_close(batch["sound_features"][1], batch["sound_features"][0])  # same periodic tone
    padded = np.zeros(CHUNK_SAMPLES, np.float32)
    padded[: 5 * SR] = wave[3 * CHUNK_SAMPLES :]
    torch.testing.assert_close(batch["sound_features"][3], kaldi_fbank(torch.from_numpy(padded) * 2**15))
    with torch.no_grad():  # one forward (each 30 s of sound is a 1496-token BEATs pass, the slow part on CPU)
        assert torch.isfinite(model(**batch).logits).all()


def test_sound_chunk_cap_refuses_or_truncates_when_asked():
    processor = tiny_processor(max_sound_chunks=2)
    wave = sine(61.0)
    with pytest.raises(TooManyChunksError, match=r"61\.0 s.*3 chunks.*at most 2 chunks.*truncate_sound=True"):
        processor(text="<sound>", sound=wave, sampling_rate=SR)
    batch = processor(text="<sound>", sound=wave, sampling_rate=SR, truncate_sound=True, return_tensors="pt")
    assert batch["sound_features"].shape[0] == 2
    assert_counts_match(processor, batch)


# --- processors of the released variants' shapes ---------------------------------------------------------------------
def test_sound_only_model_sends_audio_to_beats():
    processor = tiny_processor("sound_only")
    assert processor.audio_paths == {"audio": "sound"} and processor.sound_token is None
    config = tiny_config("sound_only")
    assert processor.audio_token_id == config.sound_token_id == 4
    batch = processor(
        text="USER: <audio>\nWhat is the sound? ASSISTANT:", audio=sine(2.0), sampling_rate=SR, return_tensors="pt"
    )
    assert "sound_features" in batch and "input_features" not in batch
    assert int((batch["input_ids"] == 4).sum()) == config.num_sound_query_tokens
    torch.manual_seed(0)
    run_model(UniMoEForCausalLM(config).eval(), batch, max_new_tokens=2)
    with pytest.raises(PlaceholderCountError, match="pass sounds as `audio=`"):
        processor(text="<audio>", sound=sine(1.0), sampling_rate=SR)
    with pytest.raises(PlaceholderCountError, match="<sound>.*no sound tower"):
        processor(text="a <sound>")


def test_speech_only_and_vision_only_models():
    speech = tiny_processor("speech_only")
    assert speech.audio_paths == {"audio": "speech"} and speech.sound_token is None
    with pytest.raises(PlaceholderCountError, match="no sound tower"):
        speech(text="<audio>", sound=sine(1.0), sampling_rate=SR)
    assert tiny_processor().audio_paths == {"audio": "speech", "sound": "sound"}
    vision = tiny_processor("vision_only")
    assert vision.audio_paths == {}
    with pytest.raises(PlaceholderCountError, match="no speech or sound tower"):
        vision(text="<audio>", audio=sine(1.0), sampling_rate=SR)
    with pytest.raises(PlaceholderCountError, match="<audio>.*no audio tower"):
        vision(text="hello <audio>")


def test_save_and_load_round_trip(processor, tmp_path):
    UniMoEProcessor.register_for_auto_class("AutoProcessor")
    processor.save_pretrained(tmp_path)
    loaded = UniMoEProcessor.from_pretrained(tmp_path)
    for name in ("image_seq_length", "num_video_frames", "num_speech_query_tokens", "num_sound_query_tokens",
                 "max_sound_chunks", "context_length", "image_token", "audio_token", "sound_token", "chat_template"):  # fmt: skip
        assert getattr(loaded, name) == getattr(processor, name), name
    kwargs = dict(text=["<image><audio>", "<sound><video>"], images=color_image(), audio=sine(1.0), sound=sine(1.0))
    a = processor(**kwargs, videos=[video_frames(8)], sampling_rate=SR, padding=True, return_tensors="pt")
    b = loaded(**kwargs, videos=[video_frames(8)], sampling_rate=SR, padding=True, return_tensors="pt")
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


# --- errors ----------------------------------------------------------------------------------------------------------
def test_placeholder_count_errors(processor):
    with pytest.raises(PlaceholderCountError, match=r"2 <image> placeholder\(s\) \(per sample: \[2\]\) but 1 image"):
        processor(text="<image><image>", images=color_image())
    with pytest.raises(PlaceholderCountError, match=r"0 <audio> placeholder.*1 audio input"):
        processor(text="no placeholder", audio=sine(1.0), sampling_rate=SR)
    with pytest.raises(PlaceholderCountError, match="1 <video> placeholder.*but 0 video"):
        processor(text="<video>")
    with pytest.raises(PlaceholderCountError, match=r"per sample as \[0, 1\].*\[1, 0\]"):
        processor(text=["<image>", "none"], images=[[], [color_image()]])
    with pytest.raises(PlaceholderCountError, match="without `text`"):
        processor(images=color_image())
    with pytest.raises(UniMoEProcessingError, match="`text` must be a string or a non-empty list of strings"):
        processor(text=[1, 2])


def test_unreadable_media_errors(processor, tmp_path):
    png = write_image(tmp_path / "ok.png")
    cases = [
        (dict(images=str(tmp_path / "missing.png")), "<image>", r"image 0 .*missing\.png.*no such file"),
        (dict(images=write_garbage(tmp_path / "bad.png")), "<image>", r"Could not decode image 0 .*bad\.png"),
        (dict(images=truncated_copy(png, tmp_path / "cut.png", 0.5)), "<image>", r"image 0 .*cut\.png"),
        (dict(images=np.zeros((0, 4, 3), np.uint8)), "<image>", "image 0 is an empty array"),
        (dict(images=np.full((8, 8, 3), 2.0)), "<image>", r"float images must lie in \[0, 1\]"),
        (dict(images=12), "<image>", "image 0 is a int; expected a PIL image"),
        (
            dict(audio=write_garbage(tmp_path / "bad.wav")),
            "<audio>",
            r"Could not decode audio 0 .*bad\.wav.*soundfile",
        ),
        (dict(audio=np.array([0.1, np.nan], np.float32)), "<audio>", "audio 0 contains NaN"),
        (dict(audio=np.zeros((20, 30))), "<audio>", "neither axis looks like channels"),
        (dict(audio=sine(1.0), sampling_rate=10), "<audio>", r"sampling rate of audio 0 is 10 Hz"),
        (dict(videos=write_garbage(tmp_path / "bad.mp4")), "<video>", r"Could not decode video 0 .*bad\.mp4"),
        (dict(videos=write_audio(tmp_path / "sound.wav", sine(1.0))), "<video>", r"video 0 .*sound\.wav"),
        (dict(videos=np.zeros((4, 4))), "<video>", r"expected 4-D frames"),
    ]
    for kwargs, text, message in cases:
        with pytest.raises(MediaDecodeError, match=message):
            processor(text=text, **kwargs)


def test_empty_audio_errors(processor, tmp_path):
    with pytest.raises(EmptyAudioError, match=r"audio 0 has no samples \(length 0\)"):
        processor(text="<audio>", audio=np.zeros(0, np.float32), sampling_rate=SR)
    empty_wav = write_audio(tmp_path / "empty.wav", np.zeros(0, np.float32))
    with pytest.raises(EmptyAudioError, match="sound 0 .*no samples"):
        processor(text="<sound>", sound=empty_wav)
    with pytest.raises(EmptyAudioError):
        processor(text="<audio>", audio=torch.zeros(0), sampling_rate=SR)


def test_short_video_refused_or_repeated_when_asked(processor, tmp_path):
    short = write_video(tmp_path / "short.mp4", num_frames=5)
    with pytest.raises(
        NotEnoughFramesError, match=r"video 0 .*has 5 frames but the model samples 8.*short_video='repeat'"
    ):
        processor(text="<video>", videos=short)
    with pytest.raises(NotEnoughFramesError, match="has 3 frames"):
        processor(text="<video>", videos=video_frames(3))
    batch = processor(text="<video>", videos=video_frames(3), short_video="repeat", return_tensors="pt")
    assert batch["pixel_values_videos"].shape == (1, 8, 3, 48, 48)
    frames = load_video(video_frames(3), 8, short_video="repeat")
    assert [int(np.asarray(f).mean()) for f in frames] == [frame_values(3)[i * 3 // 8] for i in range(8)]
    assert load_video(write_video(tmp_path / "ok.mp4", num_frames=5), 8, "repeat")[-1].size == (32, 32)


def test_prompt_longer_than_context_refused_or_truncated_when_asked(processor):
    long_text = "USER: " + "What is one plus two? " * 400 + "ASSISTANT:"
    with pytest.raises(PromptTooLongError, match=r"more than the model's context of 2048 tokens.*truncation=True"):
        processor(text=long_text)
    batch = processor(text=long_text, truncation=True, max_length=100, return_tensors="pt")
    assert batch["input_ids"].shape == (1, 100)
    # truncation never drops media: an image's 36 placeholders (and <s>) do not fit in 8 tokens
    with pytest.raises(
        PromptTooLongError, match=r"cannot be truncated to 8 tokens: its media and special tokens alone take 37 "
        r"tokens \(36 <image>\)"
    ):  # fmt: skip
        processor(text="USER: hi <image>", images=color_image(), truncation=True, max_length=8)
    # media count towards the context: 4 x 2 min of speech = 4 x 4 chunks x 8 tokens = 128 > 100
    small = tiny_processor(context_length=100)
    with pytest.raises(PromptTooLongError, match=r"takes 1[0-9][0-9] tokens with its media expanded.*context of 100"):
        small(text="<audio>" * 4, audio=[sine(120.0)] * 4, sampling_rate=SR)


def test_truncation_keeps_the_end_and_the_media_and_drops_the_earliest_text(processor):
    """The question and `ASSISTANT:` survive; the earliest text goes first; every placeholder and <s> stay."""
    history = "USER: What is one plus two? ASSISTANT: three</s>" * 30
    text = history + "USER: <image>\nWhat color is the shape? ASSISTANT:"
    full = processor(text=text, images=color_image())["input_ids"][0]
    batch = processor(text=text, images=color_image(), truncation=True, max_length=80)
    ids = batch["input_ids"][0]
    assert len(ids) == 80 and ids[0] == processor.tokenizer.bos_token_id
    assert ids[1:] == full[len(full) - 79 :]  # the last 79 tokens: the earliest text was dropped
    assert ids.count(processor.image_token_id) == 36
    assert processor.decode(ids).endswith("<image>\nWhat color is the shape? ASSISTANT:")
    # text between media is dropped before later text, the media themselves never
    text = "USER: one two three <image> four five six ASSISTANT:"
    full = processor(text=text, images=color_image())["input_ids"][0]
    cut = processor(text=text, images=color_image(), truncation=True, max_length=len(full) - 3)["input_ids"][0]
    position = full.index(processor.image_token_id)
    assert cut == full[:1] + full[4:]  # the three earliest text tokens after <s>
    assert cut.index(processor.image_token_id) == position - 3
    # through the chat template: the system prompt and old turns go, the last question stays
    chat = [{"role": "user", "content": "What is one plus two?"}, {"role": "assistant", "content": "three"}] * 20
    chat.append(
        {"role": "user", "content": [{"type": "image", "image": color_image()}, {"type": "text", "text": "Why?"}]}
    )
    out = processor.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True,
        processor_kwargs={"truncation": True, "max_length": 60},
    )  # fmt: skip
    assert len(out["input_ids"][0]) == 60 and processor.decode(out["input_ids"][0]).endswith("Why? ASSISTANT:")


def test_ragged_batch_error_names_the_quiet_padding_and_it_is_quiet(processor, caplog):
    import logging
    import warnings

    chats = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "What is one plus two?"}]]
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    with pytest.raises(UniMoEProcessingError, match=r"processor_kwargs=\{\"padding\": True\}.*logs no warning"):
        processor.apply_chat_template(chats, **kwargs)
    with pytest.raises(UniMoEProcessingError, match=r"`processor\(\.\.\., padding=True\)`"):
        processor(text=["Hi", "What is one plus two?"], return_tensors="pt")
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_propagation()  # transformers' own records reach caplog too
    try:
        with caplog.at_level(logging.DEBUG), warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(3):  # every batch of a training loop
                batch = processor.apply_chat_template(
                    chats, processor_kwargs={"padding": True}, return_assistant_tokens_mask=True, **kwargs
                )
                processor(text=["Hi", "What is one plus two?"], padding=True, return_tensors="pt")
    finally:
        transformers_logging.disable_propagation()
    assert batch["input_ids"].shape[0] == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("What number is said?", "speech"),
        ("Transcribe the speech.", "speech"),
        ("How many beeps are there?", "sound"),
        ("Is the tone high or low?", "sound"),
        ("What is this?", None),
        ("Say how many beeps you hear.", None),  # both: the question alone cannot tell
    ],
)
def test_audio_kind_for_question(question, kind):
    from modeling_unimoe.processing.processing_unimoe import audio_kind_for_question

    assert audio_kind_for_question(question) == kind


def _logged_warnings(caplog, call) -> list[str]:
    """The audio-kind warnings that `call` logs."""
    import logging

    from transformers.utils import logging as transformers_logging

    caplog.clear()
    transformers_logging.enable_propagation()  # transformers' own records reach caplog too
    try:
        with caplog.at_level(logging.WARNING):
            call()
    finally:
        transformers_logging.disable_propagation()
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "audio as" in r.getMessage()]


def test_audio_under_a_sound_question_warns_and_goes_to_speech_as_given(processor, caplog):
    beeps = sine(1.0)
    messages = _logged_warnings(
        caplog, lambda: processor(text="USER: <audio>\nHow many beeps are there? ASSISTANT:", audio=beeps)
    )
    assert messages == [
        'Sample 0 gives audio as <audio> (`audio=`, or {"type": "audio"} in a chat), which this model reads as '
        "speech (Whisper), but its text asks about a sound ('beeps'). For the sound tower (BEATs) pass it as <sound> "
        '(`sound=`, or {"type": "sound"} in a chat); if it is speech, ask what is said.'
    ]
    batch = processor(text="USER: <audio>\nHow many beeps are there? ASSISTANT:", audio=beeps)
    assert "input_features" in batch and "sound_features" not in batch  # kept as given: speech
    chat = [{"role": "user", "content": [{"type": "audio", "audio": beeps}, {"type": "text", "text": "Which tone?"}]}]
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True)
    messages = _logged_warnings(caplog, lambda: processor.apply_chat_template(chat, **kwargs))
    assert len(messages) == 1 and "asks about a sound ('tone')" in messages[0]


@pytest.mark.parametrize(
    ("variant", "text", "argument"),
    [
        ("all", "USER: <sound>\nHow many beeps are there? ASSISTANT:", "sound"),
        ("all", "USER: <audio>\nWhat number is said? ASSISTANT:", "audio"),
        ("sound_only", "USER: <audio>\nHow many beeps are there? ASSISTANT:", "audio"),  # `<audio>` is BEATs there
    ],
)
def test_no_audio_kind_warning_where_the_audio_goes_where_asked(variant, text, argument, caplog):
    variant_processor = tiny_processor(variant)
    assert _logged_warnings(caplog, lambda: variant_processor(text=text, **{argument: sine(1.0)})) == []
