# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Uni-MoE as an lmms-eval model: `--model uni_moe` (registered through the `lmms_eval.models` entry point).

    lmms-eval --model uni_moe --model_args pretrained=path/or/hub-id,max_new_tokens=original \\
        --tasks pope,ok_vqa_val2014 --batch_size 8 --output_path results/

The model and processor load through `AutoModelForCausalLM` / `AutoProcessor` with `trust_remote_code=True`. Each
request becomes one user message (its media as content blocks, then the task's text) rendered by the processor's chat
template, the original's vicuna_v1 format. Requests are batched per task (left padding), `--batch_size` at a time, in
document order. Decoding is greedy unless `do_sample=True`.

Media from a task's `doc_to_visual`: PIL images (or image files) are images; video files (or lists of frames) are
videos; `{"array", "sampling_rate"}` dicts (lmms-eval's audio format) and audio files are audio. Audio goes to the
speech path (Whisper) or the sound path (BEATs): a model with one audio tower uses it; a model with both uses the
dict's `"audio_kind"` key where there is one, else the `audio_kind` model argument ("speech" by default, "sound" for
sound-event tasks such as clotho_aqa).

Model arguments (`--model_args key=value,...`):
    pretrained: a local folder or a Hub id of a converted Uni-MoE checkpoint (required). revision: a Hub revision.
    dtype: "auto" (the checkpoint's), "float32", "bfloat16" or "float16".
    device: "cuda", "cuda:0", "cpu", ...; default: cuda when available, else cpu.
    load_in_4bit / load_in_8bit: quantize the language model's linear layers with bitsandbytes (the towers,
        connectors, routers and lm_head stay in `dtype`).
    max_new_tokens: "auto" (default: the task's `max_new_tokens` where its YAML sets one, else the original's value
        for the request's modality), "original" (always the original's value: `ORIGINAL_MAX_NEW_TOKENS`) or a number.
    do_sample (default False: greedy), temperature (with do_sample; default: the task's, else the original's 0.2).
    audio_kind: "speech" or "sound" for audio without an `"audio_kind"` key, in a model with both towers.
    system_prompt: replaces the vicuna_v1 system message. attn_implementation: "sdpa", "eager", ...
    use_cache (default True; the original generated without a KV cache, which gives the same tokens, slower).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from lmms_eval import utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger as eval_logger
from PIL import Image
from tqdm import tqdm


# The original's generation lengths (the authors' eval.py per data type): VQA and MMBench 512 (greedy); video, speech
# and everything else 1024; the audio variant's Clotho tasks 512.
ORIGINAL_MAX_NEW_TOKENS = {"image": 512, "video": 1024, "speech": 1024, "sound": 512, "text": 1024}
ORIGINAL_TEMPERATURE = 0.2  # the original's sampling temperature where it sampled
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg"}
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus", ".aac"}
AUDIO_KINDS = ("speech", "sound")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PLACEHOLDERS = re.compile(r"<(image|video|audio|sound)>\n?")


def _is_audio_dict(value) -> bool:
    return isinstance(value, dict) and value.get("array") is not None and value.get("sampling_rate") is not None


def media_block(visual, audio_kind: str, audio_block: dict[str, str]) -> tuple[dict, str]:
    """A chat content block for one item of `doc_to_visual`, and its modality ("image", "video", "speech", "sound").
    `audio_block` maps an audio kind to the block type that feeds it in this model."""
    if isinstance(visual, Image.Image):
        return {"type": "image", "image": visual.convert("RGB")}, "image"
    if _is_audio_dict(visual):
        kind = visual.get("audio_kind") or audio_kind
        if kind not in AUDIO_KINDS:
            raise ValueError(f"An audio item has audio_kind={kind!r}; expected one of {AUDIO_KINDS}.")
        block_type = audio_block[kind]
        array = np.asarray(visual["array"])
        return {"type": block_type, block_type: array, "sampling_rate": int(visual["sampling_rate"])}, kind
    if isinstance(visual, (str, Path)):
        suffix = Path(str(visual)).suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            return {"type": "video", "path": str(visual)}, "video"
        if suffix in AUDIO_SUFFIXES:
            return {"type": audio_block[audio_kind], "path": str(visual)}, audio_kind
        if suffix in IMAGE_SUFFIXES:
            return {"type": "image", "path": str(visual)}, "image"
        raise ValueError(
            f"A media path {str(visual)!r} has an unknown suffix {suffix!r}; expected an image "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}), video ({', '.join(sorted(VIDEO_SUFFIXES))}) or audio "
            f"({', '.join(sorted(AUDIO_SUFFIXES))}) file."
        )
    if isinstance(visual, (list, tuple)) and visual and all(isinstance(f, Image.Image) for f in visual):
        return {"type": "video", "video": [frame.convert("RGB") for frame in visual]}, "video"
    raise ValueError(
        f"doc_to_visual gave a {type(visual).__name__}; expected a PIL image, a list of PIL frames, an "
        "{'array', 'sampling_rate'} audio dict, or an image / video / audio file path."
    )


def request_messages(context: str, visuals, audio_kind: str, audio_block: dict[str, str], system_prompt=None):
    """The chat messages of one request, and the modality that sets its generation length (video before image
    before audio; "text" without media). The task's text loses any literal media placeholders: the chat template
    writes them, one per media block, in the original's order."""
    blocks, modalities = [], []
    for visual in visuals or []:
        if visual is None:
            continue
        block, modality = media_block(visual, audio_kind, audio_block)
        blocks.append(block)
        modalities.append(modality)
    text = _PLACEHOLDERS.sub("", context).strip()
    messages = [{"role": "user", "content": [*blocks, {"type": "text", "text": text}]}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    modality = next((m for m in ("video", "image", "speech", "sound") if m in modalities), "text")
    return messages, modality


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"Model argument {name}={value!r}; expected True or False.")


class UniMoE(lmms):
    """Uni-MoE (arXiv 2405.11273) for lmms-eval `generate_until` tasks: image, video, speech, sound and text."""

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        revision: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        load_in_4bit: bool = False,
        load_in_8bit: bool = False,
        max_new_tokens: int | str = "auto",
        do_sample: bool = False,
        temperature: float | None = None,
        audio_kind: str = "speech",
        system_prompt: str | None = None,
        attn_implementation: str | None = None,
        use_cache: bool = True,
        trust_remote_code: bool = True,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(
                f"Unknown model arguments for uni_moe: {sorted(kwargs)}. Known: pretrained, revision, device, dtype, "
                "load_in_4bit, load_in_8bit, max_new_tokens, do_sample, temperature, audio_kind, system_prompt, "
                "attn_implementation, use_cache."
            )
        if not pretrained:
            raise ValueError(
                "uni_moe needs `pretrained`: pass --model_args pretrained=<a local folder or Hub id of a converted "
                "Uni-MoE checkpoint>, e.g. pretrained=checkpoints/uni-moe-tiny."
            )
        from accelerate import Accelerator
        from transformers import AutoModelForCausalLM, AutoProcessor

        load_in_4bit, load_in_8bit = _as_bool("load_in_4bit", load_in_4bit), _as_bool("load_in_8bit", load_in_8bit)
        if load_in_4bit and load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit were both set; choose one of them (or neither).")
        if str(batch_size).startswith("auto"):
            raise ValueError(f"batch_size={batch_size!r}: uni_moe takes a fixed batch size; pass --batch_size N.")
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size={batch_size!r}; expected a positive integer.")
        if isinstance(max_new_tokens, str) and max_new_tokens not in ("auto", "original"):
            raise ValueError(f"max_new_tokens={max_new_tokens!r}; expected 'auto', 'original' or a positive integer.")
        if not isinstance(max_new_tokens, str) and (int(max_new_tokens) != max_new_tokens or max_new_tokens < 1):
            raise ValueError(f"max_new_tokens={max_new_tokens!r}; expected 'auto', 'original' or a positive integer.")
        if audio_kind not in AUDIO_KINDS:
            raise ValueError(f"audio_kind={audio_kind!r}; expected one of {AUDIO_KINDS}.")
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}; expected 'auto' or one of {sorted(DTYPES)}.")
        self.max_new_tokens = max_new_tokens
        self.do_sample = _as_bool("do_sample", do_sample)
        self.temperature = temperature
        self.audio_kind = audio_kind
        self.system_prompt = self._resolve_system_prompt(system_prompt) if system_prompt else None
        self.use_cache = _as_bool("use_cache", use_cache)

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self._device = torch.device(f"cuda:{accelerator.local_process_index}")
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._rank = accelerator.local_process_index
        self._world_size = accelerator.num_processes

        hub_kwargs = {"revision": revision, "trust_remote_code": _as_bool("trust_remote_code", trust_remote_code)}
        model_kwargs = dict(hub_kwargs, dtype=DTYPES.get(dtype, "auto"))
        if attn_implementation:
            model_kwargs["attn_implementation"] = attn_implementation
        if load_in_4bit or load_in_8bit:
            from transformers import BitsAndBytesConfig

            compute_dtype = DTYPES.get(dtype, torch.bfloat16 if self._device.type == "cuda" else torch.float32)
            model_kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=load_in_4bit,
                load_in_8bit=load_in_8bit,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=compute_dtype,
            )  # the model class's `_keep_in_fp32_modules` keeps its routers, towers and connectors unquantized
            model_kwargs["device_map"] = str(self._device)
        self._model = AutoModelForCausalLM.from_pretrained(pretrained, **model_kwargs).eval()
        if "quantization_config" not in model_kwargs:
            self._model.to(self._device)
        self.processor = AutoProcessor.from_pretrained(pretrained, **hub_kwargs)
        self._tokenizer = self.processor.tokenizer
        self._config = self._model.config

        text_config = self._config.get_text_config()
        self._max_length = getattr(text_config, "max_position_embeddings", None)
        has_speech = getattr(self._config, "speech_config", None) is not None
        has_sound = getattr(self._config, "sound_config", None) is not None
        # the block type whose placeholder feeds each audio kind's tower (`processor.audio_paths`); a model with one
        # audio tower takes every audio through `audio` blocks
        paths = self.processor.audio_paths
        self.audio_block = {
            kind: next((block for block, path in paths.items() if path == kind), "audio") for kind in AUDIO_KINDS
        }
        eval_logger.info(
            f"uni_moe: {pretrained} on {self._device} (speech tower: {has_speech}, sound tower: {has_sound}), "
            f"batch size {self.batch_size_per_gpu}, max_new_tokens={self.max_new_tokens}, "
            f"{'sampling' if self.do_sample else 'greedy'}"
        )

    @property
    def config(self):
        return self._config

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def model(self):
        return self._model

    @property
    def eot_token_id(self):
        return self.tokenizer.eos_token_id

    @property
    def max_length(self):
        return self._max_length

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._device

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "uni_moe implements generate_until only (the original evaluated every benchmark by generation); pick "
            "the generation variant of the task."
        )

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("uni_moe implements generate_until only; multi-round tasks are not supported.")

    def _generation_length(self, gen_kwargs: dict, modalities: list[str]) -> int:
        original = max(ORIGINAL_MAX_NEW_TOKENS[m] for m in modalities)
        if self.max_new_tokens == "original":
            return original
        if self.max_new_tokens == "auto":
            return int(gen_kwargs.get("max_new_tokens") or original)
        return int(self.max_new_tokens)

    def _sampling_kwargs(self, gen_kwargs: dict) -> dict:
        if not self.do_sample:
            return {"do_sample": False, "num_beams": 1}
        temperature = self.temperature or gen_kwargs.get("temperature") or ORIGINAL_TEMPERATURE
        sampling = {"do_sample": True, "temperature": float(temperature), "num_beams": gen_kwargs.get("num_beams", 1)}
        if gen_kwargs.get("top_p") is not None:
            sampling["top_p"] = gen_kwargs["top_p"]
        return sampling

    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        def group_key(args):
            # one task, split and set of generation arguments per batch
            return {"__task": args[4], "__split": args[5], **args[1]}

        collator = utils.Collator([request.args for request in requests], lambda args: args[3], group_key, True)
        progress = tqdm(total=len(requests), disable=(self.rank != 0), desc="Model Responding")
        results = []
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_gen_kwargs, doc_to_visuals, doc_ids, tasks, splits = zip(*chunk, strict=True)
            gen_kwargs = dict(all_gen_kwargs[0])
            until = gen_kwargs.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            conversations, modalities = [], []
            for context, doc_to_visual, doc_id, task, split in zip(
                contexts, doc_to_visuals, doc_ids, tasks, splits, strict=True
            ):
                visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                messages, modality = request_messages(
                    context, visuals, self.audio_kind, self.audio_block, self.system_prompt
                )
                conversations.append(messages)
                modalities.append(modality)
            batch = self.processor.apply_chat_template(
                conversations,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                processor_kwargs={"padding": True, "padding_side": "left"},
            ).to(self.device)
            for key, value in batch.items():  # media in the model's dtype (quantized: its compute dtype)
                if torch.is_floating_point(value):
                    batch[key] = value.to(self.model.dtype)
            output = self.model.generate(
                **batch,
                max_new_tokens=self._generation_length(gen_kwargs, modalities),
                use_cache=self.use_cache,
                **self._sampling_kwargs(gen_kwargs),
            )
            texts = self.tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for context, text in zip(contexts, texts, strict=True):
                for stop in until:
                    if stop:
                        text = text.split(stop)[0]
                text = text.strip()
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, all_gen_kwargs[0]), text)
                progress.update(1)
        progress.close()
        return collator.get_original(results)
