# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Writing the processor side of a Hub folder (not uploaded itself).

    from modeling_unimoe.processing.export import save_tiny_processor, add_custom_pipeline
    model.save_pretrained(folder)                 # config.json, weights, modeling files
    save_tiny_processor(model.config, folder)     # tokenizer, processor_config.json, chat_template.jinja,
                                                  # the processor's Hub files (PROCESSOR_HUB_FILES)
    add_custom_pipeline(folder)                   # pipeline_unimoe.py + config.json `custom_pipelines`

`save_processor(config, tokenizer, folder, **settings)` does the same for any tokenizer (e.g. a converted model's LLaMA
tokenizer with `<image>`, `<audio>`, `<video>` added); `settings` are processor settings written into
processor_config.json (the converter passes the original's preprocessing: `ORIGINAL_PREPROCESSING`).
"""

import json
import shutil
from pathlib import Path

from transformers import WhisperFeatureExtractor

from .feature_extraction_unimoe import CHUNK_SAMPLES, CHUNK_SECONDS, SAMPLING_RATE
from .processing_unimoe import UniMoEProcessor, make_clip_image_processor
from .tiny_tokenizer import TINY_SPECIAL_TOKENS, build_tiny_tokenizer


PROCESSING_DIR = Path(__file__).parent
CHAT_TEMPLATE_FILE = PROCESSING_DIR / "chat_template.jinja"
PIPELINE_FILE = PROCESSING_DIR / "pipeline_unimoe.py"
PIPELINE_TASK = "unimoe-any-to-text"
# config.json entry declaring the pipeline (the file pipeline_unimoe.py must sit next to it)
CUSTOM_PIPELINES = {
    PIPELINE_TASK: {
        "impl": "pipeline_unimoe.UniMoEPipeline",
        "pt": ["AutoModelForCausalLM"],
        "tf": [],
        "type": "multimodal",
    }
}
# the processor's code in a Hub folder: processing_unimoe.py and the siblings it imports (`save_pretrained` copies them)
PROCESSOR_HUB_FILES = ("processing_unimoe.py", "feature_extraction_unimoe.py", "media_unimoe.py", "text_unimoe.py")
_SOUND_PLACEHOLDER_LINE = "{%- set sound_placeholder = '<sound>' -%}"
# The preprocessing the released Uni-MoE models were trained with (processor settings; the processor's defaults are
# the tiny model's): prompt text tokenized piece by piece between placeholders, speech cut into 480,001-sample pieces
# of which Whisper keeps 480,000, the last sound chunk padded by repeating its last sample. (Their limit of 20 sound
# chunks is the config's `max_sound_chunks`.)
ORIGINAL_PREPROCESSING = {
    "tokenize_text_pieces": True,
    "speech_chunk_stride": CHUNK_SAMPLES + 1,
    "sound_chunk_padding": "last_sample",
}


def chat_template_for(config, tokenizer=None) -> str:
    """chat_template.jinja for a model: `{"type": "sound"}` blocks render as `<sound>` in models with both a speech and
    a sound tower, and as the sound path's own placeholder (`<audio>` in the released audio variant) otherwise."""
    template = CHAT_TEMPLATE_FILE.read_text(encoding="utf-8")
    if _SOUND_PLACEHOLDER_LINE not in template:
        raise RuntimeError(f"{CHAT_TEMPLATE_FILE} lost its line {_SOUND_PLACEHOLDER_LINE!r}.")
    sound_id = getattr(config, "sound_token_id", None)
    has_speech = getattr(config, "speech_config", None) is not None
    if sound_id is not None and not has_speech and tokenizer is not None:
        placeholder = tokenizer.convert_ids_to_tokens(int(sound_id))
        template = template.replace(_SOUND_PLACEHOLDER_LINE, f"{{%- set sound_placeholder = '{placeholder}' -%}}")
    return template


def processor_from_config(config, tokenizer, chat_template=None, **settings) -> UniMoEProcessor:
    """The processor matching a `UniMoEConfig` (or any object with its attributes): placeholder strings come from the
    tokenizer at the config's token ids, the counts from the config, the image size from its vision config;
    `settings` override the processor's settings (`UniMoEProcessor` arguments)."""

    def token_of(token_id):
        return None if token_id is None else tokenizer.convert_ids_to_tokens(int(token_id))

    vision, speech = getattr(config, "vision_config", None), getattr(config, "speech_config", None)
    sound = getattr(config, "sound_config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config.text_config
    arguments = dict(
        image_processor=make_clip_image_processor(vision.image_size if vision is not None else 336),
        feature_extractor=WhisperFeatureExtractor(
            feature_size=speech.num_mel_bins if speech is not None else 80,
            sampling_rate=SAMPLING_RATE,
            chunk_length=getattr(config, "audio_chunk_seconds", CHUNK_SECONDS),
        ),
        tokenizer=tokenizer,
        chat_template=chat_template,
        image_token=token_of(config.image_token_id) or "<image>",
        video_token=token_of(config.video_token_id) or "<video>",
        audio_token=token_of(config.speech_token_id if speech is not None else config.sound_token_id) or "<audio>",
        sound_token=token_of(config.sound_token_id) if (speech is not None and sound is not None) else None,
        image_seq_length=config.image_seq_length,
        num_video_frames=config.num_video_frames,
        num_speech_query_tokens=config.num_speech_query_tokens if speech is not None else None,
        num_sound_query_tokens=config.num_sound_query_tokens if sound is not None else None,
        max_sound_chunks=config.max_sound_chunks,
        context_length=getattr(text_config, "max_position_embeddings", None),
    )
    return UniMoEProcessor(**{**arguments, **settings})


def build_processor(config, tokenizer, **settings) -> UniMoEProcessor:
    """The processor of a model config, with the chat template (also set on the tokenizer); `settings` override the
    processor's settings (`UniMoEProcessor` arguments, e.g. `ORIGINAL_PREPROCESSING`)."""
    template = chat_template_for(config, tokenizer)
    tokenizer.chat_template = template
    return processor_from_config(config, tokenizer, chat_template=template, **settings)


def save_processor(config, tokenizer, out_dir, **settings) -> UniMoEProcessor:
    """Write tokenizer files, processor_config.json (with the AutoProcessor auto_map and `settings`),
    chat_template.jinja and the processor's Hub files (`PROCESSOR_HUB_FILES`) into `out_dir`, so `AutoProcessor.from_pretrained(out_dir,
    trust_remote_code=True)` works."""
    processor = build_processor(config, tokenizer, **settings)
    UniMoEProcessor.register_for_auto_class("AutoProcessor")
    processor.save_pretrained(str(out_dir))
    return processor


def build_tiny_processor_tokenizer(config):
    """The tiny tokenizer, checked against the config's placeholder ids and context length."""
    text_config = config.get_text_config()
    tokenizer = build_tiny_tokenizer(model_max_length=text_config.max_position_embeddings)
    tokenizer.add_special_tokens({"additional_special_tokens": list(TINY_SPECIAL_TOKENS[3:])})
    if len(tokenizer) != text_config.vocab_size:
        raise ValueError(
            f"The tiny tokenizer has {len(tokenizer)} tokens but the config's vocab is {text_config.vocab_size}."
        )
    placeholders = set(TINY_SPECIAL_TOKENS[3:])
    for modality, token_id in config.placeholder_token_ids.items():
        if tokenizer.convert_ids_to_tokens(token_id) not in placeholders:
            raise ValueError(
                f"The {modality} placeholder id {token_id} is {tokenizer.convert_ids_to_tokens(token_id)!r} in the tiny "
                f"tokenizer, not one of the placeholders {sorted(placeholders)} (ids 3..6)."
            )
    return tokenizer


def save_tiny_processor(config, out_dir) -> UniMoEProcessor:
    """The processor files of the `tiny` preset (its own 512-token BPE) for `config`, into `out_dir`."""
    return save_processor(config, build_tiny_processor_tokenizer(config), out_dir)


def add_custom_pipeline(out_dir) -> None:
    """Copy pipeline_unimoe.py into `out_dir` and declare it in its config.json (`custom_pipelines`)."""
    out_dir = Path(out_dir)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["custom_pipelines"] = CUSTOM_PIPELINES
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    shutil.copyfile(PIPELINE_FILE, out_dir / PIPELINE_FILE.name)


__all__ = [
    "CUSTOM_PIPELINES",
    "ORIGINAL_PREPROCESSING",
    "PIPELINE_TASK",
    "PROCESSOR_HUB_FILES",
    "add_custom_pipeline",
    "build_processor",
    "chat_template_for",
    "processor_from_config",
    "save_processor",
    "save_tiny_processor",
]
