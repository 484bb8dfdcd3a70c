"""The fine-tuning recipes for plain transformers users (recipes/transformers/): `Trainer` + PEFT LoRA and trl's
`SFTTrainer`, run on a copy of the embedded tiny Hub folder in processes where this package cannot be imported, then
the merged folder they save, loaded as remote code by both pipelines."""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM
from modeling_unimoe.configuration_unimoe import PRESETS
from modeling_unimoe.processing.export import PROCESSOR_HUB_FILES
from tests.helpers import REPO, TINY_CHECKPOINT


RECIPES = REPO / "recipes" / "transformers"
# the Hub files as the sources have them now, copied over the embedded checkpoint's
HUB_SOURCES = [
    REPO / "modeling_unimoe" / "configuration_unimoe.py",
    REPO / "modeling_unimoe" / "modeling_unimoe.py",
    *(REPO / "processing" / name for name in PROCESSOR_HUB_FILES),
    REPO / "processing" / "pipeline_unimoe.py",
    REPO / "processing" / "chat_template.jinja",
]
# the weights LoRA adapts
LANGUAGE_MODEL_PROJECTION = (
    r"model\.language_model\.layers\.\d+\.(?:self_attn|mlp(?:\.experts\.\d+)?)\.\w+_proj\.weight"
)
# warnings the processor prints when it is given its settings the noisy way
PROCESSOR_WARNINGS = ("UniMoEProcessor ignores", "should be passed to `apply_chat_template` in `processor_kwargs`")

# Runs a recipe's main(argv) with this package blocked from import (as for a user who has only the Hub folder) and
# writes what it returns to a JSON file. argv: recipe script, result file, the recipe's arguments. The recipe's folder
# is on PYTHONPATH (`run_recipe`), as `python script.py` would put it on sys.path.
RUN_RECIPE = r"""
import json, os, runpy, sys
from hub_export.check import block_local_package
block_local_package()
os.environ["HF_HUB_OFFLINE"] = "1"
script, result_file = sys.argv[1], sys.argv[2]
result = runpy.run_path(script, run_name="recipe")["main"](sys.argv[3:])
with open(result_file, "w") as f:
    json.dump(result, f)
"""

# Loads a saved folder with this package blocked: both pipelines answer an image question, and from_pretrained takes
# the MoE settings as keyword arguments. argv: folder.
PIPELINES_CHECK = r"""
import json, os, sys
from hub_export.check import block_local_package
block_local_package()
os.environ["HF_HUB_OFFLINE"] = "1"
from PIL import Image, ImageDraw
from transformers import AutoModelForCausalLM, pipeline

folder = sys.argv[1]
image = Image.new("RGB", (48, 48), "white")
ImageDraw.Draw(image).rectangle((4, 20, 16, 32), fill="red")
messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": "Where is the square?"}]}]
result = {}
vlm = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
reply = vlm(text=messages, max_new_tokens=3, return_full_text=False)[0]["generated_text"]
result["image-text-to-text"] = [type(vlm).__name__, type(vlm.model).__module__, reply]
chat = pipeline("unimoe-any-to-text", model=folder, trust_remote_code=True)
reply = chat(messages, max_new_tokens=3)["generated_text"]
result["unimoe-any-to-text"] = [type(chat).__name__, type(chat.model).__module__, reply]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, output_router_logits=True,
                                             router_aux_loss_coef=0.02)
text_config = model.config.get_text_config()
result["kwargs"] = [model.config.output_router_logits, text_config.output_router_logits,
                    text_config.router_aux_loss_coef]
print("RESULT " + json.dumps(result))
"""


def recipe_module(name: str):
    """A module of recipes/transformers/, imported as its scripts import each other."""
    return importlib.import_module(name)


def run_blocked(code: str, *args, cwd, pythonpath=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(pythonpath)) if pythonpath else None
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def run_recipe(script: str, hub_folder: Path, out: Path, steps: int) -> tuple[dict, str]:
    """(what the recipe's main returns, its stderr)."""
    result_file = out.parent / f"{out.name}.json"
    args = ["--model", hub_folder, "--out", out, "--steps", steps]
    result = run_blocked(RUN_RECIPE, RECIPES / script, result_file, *args, cwd=out.parent, pythonpath=RECIPES)
    return json.loads(result_file.read_text()), result.stderr


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory) -> Path:
    """The embedded tiny Hub folder with the current Hub files."""
    folder = tmp_path_factory.mktemp("finetune") / "uni-moe-tiny"
    shutil.copytree(TINY_CHECKPOINT, folder)
    for source in HUB_SOURCES:
        shutil.copyfile(source, folder / source.name)
    return folder


@pytest.fixture(scope="module")
def trainer_run(hub_folder) -> tuple[dict, str, Path]:
    """The Trainer recipe, 20 steps: (its results, its stderr, the merged folder it saved)."""
    out = hub_folder.parent / "trainer-lora"
    results, stderr = run_recipe("trainer_lora.py", hub_folder, out, steps=20)
    return results, stderr, out


def test_trainer_recipe_loss_goes_down(trainer_run):
    results, stderr, _ = trainer_run
    before, after = results["eval_loss_before"], results["eval_loss_after"]
    assert after < 0.75 * before, f"eval loss {before:.4f} -> {after:.4f}"  # the checked-in model: 0.455 -> 0.307
    train_losses = [entry["loss"] for entry in results["log"] if "loss" in entry]
    assert len(train_losses) == 4 and train_losses[-1] < train_losses[0], train_losses
    # the collator passes its padding in processor_kwargs: no processor warning
    for warning in PROCESSOR_WARNINGS:
        assert warning not in stderr


def test_merged_folder_runs_both_pipelines_without_the_package(trainer_run, hub_folder, tmp_path):
    _, _, folder = trainer_run
    names = {path.name for path in folder.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "configuration_unimoe.py",
        "modeling_unimoe.py",
        "pipeline_unimoe.py",
        *PROCESSOR_HUB_FILES,
        "processor_config.json",
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names, sorted(names)
    config = json.loads((folder / "config.json").read_text())
    assert config["text_config"]["output_router_logits"] is False
    assert "pipeline_unimoe.py" in {
        entry["impl"].split(".")[0] + ".py" for entry in config["custom_pipelines"].values()
    }

    # merged: the base model's keys, no LoRA weights; the language model changed, towers and routers did not
    base, merged = load_file(hub_folder / "model.safetensors"), load_file(folder / "model.safetensors")
    assert merged.keys() == base.keys()
    changed = {key for key in base if not torch.equal(base[key], merged[key])}
    assert not {key for key in changed if not re.fullmatch(LANGUAGE_MODEL_PROJECTION, key)}, sorted(changed)
    layers = range(json.loads((hub_folder / "config.json").read_text())["text_config"]["num_hidden_layers"])
    for layer in layers:  # every attention changed, and some expert of every layer
        assert f"model.language_model.layers.{layer}.self_attn.q_proj.weight" in changed
        assert any(key.startswith(f"model.language_model.layers.{layer}.mlp.experts.") for key in changed)

    out = run_blocked(PIPELINES_CHECK, folder, cwd=tmp_path).stdout
    result = json.loads(out.split("RESULT ", 1)[1])
    replies = []
    for task, expected_class in (
        ("image-text-to-text", "ImageTextToTextPipeline"),
        ("unimoe-any-to-text", "UniMoEPipeline"),
    ):
        pipeline_class, model_module, reply = result[task]
        assert pipeline_class == expected_class and model_module.startswith("transformers_modules."), result[task]
        assert isinstance(reply, str) and reply.strip(), result[task]
        replies.append(reply.strip())
    assert replies[0] == replies[1]  # the same greedy reply through both pipelines
    assert result["kwargs"] == [True, True, 0.02]


def test_output_router_logits_adds_the_aux_losses(hub_folder):
    trainer_lora = recipe_module("trainer_lora")
    finetune_common = recipe_module("finetune_common")
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(hub_folder, trust_remote_code=True)
    batch = trainer_lora.ChatCollator(processor)([trainer_lora.to_chat(ex) for ex in finetune_common.toy_examples(4)])
    model = UniMoEForCausalLM.from_pretrained(hub_folder).eval()
    assert model.config.output_router_logits is False
    with torch.no_grad():
        plain = model(**batch)
    assert plain.aux_loss is None and plain.z_loss is None

    model.config.output_router_logits = True  # the top-level settings write the language model's config
    model.config.router_z_loss_coef = 1e-3
    text_config = model.config.get_text_config()
    assert text_config.output_router_logits is True and text_config.router_z_loss_coef == 1e-3
    with torch.no_grad():
        moe = model(**batch)
    assert moe.aux_loss > 0 and moe.z_loss > 0
    extra = model.config.router_aux_loss_coef * moe.aux_loss + model.config.router_z_loss_coef * moe.z_loss
    assert model.config.router_aux_loss_coef == 0.01
    assert torch.equal(moe.loss, plain.loss + extra), (moe.loss, plain.loss, extra)

    # the same settings as from_pretrained keyword arguments
    loaded = UniMoEForCausalLM.from_pretrained(hub_folder, output_router_logits=True, router_aux_loss_coef=0.02).eval()
    assert loaded.config.get_text_config().output_router_logits is True and loaded.config.router_aux_loss_coef == 0.02
    with torch.no_grad():
        weighted = loaded(**batch)
    assert torch.equal(weighted.loss, plain.loss + (0.02 * weighted.aux_loss + 0.0 * weighted.z_loss))


def test_lora_target_modules_adapt_the_language_model_only():
    from peft import LoraConfig, get_peft_model
    from torch import nn

    target_modules = recipe_module("finetune_common").TARGET_MODULES
    # every tower, and dense MLPs (odd layers) beside the MoE layers
    config = UniMoEConfig.from_preset("tiny", text_config={**PRESETS["tiny"]["text_config"], "moe_layers": "even"})
    model = UniMoEForCausalLM(config)
    linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    expected = {
        name for name in linear if name.startswith("model.language_model.layers.") and not name.endswith(".mlp.gate")
    }
    assert "model.language_model.layers.1.mlp.gate_proj" in expected  # a dense MLP
    assert "model.language_model.layers.0.mlp.experts.3.up_proj" in expected  # an expert
    assert "model.language_model.layers.0.mlp.gate" not in linear  # a router is no linear layer: never adapted
    not_adapted = {name.split(".")[1] for name in linear - expected if name.startswith("model.")}
    assert {"vision_tower", "vision_projector", "speech_tower", "speech_connector"} <= not_adapted
    assert {"sound_tower", "sound_connector"} <= not_adapted

    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=target_modules, task_type="CAUSAL_LM"))
    prefix = "base_model.model."
    adapted = {name[len(prefix) :] for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == expected, (sorted(adapted - expected), sorted(expected - adapted))
    layers = config.text_config.num_hidden_layers
    experts, moe_layers = config.text_config.num_experts, len(config.text_config.moe_layer_indices)
    assert len(adapted) == 4 * layers + 3 * (experts * moe_layers + (layers - moe_layers))
    trainable = {name for name, parameter in peft_model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_assistant_labels_cover_every_generated_token(hub_folder):
    """The collator's labels are exactly the tokens that follow the generation prompt: what the model generates."""
    trainer_lora = recipe_module("trainer_lora")
    finetune_common = recipe_module("finetune_common")
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(hub_folder, trust_remote_code=True)
    chat = trainer_lora.to_chat(finetune_common.toy_examples(1)[0])
    batch = trainer_lora.ChatCollator(processor)([chat])
    prompt = processor.apply_chat_template(
        chat["messages"][:1], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )["input_ids"][0]
    input_ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert torch.equal(input_ids[: len(prompt)], prompt)
    assert (labels[: len(prompt)] == -100).all()
    generated = processor.tokenizer.convert_ids_to_tokens(input_ids[len(prompt) :])
    unlabelled = [token for token, label in zip(generated, labels[len(prompt) :], strict=True) if label == -100]
    assert not unlabelled, f"generated tokens {generated}, of which {unlabelled} have no label"


def test_trl_recipe_runs_and_loss_goes_down(hub_folder):
    pytest.importorskip("trl", reason="the trl recipe needs trl (`pip install uni-moe[training]`)")
    out = hub_folder.parent / "trl-sft"
    results, stderr = run_recipe("trl_sft.py", hub_folder, out, steps=10)
    before, after = results["eval_loss_before"], results["eval_loss_after"]
    assert after < 0.7 * before, f"eval loss {before:.4f} -> {after:.4f}"
    logged = [entry for entry in results["log"] if "loss" in entry]
    assert len(logged) == 2 and logged[-1]["loss"] < logged[0]["loss"], logged
    assert all(entry["aux_loss"] > 0 for entry in logged)  # SFTTrainer adds the load-balancing loss
    for warning in PROCESSOR_WARNINGS:
        assert warning not in stderr
    assert (out / "pipeline_unimoe.py").is_file() and (out / "model.safetensors").is_file()
