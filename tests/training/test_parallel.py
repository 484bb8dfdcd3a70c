"""Across processes: transformers' tensor-parallel plan (torchrun, gloo), FSDP2 through accelerate (stage-3 LoRA
training, export, SIGKILL + resume) and the DeepSpeed ZeRO-3 accelerate config, all on CPU.

FSDP on CPU: accelerate only turns `distributed_type: FSDP` on for accelerator processes (its AcceleratorState
promotes MULTI_GPU / MULTI_XPU / ... to FSDP, never MULTI_CPU, and silently trains with DDP instead). torch's FSDP2
itself shards and trains on CPU with gloo. The FSDP tests' driver therefore sets the distributed type to FSDP after
accelerate picked MULTI_CPU; everything else (accelerate's FSDP2 wrapping from the config file, Trainer's sharded
checkpoints and their resume, the gathering export) is the code a GPU run goes through.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM
from modeling_unimoe.training.stages import dense_config
from modeling_unimoe.training.synthetic import write_split
from tests.helpers import REPO, media_prompt
from tests.training.test_training_resume import TASKS, _free_port


VENVS = REPO / "build" / "venvs"
ACCELERATE_CONFIGS = REPO / "recipes" / "accelerate"


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               CUDA_VISIBLE_DEVICES="")  # fmt: skip
    env.pop("UNIMOE_KILL_AT_STEP", None)
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------------- tensor parallel


def test_tp_plan_covers_attention_every_expert_and_the_head_and_leaves_routers_replicated():
    torch.manual_seed(0)
    model = UniMoEForCausalLM(UniMoEConfig.from_preset("tiny", text_config={**_tiny_text(), "moe_layers": "even"}))
    plan = model.tp_plan
    assert plan["lm_head"] == "colwise_rep"

    def style(name):
        generic = name
        for part in name.split("."):
            if part.isdigit():
                generic = generic.replace(f".{part}.", ".*.", 1)
        return plan.get(generic)

    layers = model.model.language_model.layers
    for index, layer in enumerate(layers):
        prefix = f"model.language_model.layers.{index}."
        for proj in ("q_proj", "k_proj", "v_proj"):
            assert style(f"{prefix}self_attn.{proj}") == "colwise"
        assert style(f"{prefix}self_attn.o_proj") == "rowwise"
        if layer.is_moe:
            assert style(f"{prefix}mlp.gate") is None  # the router: replicated
            for expert in range(len(layer.mlp.experts)):
                assert style(f"{prefix}mlp.experts.{expert}.gate_proj") == "colwise"
                assert style(f"{prefix}mlp.experts.{expert}.up_proj") == "colwise"
                assert style(f"{prefix}mlp.experts.{expert}.down_proj") == "rowwise"
        else:
            assert (style(f"{prefix}mlp.gate_proj"), style(f"{prefix}mlp.down_proj")) == ("colwise", "rowwise")
    assert not any(key.startswith(("model.vision_tower", "model.speech", "model.sound")) for key in plan)


def _tiny_text():
    from modeling_unimoe.configuration_unimoe import PRESETS

    return dict(PRESETS["tiny"]["text_config"])


@pytest.fixture(scope="module")
def tp_folder(tmp_path_factory):
    """The tiny preset with random weights as a Hub folder, and a prompt with every modality."""
    work = tmp_path_factory.mktemp("tp")
    config = UniMoEConfig.from_preset("tiny")
    torch.manual_seed(0)
    UniMoEForCausalLM(config).save_pretrained(work / "model")
    torch.save(media_prompt(config), work / "inputs.pt")
    return work


def _run_tensor_parallel(work: Path, python: Path, name: str) -> tuple[dict, dict]:
    out = work / f"{name}.json"
    command = [str(python), "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(_free_port()), str(REPO / "tests" / "training" / "parallel_tp_worker.py"), str(work / "model"),
               str(work / "inputs.pt"), str(out)]  # fmt: skip
    env = _env(PYTHONPATH="", HF_HUB_OFFLINE="1")  # remote code from the folder, not the installed package
    result = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text()), torch.load(str(out) + ".pt", weights_only=True)


# transformers 4.57 and 5.0 apply the language model's plan but leave lm_head whole on every rank
HEAD_REPLICATED = {"4.57.6", "5.0.0"}


def _assert_tensor_parallel_matches_one_process(report, tensors, head_sharded=True):
    assert report["world_size"] == 2
    # fp32: the two ranks' partial sums are added in another order than one process adds them
    torch.testing.assert_close(tensors["logits"], tensors["reference_logits"], rtol=0, atol=1e-5)
    assert report["tokens"] == report["reference_tokens"] and len(report["tokens"]) == 8
    shapes = report["local_shapes"]
    prefix = "model.language_model.layers.0."
    # tiny: hidden 64, 4 heads of 16, intermediate 176, vocab 512: every rank holds half of each
    assert shapes[f"{prefix}self_attn.q_proj.weight"] == [32, 64]
    assert shapes[f"{prefix}self_attn.o_proj.weight"] == [64, 32]
    for expert in range(4):
        assert shapes[f"{prefix}mlp.experts.{expert}.gate_proj.weight"] == [88, 64]
        assert shapes[f"{prefix}mlp.experts.{expert}.down_proj.weight"] == [64, 88]
    assert shapes[f"{prefix}mlp.gate.weight"] == [4, 64]  # router replicated
    assert shapes["lm_head.weight"] == ([256, 64] if head_sharded else [512, 64])


def test_tensor_parallel_on_two_processes_gives_the_logits_and_tokens_of_one(tp_folder):
    report, tensors = _run_tensor_parallel(tp_folder, Path(sys.executable), "main")
    _assert_tensor_parallel_matches_one_process(report, tensors)


def _other_versions():
    from tests.compat.venvs import MATRIX

    return sorted(MATRIX)


@pytest.mark.slow
@pytest.mark.parametrize("version", _other_versions())
def test_tensor_parallel_plan_works_on_other_transformers_versions(tp_folder, version):
    python = VENVS / f"tf-{version}" / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{python} is missing (make compat-venvs makes it)")
    report, tensors = _run_tensor_parallel(tp_folder, python, f"tf-{version}")
    _assert_tensor_parallel_matches_one_process(report, tensors, head_sharded=version not in HEAD_REPLICATED)


# ------------------------------------------------------------------------------------------------------------ FSDP

FSDP_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from accelerate.state import AcceleratorState, DistributedType, PartialState
    from transformers import TrainerCallback
    from modeling_unimoe.training import train

    # accelerate keeps CPU processes on MULTI_CPU (DDP) even with an FSDP config: switch them to FSDP
    accelerator_state_init = AcceleratorState.__init__
    def fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
    AcceleratorState.__init__ = fsdp_on_cpu

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(os.environ["UNIMOE_KILL_AT_STEP"]):
                os.kill(os.getpid(), signal.SIGKILL)

    if os.environ.get("UNIMOE_KILL_AT_STEP"):
        trainer_init = train.UniMoETrainer.__init__
        def with_kill(self, *args, **kwargs):
            trainer_init(self, *args, **kwargs)
            self.add_callback(Kill())
        train.UniMoETrainer.__init__ = with_kill
    if os.environ.get("UNIMOE_EXPECT_FSDP"):
        prepare = train.UniMoETrainer.train
        def checked(self, *args, **kwargs):
            assert self.is_fsdp_enabled and self.accelerator.is_fsdp2, self.accelerator.distributed_type
            return prepare(self, *args, **kwargs)
        train.UniMoETrainer.train = checked
    train.main(sys.argv[1:])
    """
)


@pytest.fixture(scope="module")
def fsdp_work(tmp_path_factory):
    """Random dense 'stage-1' and 'stage-2' folders and a small data split (8 records)."""
    work = tmp_path_factory.mktemp("fsdp")
    config = dense_config(UniMoEConfig.from_preset("tiny"))
    from modeling_unimoe.processing.export import save_tiny_processor

    for seed, name in enumerate(("base", "vision", "text")):
        torch.manual_seed(seed)
        UniMoEForCausalLM(config).save_pretrained(work / name)
        save_tiny_processor(config, work / name)
    write_split(work / "data", "train", 4, tasks=TASKS)
    (work / "driver.py").write_text(FSDP_DRIVER)
    return work


def _stage3_recipe(work: Path, name: str, per_device: int) -> Path:
    recipe = {
        "stage": 3,
        "moe": {
            "base": str(work / "base"),
            "sources": {"vision": str(work / "vision"), "text": str(work / "text")},
            "experts": ["vision", "text", "base", "vision"],
            # the load-balancing loss is a statistic of each process's batch: 0 here, so that 2 half batches and
            # one whole batch have the same loss
            "router_aux_loss_coef": 0.0,
        },
        # no LoRA dropout: its masks depend on each process's RNG stream
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"path": str(work / "data"), "split": "train"},
        "group_by_modality": True,
        "output_dir": str(work / name),
        "training": {
            "seed": 0,
            "per_device_train_batch_size": per_device,
            "max_steps": 6,
            "learning_rate": 5e-3,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 1,
            "save_strategy": "steps",
            "save_steps": 2,
            "logging_steps": 1,
        },
    }
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(recipe))
    return path


def _launch_fsdp(work: Path, recipe: Path, *overrides, kill_at=None):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ACCELERATE_CONFIGS / "fsdp2.yaml"), "--num_processes", "2", "--mixed_precision", "no",
               "--main_process_port", str(_free_port()), str(work / "driver.py"), str(recipe), *overrides]  # fmt: skip
    extra = {"UNIMOE_EXPECT_FSDP": "1"}
    if kill_at is not None:
        extra["UNIMOE_KILL_AT_STEP"] = str(kill_at)
    return subprocess.run(command, env=_env(**extra), cwd=work, capture_output=True, text=True, timeout=600)


def _losses(folder: Path) -> list[float]:
    state = json.loads((folder / "checkpoint-6" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_fsdp_stage3_matches_one_process_and_resumes_after_sigkill(fsdp_work):
    work = fsdp_work
    one = subprocess.run([sys.executable, str(work / "driver.py"), str(_stage3_recipe(work, "one", per_device=2))],
                         env=_env(), cwd=work, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    fsdp = _launch_fsdp(work, _stage3_recipe(work, "fsdp", per_device=1))
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]

    # sharded checkpoints (torch.distributed.checkpoint), and a normal Hub folder exported from the shards
    assert (work / "fsdp" / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()
    assert not (work / "one" / "checkpoint-2" / "pytorch_model_fsdp_0").exists()
    reloaded = UniMoEForCausalLM.from_pretrained(work / "fsdp")
    assert reloaded.config.text_config.num_experts == 4 and not reloaded.config.text_config.output_router_logits
    assert not any("lora_" in name or "modules_to_save" in name for name, _ in reloaded.named_parameters())

    # the same 6 global batches: the same losses and the same merged weights (fp32; seen: losses equal to 1e-6,
    # weights to 3e-8, while the 6 steps move the LoRA-merged and router weights by up to 1e-2)
    torch.testing.assert_close(torch.tensor(_losses(work / "fsdp")), torch.tensor(_losses(work / "one")),
                               rtol=0, atol=1e-5)  # fmt: skip
    one_weights, fsdp_weights = (
        load_file(work / "one" / "model.safetensors"),
        load_file(work / "fsdp" / "model.safetensors"),
    )
    assert one_weights.keys() == fsdp_weights.keys()
    for key in one_weights:
        torch.testing.assert_close(fsdp_weights[key], one_weights[key], rtol=0, atol=1e-6, msg=key)
    base = load_file(work / "base" / "model.safetensors")
    q_proj = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert (one_weights[q_proj] - base[q_proj]).abs().max() > 1e-4  # LoRA was trained and merged

    # SIGKILL after step 5 (checkpoints 2 and 4 written), then resume from checkpoint-4 under FSDP
    recipe = _stage3_recipe(work, "killed", per_device=1)
    killed = _launch_fsdp(work, recipe, kill_at=5)
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-3000:]
    assert sorted(p.name for p in (work / "killed").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (work / "killed" / "model.safetensors").exists()
    resumed = _launch_fsdp(work, recipe, "resume_from_checkpoint=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (resumed.stdout + resumed.stderr).count("{'loss'") == 2  # steps 5 and 6 only (two processes, one logs)
    assert _losses(work / "killed") == _losses(work / "fsdp")
    killed_weights = load_file(work / "killed" / "model.safetensors")
    for key in fsdp_weights:
        torch.testing.assert_close(killed_weights[key], fsdp_weights[key], rtol=0, atol=0, msg=key)


# ---------------------------------------------------------------------------------------------- accelerate configs


def _accelerate_env(config_file: Path) -> dict:
    """The environment `accelerate launch --config_file config_file` gives its processes, as accelerate's own launcher
    builds it (`launch_command`); nothing is started."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    args, defaults, mp_from_config_flag = _validate_launch_command(args)
    if not args.use_deepspeed:
        return prepare_multi_gpu_env(args)
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config_flag else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    return prepare_deepspeed_cmd_env(args)[1]


def test_fsdp_accelerate_config_is_full_shard_fsdp2_with_mixed_precision():
    env = _accelerate_env(ACCELERATE_CONFIGS / "fsdp2.yaml")
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "true"  # full shard
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP" and "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_fsdp_wrap_units_are_the_decoder_layers_and_the_tower_layers():
    """With no class list in the config, accelerate wraps the model's `_no_split_modules` that it has."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from modeling_unimoe.training.stages import apply_lora, freeze_for_stage

    torch.manual_seed(0)
    model = UniMoEForCausalLM(UniMoEConfig.from_preset("tiny"))
    freeze_for_stage(model, 3)
    model = apply_lora(model, r=4, alpha=8, dropout=0.0)  # a PeftModel exposes the same `_no_split_modules`
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = {type(module).__name__ for module in model.modules() if policy(module)}
    # CLIPVisionEmbeddings: CLIP's own `_no_split_modules`, which transformers adds to the model's
    assert wrapped == {"UniMoEDecoderLayer", "CLIPEncoderLayer", "CLIPVisionEmbeddings", "WhisperEncoderLayer",
                       "WhisperDecoderLayer", "Blip2QFormerLayer", "UniMoEBEATsEncoderLayer"}  # fmt: skip
    # tiny: 4 decoder layers, 2 layers in each of CLIP, the Whisper encoder and decoder, the Q-Former and BEATs
    assert sum(policy(module) for module in model.modules()) == 4 + 2 + 1 + 2 + 2 + 2 + 2


def test_deepspeed_zero3_accelerate_config_is_accepted(monkeypatch):
    """accelerate's launcher and its DeepSpeed plugin read the config (DeepSpeed itself is not installed here)."""
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.dataclasses import get_module_class_from_name

    env = _accelerate_env(ACCELERATE_CONFIGS / "deepspeed_zero3.yaml")
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for name, value in env.items():
        if name.startswith("ACCELERATE_"):
            monkeypatch.setenv(name, value)
    plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.zero_stage == 3 and zero["stage"] == 3
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # the stage output is gathered on save
    assert zero["offload_param"]["device"] == "none" and zero["offload_optimizer"]["device"] == "none"
    # the MoE leaf modules accelerate hands to deepspeed.utils.set_z3_leaf_modules exist in the model
    assert env["ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES"] == "UniMoESparseMoeBlock"
    model = UniMoEForCausalLM(UniMoEConfig.from_preset("tiny"))
    assert get_module_class_from_name(model, "UniMoESparseMoeBlock").__name__ == "UniMoESparseMoeBlock"


def test_recipes_carry_a_launch_command_per_engine():
    for path in sorted((REPO / "recipes" / "uni-moe").glob("stage*.yaml")):
        header = path.read_text().split("\nstage:")[0]
        for config in ("fsdp2.yaml", "deepspeed_zero3.yaml"):
            assert f"--config_file recipes/accelerate/{config}" in header and path.name in header, (path, config)
        assert "torchrun" not in header or "tp_plan" in header


# ------------------------------------------------------------------------------------------------------ memory plan


def test_memory_plan_counts_agree_with_the_model_and_peft():
    from benchmarks.memory_plan import activation_bytes_per_token, count, plan
    from modeling_unimoe.training.stages import apply_lora, freeze_for_stage

    tiny = count("tiny")
    torch.manual_seed(0)
    model = UniMoEForCausalLM(UniMoEConfig.from_preset("tiny"))
    assert tiny["counts"]["total"] == sum(p.numel() for p in model.parameters())
    assert tiny["weights"]["bf16"] == 2 * tiny["counts"]["total"]
    freeze_for_stage(model, 3)
    peft_model = apply_lora(model, r=8, alpha=16, dropout=0.05)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert tiny["counts"]["lora"] + tiny["counts"]["routers"] == trainable
    # tiny: 4 layers, 4 KV heads of 16, bf16 keys and values
    assert activation_bytes_per_token(tiny["config"])["inference"] == 2 * 4 * 64 * 2

    eight = count("uni-moe-8e")
    assert round(eight["counts"]["total"] / 1e9, 1) == 37.6  # the reference's 75 GB in bf16
    assert eight["weights"]["4-bit"] < eight["weights"]["8-bit"] < eight["weights"]["bf16"]
    table = plan(context=4096, train_tokens=8192, usable=0.9)
    assert "| uni-moe-8e | 37.61 B | bf16 | 75.2 GB |" in table
    assert '| uni-moe-8e | inference | device_map="auto" | 2 / 1 |' in table  # 75 GB: two 80 GB GPUs, one 141 GB
