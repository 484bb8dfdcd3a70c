"""Save/load round trips and the Hub folder written by `python -m hub_export.build`, loaded as remote code."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hub_export.build import build
from hub_export.check import fixed_prompt
from hub_export.output import HUB_CODE_FILES, OutputFolderError
from modeling_unimoe import UniMoEForCausalLM
from modeling_unimoe.processing.export import PROCESSOR_HUB_FILES
from tests.helpers import REPO, TINY_CHECKPOINT


HUB_FILES = [REPO / "modeling_unimoe" / name for name in HUB_CODE_FILES]
# the processor side may also use numpy and PIL (transformers' own processors need them)
PROCESSOR_SOURCES = [REPO / "processing" / name for name in (*PROCESSOR_HUB_FILES, "pipeline_unimoe.py")]


def test_save_load_round_trip_is_exact(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    loaded = UniMoEForCausalLM.from_pretrained(tmp_path).eval()
    original, reloaded = tiny_model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    for key in original:
        assert torch.equal(original[key], reloaded[key]), key
    input_ids = fixed_prompt(tiny_model.config)
    with torch.no_grad():
        assert torch.equal(tiny_model(input_ids).logits, loaded(input_ids).logits)


def test_saved_folder_has_auto_map_and_code(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "unimoe"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_unimoe.UniMoEConfig",
        "AutoModel": "modeling_unimoe.UniMoEModel",
        "AutoModelForCausalLM": "modeling_unimoe.UniMoEForCausalLM",
        "AutoModelForImageTextToText": "modeling_unimoe.UniMoEForCausalLM",
    }
    for file in HUB_FILES:
        assert (tmp_path / file.name).read_text() == file.read_text()
    assert (tmp_path / "model.safetensors").exists()
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert "model.language_model.layers.0.mlp.experts.3.down_proj.weight" in keys
    assert "model.language_model.layers.0.mlp.gate.weight" in keys


def test_hub_code_files_are_the_files_transformers_saves_with_the_model():
    """`HUB_CODE_FILES` (what the exports copy and check) are modeling_unimoe.py and every sibling it imports."""
    from transformers.dynamic_module_utils import get_relative_import_files

    modeling = REPO / "modeling_unimoe" / "modeling_unimoe.py"
    found = {Path(name).name for name in get_relative_import_files(str(modeling))}
    assert sorted({modeling.name, *found}) == sorted(HUB_CODE_FILES)


def test_saving_a_loaded_folder_writes_the_hub_code_and_keeps_the_config(tmp_path):
    """A model loaded from the embedded checkpoint (through this package's class) saves with every Hub code file; the
    config keeps what its config.json had (`custom_pipelines`, `auto_map`)."""
    source = TINY_CHECKPOINT
    model = UniMoEForCausalLM.from_pretrained(source)
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    original = json.loads((source / "config.json").read_text())
    assert saved["custom_pipelines"] == original["custom_pipelines"]
    assert saved["auto_map"] == original["auto_map"]
    assert "vision_connector" not in saved
    for file in HUB_FILES:
        assert (tmp_path / "saved" / file.name).read_bytes() == file.read_bytes()


@pytest.mark.parametrize("file", HUB_FILES + PROCESSOR_SOURCES, ids=lambda p: p.name)
def test_hub_files_import_only_torch_transformers_stdlib_and_siblings(file):
    allowed = {"torch", "transformers"} | set(sys.stdlib_module_names)
    if file in PROCESSOR_SOURCES:
        allowed |= {"numpy", "PIL"}
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.level == 1 and node.module and (file.parent / f"{node.module}.py").exists(), ast.dump(node)
                continue
            roots = [node.module.split(".")[0]]
        else:
            continue
        assert set(roots) <= allowed, f"{file.name} imports {roots}"


def test_built_folder_loads_as_remote_code_in_a_fresh_process(tmp_path):
    out = build("tiny", tmp_path / "uni-moe-tiny", seed=3)
    local = UniMoEForCausalLM.from_pretrained(out).eval()
    input_ids = fixed_prompt(local.config)
    with torch.no_grad():
        expected = local(input_ids).logits
    logits_file = tmp_path / "logits.pt"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-m", "hub_export.check", str(out), "--save-logits", str(logits_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(remote code)" in result.stdout and "transformers_modules" in result.stdout
    remote = torch.load(logits_file, weights_only=True)
    torch.testing.assert_close(remote["causal_lm"], expected, atol=0, rtol=0)
    with torch.no_grad():
        base = local.model(input_ids).last_hidden_state
    torch.testing.assert_close(remote["auto_model"], base, atol=0, rtol=0)


def test_check_blocks_the_local_package(tmp_path):
    code = "from hub_export.check import block_local_package; block_local_package(); import modeling_unimoe"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "modeling_unimoe is blocked: this process must use the folder's remote code only" in result.stderr


def test_build_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("user data")
    for overwrite in (False, True):
        with pytest.raises(
            OutputFolderError, match="Refusing to replace the output folder .* not an export of uni-moe"
        ):
            build("tiny", user, overwrite=overwrite)
    assert [p.name for p in user.iterdir()] == ["keep.txt"] and (user / "keep.txt").read_text() == "user data"
    export = build("tiny", tmp_path / "export")
    with pytest.raises(OutputFolderError, match="already exists \\(an earlier export\\). Pass --overwrite"):
        build("tiny", export)
    before = {p.name: p.read_bytes() for p in export.iterdir()}

    def save_then_fail(self, folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half-written")
        raise OSError("disk full")

    monkeypatch.setattr(UniMoEForCausalLM, "save_pretrained", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        build("tiny", tmp_path / "new")
    with pytest.raises(OSError, match="disk full"):
        build("tiny", export, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "user"]
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before


@pytest.mark.parametrize(
    "source",
    [
        *(f"modeling_unimoe/{name}" for name in HUB_CODE_FILES),
        *(f"processing/{name}" for name in PROCESSOR_HUB_FILES),
        "processing/pipeline_unimoe.py",
        "processing/chat_template.jinja",
    ],
)
def test_embedded_checkpoint_carries_the_current_hub_files(source):
    """checkpoints/uni-moe-tiny runs as remote code: its copies of the Hub files must be the sources, byte for byte."""
    repo = Path(__file__).resolve().parents[2]
    copy = repo / "checkpoints" / "uni-moe-tiny" / Path(source).name
    assert copy.read_bytes() == (repo / source).read_bytes(), (
        f"{copy} differs from {source}: copy the source over it (the weights do not change)."
    )
