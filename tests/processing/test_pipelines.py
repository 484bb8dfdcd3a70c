"""The exported tiny folder with its processor: AutoProcessor with remote code (in a fresh process where this package
cannot be imported), the `image-text-to-text` pipeline and the custom `unimoe-any-to-text` pipeline."""

import json
import re
import subprocess
import sys

import pytest
import torch

from modeling_unimoe import UniMoEForCausalLM
from modeling_unimoe.processing.export import (
    CUSTOM_PIPELINES,
    PIPELINE_TASK,
    PROCESSOR_HUB_FILES,
    add_custom_pipeline,
    save_tiny_processor,
)
from tests.processing.processing_helpers import sine, tiny_config, write_audio, write_image, write_video


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """model.save_pretrained + the processor files + the custom pipeline, as hub_export.build writes them."""
    out = tmp_path_factory.mktemp("uni-moe-tiny")
    torch.manual_seed(0)
    model = UniMoEForCausalLM(tiny_config())
    model.save_pretrained(out)
    save_tiny_processor(model.config, out)
    add_custom_pipeline(out)
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    return {
        "image": write_image(root / "red.png"),
        "video": write_video(root / "clip.mp4", num_frames=10),
        "audio": write_audio(root / "speech.wav", sine(2.0, freq=300)),
        "sound": write_audio(root / "beeps.flac", sine(1.0, sr=44100, freq=2000), sr=44100, format="FLAC"),
    }


def chat(media):
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": media["image"]},
                {"type": "video", "path": media["video"]},
                {"type": "audio", "path": media["audio"]},
                {"type": "sound", "path": media["sound"]},
                {"type": "text", "text": "What do you hear?"},
            ],
        }
    ]


def test_folder_layout(folder):
    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "modeling_unimoe.py",
        "configuration_unimoe.py",
        *PROCESSOR_HUB_FILES,
        "pipeline_unimoe.py",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    } <= names
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_unimoe.UniMoEProcessor"}
    assert processor_config["image_seq_length"] == 36 and processor_config["num_sound_query_tokens"] == 8
    assert json.loads((folder / "config.json").read_text())["custom_pipelines"] == CUSTOM_PIPELINES
    # the processor's Hub files import nothing of this repository, only each other
    for name in PROCESSOR_HUB_FILES:
        code = (folder / name).read_text().split('"""', 2)[2]
        assert "modeling_unimoe" not in code, name
        siblings = {f"{sibling}.py" for sibling in re.findall(r"^from \.(\w+) import", code, re.MULTILINE)}
        assert siblings <= set(PROCESSOR_HUB_FILES), (name, siblings)


def test_image_text_to_text_pipeline(folder):
    from PIL import Image
    from transformers import pipeline

    pipe = pipeline("image-text-to-text", model=str(folder), trust_remote_code=True)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": Image.new("RGB", (40, 30), "red")}, {"type": "text", "text": "Hi"}],
        }
    ]
    out = pipe(text=messages, max_new_tokens=3, return_full_text=False)
    assert isinstance(out[0]["generated_text"], str)


def test_custom_pipeline_any_mix(folder, media):
    from transformers import pipeline

    pipe = pipeline(PIPELINE_TASK, model=str(folder), trust_remote_code=True)
    assert type(pipe).__name__ == "UniMoEPipeline"
    out = pipe(chat(media), max_new_tokens=3)
    assert isinstance(out["generated_text"], str) and out["input_text"] == chat(media)
    # a batch of chats, text-only and image-only
    chats = [
        [{"role": "user", "content": "How many shapes are there?"}],
        [{"role": "user", "content": [{"type": "image", "path": media["image"]}, {"type": "text", "text": "Color?"}]}],
    ]
    outs = pipe(chats, max_new_tokens=2)
    assert len(outs) == 2 and all(isinstance(o["generated_text"], str) for o in outs)
    # the task is the folder's only custom task: pipeline(model=...) finds it
    assert type(pipeline(model=str(folder), trust_remote_code=True)).__name__ == "UniMoEPipeline"


REMOTE_CHECK = r"""
import json, os, sys
from hub_export.check import block_local_package
block_local_package()
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoModelForCausalLM, AutoProcessor, pipeline

folder, media = sys.argv[1], json.loads(sys.argv[2])
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
messages = [{"role": "user", "content": [
    {"type": "image", "path": media["image"]}, {"type": "video", "path": media["video"]},
    {"type": "audio", "path": media["audio"]}, {"type": "sound", "path": media["sound"]},
    {"type": "text", "text": "What do you hear?"}]}]
batch = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                      return_tensors="pt")
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
pipe = pipeline("unimoe-any-to-text", model=folder, trust_remote_code=True)
reply = pipe(messages, max_new_tokens=3)["generated_text"]
torch.save({"batch": dict(batch), "generated": generated, "reply": reply}, sys.argv[3])
print("remote ok", type(processor).__name__, sorted(batch))
"""


def test_remote_code_in_a_fresh_process_matches_the_package(folder, media, tmp_path):
    """AutoProcessor from the folder alone (this package blocked from import) gives the same inputs as the package's
    processor, and the model generates from them."""
    result_file = tmp_path / "remote.pt"
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CHECK, str(folder), json.dumps(media), str(result_file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote ok UniMoEProcessor" in result.stdout
    remote = torch.load(result_file, weights_only=True)

    from modeling_unimoe.processing.processing_unimoe import UniMoEProcessor

    local = UniMoEProcessor.from_pretrained(folder)
    batch = local.apply_chat_template(
        chat(media), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert sorted(batch) == sorted(remote["batch"])
    for key, value in batch.items():
        torch.testing.assert_close(value, remote["batch"][key])
    model = UniMoEForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    torch.testing.assert_close(generated, remote["generated"])
    assert isinstance(remote["reply"], str)
