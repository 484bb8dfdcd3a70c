"""Training: the collator's label masks, per-stage freezing, the stage-3 MoE assembly, recipes and grouping."""

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM
from modeling_unimoe.processing.export import build_processor, build_tiny_processor_tokenizer
from modeling_unimoe.training.collator import IGNORE_INDEX, UniMoECollator, record_modality, record_to_messages
from modeling_unimoe.training.stages import (
    apply_lora,
    build_moe_model,
    component_of,
    dense_config,
    freeze_for_stage,
    load_model,
    set_trainable,
)
from modeling_unimoe.training.synthetic import TASKS, load_split, make_example, write_split
from modeling_unimoe.training.train import ModalityGroupedSampler, expert_recipe, load_recipe, load_records
from tests.helpers import REPO


@pytest.fixture(scope="module")
def processor():
    config = UniMoEConfig.from_preset("tiny")
    return build_processor(config, build_tiny_processor_tokenizer(config))


@pytest.fixture(scope="module")
def dense_models():
    config = dense_config(UniMoEConfig.from_preset("tiny"))
    models = {}
    for seed, name in enumerate(("base", "vision", "speech", "sound", "text")):
        torch.manual_seed(seed)
        models[name] = UniMoEForCausalLM(config)
    return models


# ---------------------------------------------------------------------------------------------------------- collator


@pytest.mark.parametrize("task", TASKS)
def test_collator_labels_are_exactly_the_answer(processor, task):
    example = make_example(task, "train", 5)
    encoded = UniMoECollator(processor).encode(example)
    ids, labels = encoded["input_ids"], encoded["labels"]
    kept = labels != IGNORE_INDEX
    n = int(kept.sum())
    assert n >= 2 and kept[-n:].all() and not kept[:-n].any()  # one run: the answer closes the sequence
    assert labels[kept].tolist() == ids[-n:].tolist()
    # the answer, its </s>, and its leading space (a token of its own when " answer" is not one token)
    assert processor.tokenizer.decode(labels[kept]) == f" {example['answer']}</s>"
    # the prompt (system, question, every media placeholder) is all masked
    assert processor.tokenizer.decode(ids[:-n]).endswith("ASSISTANT:")
    assert encoded["modality"] == example["modality"]


def test_collator_pads_with_ignored_labels_and_concatenates_media(processor, tmp_path):
    write_split(tmp_path, "train", 1)
    rows = [load_split(tmp_path, "train")[i] for i in range(len(TASKS))]
    batch = UniMoECollator(processor)(rows)
    lengths = batch["attention_mask"].sum(1)
    assert int(lengths.max()) == batch["input_ids"].shape[1]
    for row, n in enumerate(lengths.tolist()):
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == processor.tokenizer.pad_token_id).all()
        answer = rows[row]["conversations"][1]["value"]
        assert processor.tokenizer.decode(batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]) == (
            f" {answer}</s>"
        )
    assert batch["pixel_values"].shape[0] == 3  # three image tasks
    assert batch["pixel_values_videos"].shape[:2] == (1, 8)
    assert batch["input_features"].shape[0] == 1  # speech: Whisper path
    assert batch["sound_features"].shape[0] == 2  # beeps and pitch: BEATs path
    assert [record_modality(row) for row in rows] == [make_example(t, "train", 0)["modality"] for t in TASKS]


def test_encoded_datasets_share_encodings_across_saved_processor_copies_only(processor, tmp_path):
    from modeling_unimoe import UniMoEProcessor
    from modeling_unimoe.training.collator import EncodedDataset

    write_split(tmp_path, "train", 1, tasks=["image_color", "sound_beeps"])
    rows = load_split(tmp_path, "train")
    first = EncodedDataset(rows, UniMoECollator(processor))
    encoded = [first[i] for i in range(len(rows))]
    processor.save_pretrained(tmp_path / "saved")  # a later stage loads the processor its predecessor saved
    again = EncodedDataset(rows, UniMoECollator(UniMoEProcessor.from_pretrained(tmp_path / "saved")))
    assert all(again[i] is encoded[i] for i in range(len(rows)))
    other = EncodedDataset(rows, UniMoECollator(processor, max_length=300))  # other settings: encoded anew
    assert other[0] is not encoded[0] and torch.equal(other[0]["input_ids"], encoded[0]["input_ids"])


def test_encoding_in_worker_processes_gives_the_same_encodings(processor, tmp_path):
    from modeling_unimoe.training.collator import _ENCODED, EncodedDataset

    write_split(tmp_path, "train", 2, tasks=["image_color", "video_direction", "sound_beeps", "speech_digit"])
    rows = load_split(tmp_path, "train")
    _ENCODED.clear()
    here = [EncodedDataset(rows, UniMoECollator(processor))[i] for i in range(len(rows))]
    _ENCODED.clear()
    dataset = EncodedDataset(rows, UniMoECollator(processor), eager=True, workers=2)
    assert len(dataset._keys) == len(rows)  # all encoded up front
    for mine, theirs in zip(here, (dataset[i] for i in range(len(rows))), strict=True):
        assert mine.keys() == theirs.keys() and mine["modality"] == theirs["modality"]
        for name, value in mine.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == theirs[name].dtype and torch.equal(value, theirs[name]), name


def test_encoding_store_serves_another_process_and_encodes_changed_media_anew(processor, tmp_path):
    from modeling_unimoe.training.collator import _ENCODED, EncodedDataset

    write_split(tmp_path, "train", 1, tasks=["image_color", "sound_beeps"])
    rows = load_split(tmp_path, "train")
    _ENCODED.clear()
    made = EncodedDataset(rows, UniMoECollator(processor), eager=True, workers=2, store=tmp_path / "encoded")
    made = [made[i] for i in range(len(rows))]
    assert len(list((tmp_path / "encoded").rglob("*.safetensors"))) == len(rows)

    class Refusing(UniMoECollator):
        def encode(self, record):
            raise AssertionError(f"encoded {record['id']} again")

    _ENCODED.clear()  # as in a new process: only the store has the encodings
    read = EncodedDataset(rows, Refusing(processor), store=tmp_path / "encoded")
    for mine, theirs in zip(made, (read[i] for i in range(len(rows))), strict=True):
        assert mine.keys() == theirs.keys() and mine["modality"] == theirs["modality"]
        for name, value in mine.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == theirs[name].dtype and torch.equal(value, theirs[name]), name

    in_memory = {**rows[0], "image": Image.new("RGB", (64, 64), (230, 30, 30))}  # no stable key: not stored
    assert "pixel_values" in EncodedDataset([in_memory], UniMoECollator(processor), store=tmp_path / "encoded")[0]
    assert len(list((tmp_path / "encoded").rglob("*.safetensors"))) == len(rows)

    image = next(i for i, row in enumerate(rows) if row.get("image"))
    Image.new("RGB", (64, 64), (30, 60, 230)).save(rows[image]["image"])  # the file is rewritten: encoded anew
    _ENCODED.clear()
    with pytest.raises(AssertionError, match=f"encoded {rows[image]['id']} again"):
        EncodedDataset(rows, Refusing(processor), store=tmp_path / "encoded")[image]


def test_record_to_messages_routes_sounds_and_speech(tmp_path):
    sound = {"id": "x", "voice": "a.wav", "audio_kind": "sound", "conversations": [
        {"from": "human", "value": "<audio>\nHow many beeps are there?"}, {"from": "gpt", "value": "two"}]}  # fmt: skip
    messages = record_to_messages(sound)
    assert messages[0]["content"][0] == {"type": "sound", "path": "a.wav"}
    assert messages[0]["content"][1]["text"] == "How many beeps are there?"
    assert record_to_messages({**sound, "audio_kind": "speech"})[0]["content"][0]["type"] == "audio"
    assert len(record_to_messages(sound, with_answer=False)) == 1


def test_model_loss_runs_on_a_collated_batch(processor):
    torch.manual_seed(0)
    model = UniMoEForCausalLM(UniMoEConfig.from_preset("tiny"))
    batch = UniMoECollator(processor)([make_example(t, "train", 1) for t in ("image_color", "text_add")])
    loss = model(**batch).loss
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------------------- freezing


def _trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_stage1_trains_exactly_the_connectors(dense_models):
    model = dense_models["base"]
    freeze_for_stage(model, 1)
    expected = {
        n
        for n, _ in model.named_parameters()
        if n.startswith(("model.vision_projector.", "model.speech_connector.", "model.sound_connector."))
    }
    assert expected and _trainable(model) == expected


def test_stage2_trains_ffn_and_its_modality_connector(dense_models):
    model = dense_models["base"]
    freeze_for_stage(model, 2, modalities=["speech"])
    names = _trainable(model)
    ffn = {n for n, _ in model.named_parameters() if ".mlp." in n and "language_model" in n}
    connector = {n for n, _ in model.named_parameters() if n.startswith("model.speech_connector.")}
    assert ffn and names == ffn | connector
    llm = [n for n in names if n.startswith(("model.language_model.", "lm_head."))]
    assert not any("self_attn" in n or "embed_tokens" in n or "lm_head" in n or "layernorm" in n for n in llm)
    assert not any("tower" in n for n in names)
    freeze_for_stage(model, 2, extra=["towers"], modalities=["image", "video"])
    names = _trainable(model)
    assert any(n.startswith("model.vision_tower.") for n in names)
    assert not any(n.startswith(("model.speech_", "model.sound_")) for n in names)


def test_every_parameter_has_a_component(dense_models):
    for name, _ in dense_models["base"].named_parameters():
        component_of(name)
    counts = set_trainable(dense_models["base"], ["llm"])
    assert set(counts) == {"attention", "ffn", "norms", "embeddings", "lm_head"}


# --------------------------------------------------------------------------------------------------- MoE assembly


def test_moe_assembly_copies_each_source_ffn_into_its_expert_slots(dense_models):
    sources = {name: dense_models[name] for name in ("vision", "speech", "sound", "text")}
    experts = ["vision", "speech", "vision", "base", "sound", "text"]
    moe = build_moe_model(dense_models["base"], sources, experts, moe_layers="even", num_experts_per_tok=2)
    text_config = moe.config.text_config
    assert text_config.num_experts == 6 and text_config.moe_layer_indices == [0, 2]
    state = moe.state_dict()
    for layer in range(text_config.num_hidden_layers):
        prefix = f"model.language_model.layers.{layer}.mlp."
        for proj in ("gate_proj", "up_proj", "down_proj"):
            if layer in (0, 2):
                for slot, source in enumerate(experts):
                    expected = dense_models[source].state_dict()[f"{prefix}{proj}.weight"]
                    assert torch.equal(state[f"{prefix}experts.{slot}.{proj}.weight"], expected)
            else:  # dense layers keep the base FFN
                assert torch.equal(
                    state[f"{prefix}{proj}.weight"], dense_models["base"].state_dict()[f"{prefix}{proj}.weight"]
                )
    base = dense_models["base"].state_dict()
    for name, value in state.items():
        component, part = component_of(name)
        if component in ("attention", "norms", "embeddings", "lm_head"):
            assert torch.equal(value, base[name]), name
        elif part is not None:  # towers and connectors come from the source named like their part
            source = {"vision": "vision", "speech": "speech", "sound": "sound"}[part]
            assert torch.equal(value, dense_models[source].state_dict()[name]), name
    # the dense source models are untouched by the copy
    moe.model.language_model.layers[0].mlp.experts[0].gate_proj.weight.data.add_(1.0)
    assert not torch.equal(
        moe.model.language_model.layers[0].mlp.experts[0].gate_proj.weight,
        dense_models["vision"].model.language_model.layers[0].mlp.gate_proj.weight,
    )


def test_stage3_lora_trains_routers_fully_and_lora_on_attention_and_experts(dense_models):
    moe = build_moe_model(
        dense_models["base"], {"vision": dense_models["vision"]}, ["vision", "base", "vision", "base"]
    )
    freeze_for_stage(moe, 3)
    assert {n for n in _trainable(moe)} == {f"model.language_model.layers.{i}.mlp.gate.weight" for i in range(4)}
    peft_model = apply_lora(moe, r=4, alpha=8, dropout=0.0)
    names = _trainable(peft_model)
    assert all(("lora_" in n) or ("mlp.gate.modules_to_save" in n) for n in names)
    assert sum("mlp.gate.modules_to_save" in n for n in names) == 4
    for target in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert sum(f"self_attn.{target}.lora_A" in n for n in names) == 4
    for proj in ("gate_proj", "up_proj", "down_proj"):
        assert sum(f"experts.3.{proj}.lora_A" in n for n in names) == 4
    assert not any("tower" in n or "connector" in n or "projector" in n or "lm_head" in n for n in names)


# ------------------------------------------------------------------------------------------- recipes and sampling


@pytest.mark.parametrize(
    "path", sorted((REPO / "recipes").glob("*/stage*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_recipes_parse_and_have_no_absolute_paths(path):
    text = path.read_text()
    assert "-m modeling_unimoe.training.train recipes/" in text.split("\nstage:")[0]  # launch command in the header
    recipe = load_recipe(path, ["training.max_steps=3"])
    assert recipe["training"]["max_steps"] == 3
    for line in text.splitlines():
        assert ": /" not in line and " /work" not in line, line
    if path.parent.name == "uni-moe" and recipe["stage"] == 3:
        assert recipe["training"]["learning_rate"] == 4e-5 and recipe["training"]["num_train_epochs"] == 2
        assert recipe["training"]["lr_scheduler_type"] == "cosine" and recipe["training"]["warmup_steps"] == 0.03
        assert recipe["training"]["weight_decay"] == 0 and recipe["max_length"] == 2048
        assert recipe["training"]["gradient_checkpointing"] is True
        assert recipe["lora"]["r"] == 8 and recipe["lora"]["alpha"] == 16 and recipe["lora"]["dropout"] == 0.05
        assert "towers" not in (recipe.get("extra_trainable") or [])


def test_load_records_keeps_the_first_max_per_task_records_of_each_task(tmp_path):
    write_split(tmp_path, "train", 3, seed=0, tasks=["image_color", "text_add"])
    everything = load_records({"path": str(tmp_path)})
    limited = load_records({"path": str(tmp_path), "max_per_task": {"text_add": 1}})
    assert limited["task"].count("image_color") == 3 and limited["task"].count("text_add") == 1
    first_text = next(row for row in everything if row["task"] == "text_add")
    assert [row for row in limited if row["task"] == "text_add"] == [first_text]
    assert load_records({"path": str(tmp_path), "max_per_task": 2})["task"].count("image_color") == 2
    with pytest.raises(
        ValueError, match=r"`data.max_per_task` must be a positive int or \{task: positive int\}; got 0"
    ):
        load_records({"path": str(tmp_path), "max_per_task": 0})


def test_stage2_expert_settings_override_the_recipe_key_by_key():
    recipe = {"stage": 2, "data": {"path": "d", "split": "train"}, "training": {"num_train_epochs": 10, "seed": 0}}
    spec = {"modalities": ["image"], "training": {"num_train_epochs": 7}, "data": {"max_per_task": {"image_color": 3}}}
    run, modalities, extra = expert_recipe(recipe, "vision", spec, ["towers"])
    assert run["training"] == {"num_train_epochs": 7, "seed": 0}
    assert run["data"] == {"path": "d", "split": "train", "max_per_task": {"image_color": 3}}
    assert (modalities, extra, run["stage"]) == (["image"], ["towers"], 2)
    assert recipe["training"]["num_train_epochs"] == 10 and "max_per_task" not in recipe["data"]
    assert expert_recipe(recipe, "text", ["text"], []) == (recipe, ["text"], [])
    with pytest.raises(ValueError, match=r"Stage-2 expert 'vision' has unknown keys \['epochs'\]; allowed: "):
        expert_recipe(recipe, "vision", {"modalities": ["image"], "epochs": 3}, [])


def test_luminance_patch_init_ties_the_first_channels_across_rgb_and_keeps_the_rest():
    torch.manual_seed(0)
    plain = load_model("preset:tiny:dense").model.vision_tower.get_input_embeddings().weight
    torch.manual_seed(0)
    model = load_model("preset:tiny:dense", luminance_patch_channels=32)
    tied = model.model.vision_tower.get_input_embeddings().weight
    torch.testing.assert_close(tied[:32], plain[:32, :1].expand(-1, 3, -1, -1) / 3**0.5, rtol=0, atol=0)
    torch.testing.assert_close(tied[32:], plain[32:], rtol=0, atol=0)
    # two patches with the same R + G + B (after normalisation): the same luminance channels, different others
    gray, red = torch.zeros(1, 3, 8, 8), torch.tensor([0.6, -0.3, -0.3]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    out = torch.nn.functional.conv2d(torch.cat([gray, red]), tied)
    torch.testing.assert_close(out[0, :32], out[1, :32], rtol=0, atol=1e-6)
    assert (out[0, 32:] - out[1, 32:]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"luminance_patch_channels must be an integer 0\.\.64 .* got 65\."):
        load_model("preset:tiny:dense", luminance_patch_channels=65)
    with pytest.raises(ValueError, match=r"apply to a `preset:` start only .* got init 'build/x'\."):
        load_model("build/x", luminance_patch_channels=32)


def test_modality_grouped_sampler_builds_single_modality_batches():
    modalities = ["image"] * 7 + ["speech"] * 5 + ["text"] * 3
    sampler = ModalityGroupedSampler(modalities, batch_size=4, seed=1)
    order = list(sampler)
    assert len(order) == len(sampler) == 8 + 8 + 4
    batches = [order[i : i + 4] for i in range(0, len(order), 4)]
    assert all(len({modalities[i] for i in batch}) == 1 for batch in batches)
    assert set(order) == set(range(len(modalities)))
    assert order == list(ModalityGroupedSampler(modalities, batch_size=4, seed=1))
    sampler.set_epoch(1)
    assert list(sampler) != order


@pytest.mark.parametrize(
    "trainable, modalities",
    [(["towers"], None), (["towers"], ["speech"]), (["towers"], ["text"]), (["towers:sound"], ["speech"]),
     (["towers:sound", "ffn"], ["sound", "image"]), ([], ["image"])],
)  # fmt: skip
def test_trained_parts_are_the_towers_set_trainable_trains(trainable, modalities):
    from modeling_unimoe.training.stages import component_of, trained_parts

    model = UniMoEForCausalLM(UniMoEConfig.from_preset("tiny"))
    set_trainable(model, trainable, modalities)
    trained = {component_of(n)[1] for n, p in model.named_parameters() if p.requires_grad and "_tower." in n}
    assert trained_parts(trainable, modalities) == trained


def test_dense_comparison_trains_the_towers_the_experts_train():
    from modeling_unimoe.training.compare import dense_recipe
    from modeling_unimoe.training.tiny import distribution_settings, stage_recipes

    for distribution, towers in (("standard", ["towers:sound", "towers:speech"]), ("wide", ["towers:speech"])):
        stage2 = stage_recipes(Path("work"), overrides=distribution_settings(distribution)[1])[1]
        recipe = dense_recipe(Path("work"), 10, stage2)
        assert recipe["extra_trainable"] == [*towers, "attention"] and recipe["training"]["max_steps"] == 10
        assert recipe["experts"] == {"dense": ["image", "video", "speech", "sound", "text"]}


def test_cached_frozen_towers_give_the_same_outputs_and_restore_the_towers():
    from modeling_unimoe.training.tower_cache import cached_frozen_towers
    from tests.helpers import media_prompt

    config = UniMoEConfig.from_preset("tiny")
    torch.manual_seed(0)
    model = UniMoEForCausalLM(config).eval()
    set_trainable(model, ["connectors", "towers:speech"])  # vision and sound towers frozen
    inputs = media_prompt(config)
    assert {"pixel_values", "pixel_values_videos", "input_features", "sound_features"} <= set(inputs)
    with torch.no_grad():
        reference = model(**inputs).logits
        with cached_frozen_towers(model) as cached:
            assert cached == ["sound_tower", "vision_tower"]
            first, second = model(**inputs).logits, model(**inputs).logits
    assert torch.equal(first, reference) and torch.equal(second, reference)
    assert type(model.model.sound_tower).__name__ == "UniMoEBEATsModel"
    assert type(model.model.vision_tower).__name__ == "CLIPVisionModel"


def test_tiny_data_of_the_wide_distribution_and_a_folder_of_another_refused(tmp_path):
    from modeling_unimoe.training import tiny

    sizes = {name: 2 for name in tiny.TRAIN_PER_TASK}
    data = tiny.write_data(tmp_path / "data", train_per_task=sizes, test_per_task=2, log=lambda _: None,
                           distribution="wide")  # fmt: skip
    assert (data / "distribution.txt").read_text() == "wide\n"
    records = {record["id"]: record for record in load_split(data, "train", absolute_paths=False)}
    assert len(records) == 2 * len(TASKS)
    image = Image.open(data / records["train-image_shape-00001"]["image"])
    assert image.size == make_example("image_shape", "train", 1, distribution="wide")["image"].size != (64, 64)
    message = f"{data} holds data of the 'wide' distribution, but 'standard' was asked for."
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny.write_data(data, train_per_task=sizes, test_per_task=2, log=lambda _: None)
    with pytest.raises(ValueError, match=re.escape("Unknown distribution 'narrow'; expected one of standard, wide.")):
        tiny.write_data(tmp_path / "other", distribution="narrow")
