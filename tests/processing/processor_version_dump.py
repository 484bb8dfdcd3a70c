"""Dump what an exported folder's processor gives under the transformers of the running interpreter.

    python tests/processing/processor_version_dump.py FOLDER MEDIA_DIR OUT_DIR [CONVERTED]

FOLDER holds the Hub processor files (processor_config.json, tokenizer files, chat_template.jinja,
processing_unimoe.py and its siblings) and is loaded with `AutoProcessor.from_pretrained(FOLDER, trust_remote_code=True)`. MEDIA_DIR
holds red.png, clip.mp4, speech.wav and beeps.flac. Writes OUT_DIR/arrays.npz (every model input of every case, as
numpy) and OUT_DIR/strings.json (rendered prompts, decoded texts, tokens, error messages, versions; and the replies
of both pipelines when FOLDER is a whole model folder, with config.json). CONVERTED, when given, is a processor folder
as the converter writes it (a LLaMA SentencePiece tokenizer, the original's preprocessing: per-piece prompt ids,
480,001-sample speech pieces, soxr resampling): its prompt ids and speech features go into the dump too.
tests/processing/test_processing_versions.py runs it in each build/venvs/tf-* interpreter and compares the results with the main
interpreter's, exactly.

Imports nothing of this repository: it runs in interpreters where the package is not installed.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL
import tokenizers
import torch
import transformers
from PIL import Image
from transformers import AutoProcessor


SYSTEM_TEXTS = [
    "USER: Hello, wörld!  Two  spaces\tand a tab, ünïcödé 漢字 and an emoji 🙂. ASSISTANT:",
    "USER: What is 12 + 30? ASSISTANT: 42</s>",
    " leading space, <image> and <sound> written inline, </s> and <s> too",
    "",
]


def as_numpy(value):
    if isinstance(value, torch.Tensor):
        return value.numpy()
    return np.asarray(value)


def media_objects():
    """Inputs built in memory: the same numbers under any numpy version (integer generator output only)."""
    rng = np.random.default_rng(1234)
    gradient = (np.arange(60 * 80 * 3) % 256).astype(np.uint8).reshape(60, 80, 3)
    frames = [Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)) for _ in range(10)]
    speech = (rng.integers(-20000, 20000, 57330) / 32768.0).astype(np.float32)  # 1.3 s at 44.1 kHz
    sound = (rng.integers(-12000, 12000, 36000) / 32768.0).astype(np.float32)  # 4.5 s at 8 kHz: two 3 s chunks
    return {
        "image_pil": Image.fromarray(gradient),
        "image_array": rng.integers(0, 256, (50, 70, 3), dtype=np.uint8),
        "frames": frames,
        "speech": speech,
        "sound": sound,
    }


def calls(processor, media, objects):
    """name -> model inputs (BatchFeature) of each processor call."""
    image, video, speech, sound = (media[k] for k in ("image", "video", "audio", "sound"))
    out = {
        "text": processor(text=SYSTEM_TEXTS[:2], padding=True, return_tensors="pt"),
        "text_single": processor(text=SYSTEM_TEXTS[0], return_tensors="np"),
        "image_objects": processor(
            text="USER: <image>\n<image>\nWhich one? ASSISTANT:",
            images=[objects["image_pil"], objects["image_array"]],
            return_tensors="pt",
        ),
        "image_path": processor(text="USER: <image>\nColor? ASSISTANT:", images=image, return_tensors="pt"),
        "video_frames": processor(
            text="USER: <video>\nWhere? ASSISTANT:", videos=[objects["frames"]], return_tensors="pt"
        ),
        "video_path": processor(text="USER: <video>\nWhere? ASSISTANT:", videos=video, return_tensors="pt"),
        "speech_array": processor(
            text="USER: <audio>\nSaid? ASSISTANT:", audio=objects["speech"], sampling_rate=44100, return_tensors="pt"
        ),
        "speech_path": processor(text="USER: <audio>\nSaid? ASSISTANT:", audio=speech, return_tensors="pt"),
        "sound_array": processor(
            text="USER: <sound>\nHeard? ASSISTANT:",
            sound={"array": objects["sound"], "sampling_rate": 8000},
            return_tensors="pt",
        ),
        "sound_path": processor(text="USER: <sound>\nHeard? ASSISTANT:", sound=sound, return_tensors="pt"),
        "text_options": processor(
            text=SYSTEM_TEXTS[:2] + ["USER: <image>\nA <audio>\nB ASSISTANT:"],
            images=objects["image_array"],
            audio=objects["speech"],
            sampling_rate=44100,
            padding="max_length",
            max_length=80,
            truncation=True,
            padding_side="right",
            return_mm_token_type_ids=True,
            return_tensors="pt",
        ),
        "short_video_repeat": processor(
            text="<video>", videos=[objects["frames"][:3]], short_video="repeat", return_tensors="np"
        ),
        "batch_mixed": processor(
            text=["USER: <image>\nA <audio>\nB ASSISTANT:", "USER: <sound>\nonly a sound ASSISTANT:"],
            images=[[image], []],
            audio=[objects["speech"]],
            sound=[sound],
            sampling_rate=44100,
            padding=True,
            return_tensors="pt",
        ),
    }
    chat_paths = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": image},
                {"type": "video", "path": video},
                {"type": "audio", "path": speech},
                {"type": "sound", "path": sound},
                {"type": "text", "text": "What do you hear?"},
            ],
        }
    ]
    chat_objects = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe it."},
                {"type": "video", "video": objects["frames"]},
                {"type": "sound", "sound": {"array": objects["sound"], "sampling_rate": 8000}},
                {"type": "audio", "audio": objects["speech"], "sampling_rate": 44100},
                {"type": "image", "image": objects["image_array"]},
            ],
        }
    ]
    chat_turns = [
        {"role": "system", "content": "You count beeps."},
        {"role": "user", "content": [{"type": "sound", "path": sound}, {"type": "text", "text": "How many?"}]},
        {"role": "assistant", "content": "three"},
        {
            "role": "user",
            "content": [{"type": "image", "image": objects["image_pil"]}, {"type": "text", "text": "And?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "a gradient"}]},
    ]
    chat_kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    out["chat_paths"] = processor.apply_chat_template(chat_paths, **chat_kwargs)
    out["chat_objects"] = processor.apply_chat_template(chat_objects, **chat_kwargs)
    out["chat_batch"] = processor.apply_chat_template(
        [chat_paths, [{"role": "user", "content": "Text only."}], chat_objects],
        processor_kwargs={"padding": True},
        **chat_kwargs,
    )
    out["chat_masks"] = processor.apply_chat_template(
        chat_turns, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    rendered = {
        "chat_paths": processor.apply_chat_template(chat_paths, add_generation_prompt=True),
        "chat_objects": processor.apply_chat_template(chat_objects, add_generation_prompt=True),
        "chat_turns": processor.apply_chat_template(chat_turns),
        "tokenizer_chat_turns": processor.tokenizer.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in chat_turns], tokenize=False
        ),
    }
    return out, rendered, chat_paths


def pipelines(folder, chat_paths, objects):
    """The replies of `unimoe-any-to-text` (one chat, then a batch of two) and `image-text-to-text`."""
    from transformers import pipeline

    chat = pipeline("unimoe-any-to-text", model=folder, trust_remote_code=True)
    generate_kwargs = {"do_sample": False}
    one = chat(chat_paths, max_new_tokens=3, generate_kwargs=generate_kwargs)
    batch = chat([[{"role": "user", "content": "How many?"}], chat_paths], max_new_tokens=3)
    vision = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": objects["image_pil"]}, {"type": "text", "text": "Hi"}]}
    ]
    image_reply = vision(text=messages, max_new_tokens=3, return_full_text=False, generate_kwargs=generate_kwargs)
    return {
        "pipeline_class": type(chat).__name__,
        "any_to_text": one["generated_text"],
        "any_to_text_batch": [out["generated_text"] for out in batch],
        "image_text_to_text": image_reply[0]["generated_text"],
    }


def converted_calls(folder, media, objects):
    """name -> model inputs of a converted folder's processor (per-piece prompt ids, fast LLaMA tokenizer), and the
    rendered chat."""
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    image, speech = media["image"], media["audio"]
    raw = [
        "USER: <image>\n<audio>\nWhat is this? <video> and  this ASSISTANT:",
        " leading space <audio> trailing space ",
        "<video><image>\tüñï 漢字 🙂 12+30</s>USER: again",
    ]
    chat = [
        {"role": "user", "content": [{"type": "image", "path": image}, {"type": "text", "text": "Color?"}]},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": [{"type": "audio", "path": speech}, {"type": "text", "text": "Said?"}]},
        {"role": "assistant", "content": "a tone"},
    ]
    out = {
        "raw": processor(
            text=raw,
            images=[objects["image_pil"], objects["image_array"]],
            audio=[objects["speech"], objects["speech"]],
            videos=[objects["frames"][:8], objects["frames"][2:]],
            sampling_rate=44100,
            padding=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        ),
        "truncated": processor(
            text=raw[0], images=image, audio=speech, videos=[objects["frames"]], truncation=True, max_length=88,
            return_tensors="pt",
        ),
        "chat_masks": processor.apply_chat_template(
            chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
        ),
    }  # fmt: skip
    rendered = processor.apply_chat_template(chat)
    settings = [processor.tokenize_text_pieces, processor.speech_chunk_stride, processor.sound_chunk_padding]
    return out, {"rendered": rendered, "settings": settings}


def main(folder, media_dir, out_dir, converted=None):
    media_dir, out_dir = Path(media_dir), Path(out_dir)
    media = {
        "image": str(media_dir / "red.png"),
        "video": str(media_dir / "clip.mp4"),
        "audio": str(media_dir / "speech.wav"),
        "sound": str(media_dir / "beeps.flac"),
    }
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    objects = media_objects()
    outputs, rendered, chat_paths = calls(processor, media, objects)
    arrays = {f"{case}/{key}": as_numpy(value) for case, batch in outputs.items() for key, value in batch.items()}

    tokenizer = processor.tokenizer
    ids = outputs["chat_paths"]["input_ids"]
    batch_ids = outputs["chat_batch"]["input_ids"]
    strings = {
        "rendered": rendered,
        "decode": processor.decode(ids[0]),
        "decode_skip": processor.decode(ids[0], skip_special_tokens=True),
        "batch_decode_skip": processor.batch_decode(batch_ids, skip_special_tokens=True),
        "tokens": tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))),
        "encodings": [tokenizer(text)["input_ids"] for text in SYSTEM_TEXTS],
        "encodings_no_specials": [tokenizer.encode(text, add_special_tokens=False) for text in SYSTEM_TEXTS],
        "special_ids": [
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            tokenizer.unk_token_id,
        ],
        "padding_side": tokenizer.padding_side,
        "placeholder_ids": [
            processor.image_token_id,
            processor.video_token_id,
            processor.audio_token_id,
            processor.sound_token_id,
        ],  # fmt: skip
    }

    # errors: the same type and message everywhere
    failing = {
        "placeholders": lambda: processor(text="USER: <image><image> ASSISTANT:", images=objects["image_pil"]),
        "sampling_rate": lambda: processor(text="<audio>", audio=objects["speech"], sampling_rate=99),
        "too_long": lambda: processor(text="<image> " + "many words " * 1200, images=objects["image_pil"]),
        "truncation_cuts_media": lambda: processor(
            text="hello <image>", images=objects["image_pil"], truncation=True, max_length=10
        ),
        "bad_role": lambda: processor.apply_chat_template([{"role": "tool", "content": "x"}]),
    }
    strings["errors"] = {}
    for name, call in failing.items():
        try:
            call()
            strings["errors"][name] = None
        except Exception as error:
            strings["errors"][name] = f"{type(error).__name__}: {error}"

    # save_pretrained + AutoProcessor round trip: the reloaded processor gives the same inputs
    with tempfile.TemporaryDirectory() as saved:
        processor.save_pretrained(saved)
        reloaded = AutoProcessor.from_pretrained(saved, trust_remote_code=True)
        strings["reloaded_class"] = type(reloaded).__name__
        strings["reloaded_files"] = sorted(p.name for p in Path(saved).iterdir())
        again = reloaded.apply_chat_template(
            chat_paths, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        for key, value in again.items():
            arrays[f"roundtrip/{key}"] = as_numpy(value)
        strings["reloaded_rendered"] = reloaded.apply_chat_template(chat_paths, add_generation_prompt=True)

    if converted:
        converted_outputs, strings["converted"] = converted_calls(converted, media, objects)
        for case, batch in converted_outputs.items():
            for key, value in batch.items():
                arrays[f"converted/{case}/{key}"] = as_numpy(value)

    if (Path(folder) / "config.json").is_file():  # a whole model folder: both pipelines, 3 greedy tokens
        strings["pipelines"] = pipelines(folder, chat_paths, objects)

    versions = {
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "PIL": PIL.__version__,
        "processor": type(processor).__module__ + "." + type(processor).__name__,
        "image_processor": type(processor.image_processor).__name__,
        "tokenizer": type(tokenizer).__name__,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "arrays.npz", **arrays)
    (out_dir / "strings.json").write_text(
        json.dumps({"strings": strings, "versions": versions}, indent=1, ensure_ascii=False), encoding="utf-8"
    )
    print(f"dumped {len(arrays)} arrays with transformers {transformers.__version__}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
