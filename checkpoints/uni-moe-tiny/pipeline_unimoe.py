# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""`unimoe-any-to-text`: a transformers pipeline for chats that mix text, images, videos, speech and sounds.

Uploaded to the Hub next to the modeling files and declared in config.json under `custom_pipelines`; it imports only
torch, transformers and the standard library.

    chat = pipeline("unimoe-any-to-text", model="path/to/uni-moe", trust_remote_code=True)
    chat([{"role": "user", "content": [{"type": "audio", "path": "beeps.wav"}, {"type": "text", "text": "How many?"}]}])
    # -> [{"generated_text": "three", "input_text": [...]}]

Inputs: one chat (a list of {"role", "content"} messages whose content blocks are {"type": "text" | "image" | "video" |
"audio" | "sound", ...}) or a list of chats. Keyword arguments: `max_new_tokens`, `generate_kwargs` (passed to
`generate`), `processor_kwargs` (passed to the processor, e.g. {"sampling_rate": 8000, "short_video": "repeat"}) and
`return_full_text` (False by default: only the reply).
"""

from transformers import Pipeline


class UniMoEPipeline(Pipeline):
    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _pipeline_calls_generate = True

    def _sanitize_parameters(
        self, max_new_tokens=None, generate_kwargs=None, processor_kwargs=None, return_full_text=None, **kwargs
    ):
        if kwargs:
            raise TypeError(
                f"unimoe-any-to-text got unexpected arguments {sorted(kwargs)}; it takes max_new_tokens, "
                "generate_kwargs, processor_kwargs and return_full_text."
            )
        forward = {"generate_kwargs": dict(generate_kwargs or {})}
        if max_new_tokens is not None:
            forward["generate_kwargs"]["max_new_tokens"] = max_new_tokens
        preprocess = {"processor_kwargs": dict(processor_kwargs or {})}
        postprocess = {"return_full_text": bool(return_full_text)}
        return preprocess, forward, postprocess

    def __call__(self, inputs, **kwargs):
        is_one_chat = isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], dict)
        if not isinstance(inputs, (list, tuple)) or not inputs:
            raise ValueError(
                "unimoe-any-to-text takes a chat: a non-empty list of {'role', 'content'} messages (or a list of "
                f"chats), got {type(inputs).__name__}."
            )
        if is_one_chat:
            return super().__call__(_Chat(inputs), **kwargs)
        return super().__call__([_Chat(chat) for chat in inputs], **kwargs)

    def preprocess(self, chat, processor_kwargs=None):
        model_inputs = self.processor.apply_chat_template(
            chat.messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs=processor_kwargs or {},
        )
        if self.dtype is not None:
            model_inputs = model_inputs.to(dtype=self.dtype)
        model_inputs["chat"] = chat
        return model_inputs

    def _forward(self, model_inputs, generate_kwargs=None):
        chat = model_inputs.pop("chat")
        generate_kwargs = dict(generate_kwargs or {})
        if getattr(self, "generation_config", None) is not None and "generation_config" not in generate_kwargs:
            generate_kwargs["generation_config"] = self.generation_config
        prompt_length = model_inputs["input_ids"].shape[1]
        sequences = self.model.generate(**model_inputs, **generate_kwargs)
        return {"new_tokens": sequences[:, prompt_length:], "chat": chat}

    def postprocess(self, model_outputs, return_full_text=False):
        reply = self.processor.batch_decode(model_outputs["new_tokens"], skip_special_tokens=True)[0].strip()
        chat = model_outputs["chat"]
        if return_full_text:
            return {"generated_text": list(chat.messages) + [{"role": "assistant", "content": reply}]}
        return {"generated_text": reply, "input_text": chat.messages}


class _Chat:
    """Wraps one chat so the pipeline's batching treats it as one input."""

    def __init__(self, messages):
        for message in messages:
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise ValueError(f"Each chat message must be a dict with 'role' and 'content', got {message!r}.")
        self.messages = messages


__all__ = ["UniMoEPipeline"]
