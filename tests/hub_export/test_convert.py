"""`python -m hub_export.convert`: released layouts in, Hub folders out, logits equal to the original's.

Each variant's fake release (hub_export/fake_release.py) is converted, the folder is loaded in a fresh process through
AutoModelForCausalLM with trust_remote_code (this repository's packages blocked), and its logits are compared with an
independent reference of the original forward pass (tests/hub_export/original_reference.py: negative-id splicing, per-token
routing, LoRA unmerged).
"""

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hub_export.convert import convert, main, push_folder
from hub_export.errors import ConversionError
from hub_export.fake_release import VOCAB, build_release
from hub_export.output import HUB_CODE_FILES
from modeling_unimoe.configuration_unimoe import AUTO_MAP
from tests.helpers import REPO
from tests.hub_export.original_reference import OriginalReference, hf_inputs, make_prompts


VARIANTS = ["speech-4e", "audio-4e", "speech-v1.5", "8e"]
TOLERANCE = 1e-4


def beats_tower_ready() -> bool:
    from modeling_unimoe.modeling_beats import UniMoEBEATsModel

    return "__init__" in UniMoEBEATsModel.__dict__


def run_convert(paths: dict, out: Path, **kwargs):
    return convert(
        paths["variant"],
        paths["base"],
        paths["finetuned"],
        paths["clip"],
        out,
        whisper=paths.get("whisper"),
        beats=paths.get("beats"),
        experts=paths.get("experts"),
        progress=False,
        log=lambda *args: None,
        **kwargs,
    )


@pytest.fixture(scope="module")
def release_root(tmp_path_factory):
    return tmp_path_factory.mktemp("release")


@pytest.fixture(scope="module")
def parity(release_root, tmp_path_factory):
    """Convert every variant, compute the reference logits, then the converted logits in one fresh process."""
    out = tmp_path_factory.mktemp("converted")
    expected, results, skipped = {}, {}, {}
    for variant in VARIANTS:
        if variant == "audio-4e" and not beats_tower_ready():
            skipped[variant] = "UniMoEBEATsModel (sound tower) is not implemented yet in modeling_unimoe.py"
            continue
        paths = build_release(release_root, variant)
        results[variant] = run_convert(paths, out / variant, max_shard_size="200KB")
        config = json.loads((out / variant / "config.json").read_text())
        reference = OriginalReference(paths)
        prompts = make_prompts(variant)
        expected[variant] = {
            kind: reference.logits(p["ids"], p.get("images", ()), p.get("videos", ()), p.get("audios", ()))
            for kind, p in prompts.items()
        }
        torch.save({kind: hf_inputs(p, config) for kind, p in prompts.items()}, out / f"{variant}-inputs.pt")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(out / "modules"))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.hub_export.run_converted", str(out), *expected],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = {v: torch.load(out / f"{v}-logits.pt", weights_only=True) for v in expected}
    return {
        "out": out,
        "expected": expected,
        "got": got,
        "results": results,
        "skipped": skipped,
        "stdout": proc.stdout,
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_logits_match_the_original(parity, variant):
    if variant in parity["skipped"]:
        pytest.skip(parity["skipped"][variant])
    assert f"{variant}: transformers_modules." in parity["stdout"]  # loaded as remote code
    expected, got = parity["expected"][variant], parity["got"][variant]
    kinds = {"text", "image", "speech" if variant != "audio-4e" else "sound"}
    assert set(expected) == kinds
    for kind in kinds:
        assert got[kind].shape[0] == expected[kind].shape[0], kind
        diff = (got[kind][:, :VOCAB] - expected[kind]).abs().max().item()
        assert diff <= TOLERANCE, f"{variant} {kind}: max abs difference {diff:.2e} > {TOLERANCE}"


def test_reference_detects_a_wrong_merge(parity, release_root):
    """The parity check has teeth: dropping the LoRA or keeping the router LoRA moves the logits far past 1e-4."""
    paths = build_release(release_root, "speech-v1.5")
    prompt = make_prompts("speech-v1.5")["text"]
    good = parity["expected"]["speech-v1.5"]["text"]
    reference = OriginalReference(paths)
    reference.lora = {}
    assert (reference.logits(prompt["ids"]) - good).abs().max() > 1e-2


def test_folder_contents(parity):
    out = parity["out"] / "8e"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "README.md", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {*HUB_CODE_FILES, "model.safetensors.index.json"} <= names
    assert {"processor_config.json", "chat_template.jinja", "processing_unimoe.py"} <= names
    processor_config = json.loads((out / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_unimoe.UniMoEProcessor"
    for name in HUB_CODE_FILES:
        assert (out / name).read_text() == (REPO / "modeling_unimoe" / name).read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert config["text_config"]["num_experts"] == 8 and config["text_config"]["vocab_size"] == VOCAB + 3
    assert (config["image_token_id"], config["speech_token_id"], config["video_token_id"]) == (
        VOCAB,
        VOCAB + 1,
        VOCAB + 2,
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).stat().st_size <= 200_000 + 50_000 for s in shards)
    keys = set()
    for shard in shards:
        with safe_open(str(out / shard), framework="pt") as f:
            keys |= set(f.keys())
    assert keys == set(index["weight_map"])
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["temperature"] == 0.2 and generation["do_sample"] and generation["max_new_tokens"] == 2048
    card = (out / "README.md").read_text()
    for line in (
        "pipeline_tag: any-to-any",
        "- moe",
        "- multimodal",
        "- custom_code",
        "- Uni-MoE/Uni-MoE-8e-e2",
        "license: other",
        "## Differences from the original",
        "(`top2_2nd_expert_sampling`, also at inference)",
    ):
        assert line in card, line


def test_tokenizer_has_placeholders_and_matches_sentencepiece(parity, release_root):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(parity["out"] / "speech-4e")
    assert tokenizer.convert_tokens_to_ids(["<image>", "<audio>", "<video>"]) == [VOCAB, VOCAB + 1, VOCAB + 2]
    assert tokenizer.pad_token_id == 0
    sp = spm.SentencePieceProcessor(model_file=str(release_root / "Uni-MoE-speech-base" / "tokenizer.model"))
    text = "what is in this picture? describe the sound, hello world"
    assert tokenizer(text).input_ids == [1] + sp.encode(text)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt.endswith(" USER: <image>\nWhat is it? ASSISTANT:")
    assert prompt.startswith("A chat between a curious user and an artificial intelligence assistant.")
    processor_config = parity["out"] / "speech-4e" / "processor_config.json"
    if processor_config.exists():  # written by the processing package
        assert "AutoProcessor" in json.loads(processor_config.read_text())["auto_map"]


def test_accounting_reports_used_overwritten_and_dropped(parity):
    acc = parity["results"]["speech-v1.5"].accounting
    reasons = " | ".join(acc.dropped)
    assert "router saved next to it in mlp_gates.bin" in reasons  # the interval run's router LoRA quirk
    assert "rotary inverse frequencies" in reasons and "delay_load" in reasons
    assert acc.superseded > 0 and not acc.unexpected and not acc.misshaped


def test_cli_verify_compares_with_the_source(release_root, tmp_path, capsys):
    paths = build_release(release_root, "8e")
    argv = ["--variant", "8e", "--base", str(paths["base"]), "--finetuned", str(paths["finetuned"])]
    argv += ["--experts", str(paths["experts"]), "--clip", str(paths["clip"]), "--whisper", str(paths["whisper"])]
    argv += ["--out", str(tmp_path / "out"), "--verify", "--no-progress"]
    assert main(argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("verify:"))
    assert float(line.split()[4]) <= TOLERANCE and "argmax agreement 100%" in line


def test_verify_catches_a_damaged_folder(parity, release_root, tmp_path):
    from hub_export.verify import verify

    paths = build_release(release_root, "speech-v1.5")
    folder = tmp_path / "damaged"
    shutil.copytree(parity["out"] / "speech-v1.5", folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"]["model.language_model.layers.1.mlp.up_proj.weight"]
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(shard))
    tensors["model.language_model.layers.1.mlp.up_proj.weight"] *= 1.5
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="Verification failed"):
        verify(folder, "speech-v1.5", paths["base"], paths["finetuned"], paths["clip"], paths["whisper"])


# -- broken inputs --------------------------------------------------------------------------------------------------
@pytest.fixture
def broken(release_root, tmp_path):
    """A private copy of the speech-4e release to damage."""
    paths = build_release(release_root, "speech-4e")
    copy = {}
    for name in ("base", "finetuned", "clip", "whisper"):
        copy[name] = tmp_path / "release" / Path(paths[name]).name
        shutil.copytree(paths[name], copy[name])
    copy["variant"] = "speech-4e"
    return copy


def assert_fails_cleanly(paths, out: Path, match: str, **kwargs):
    with pytest.raises(ConversionError, match=match) as info:
        run_convert(paths, out, **kwargs)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temporary folder left
    return str(info.value)


def test_missing_shard(broken, tmp_path):
    (broken["base"] / "pytorch_model-00002-of-00002.bin").unlink()
    message = assert_fails_cleanly(broken, tmp_path / "out", "incomplete: missing shard")
    assert "pytorch_model-00002-of-00002.bin" in message and "Download the missing file" in message


def test_missing_adapter(broken, tmp_path):
    (broken["finetuned"] / "adapter_model.bin").unlink()
    message = assert_fails_cleanly(broken, tmp_path / "out", "has no adapter_model.bin")
    assert "PEFT LoRA adapter weights" in message and "Received a folder with" in message


def test_tensor_of_the_wrong_shape(broken, tmp_path):
    path = broken["finetuned"] / "non_lora_trainables.bin"
    sd = torch.load(path, weights_only=True)
    sd["base_model.model.model.mm_projector.2.weight"] = torch.zeros(7, 5)
    torch.save(sd, path)
    message = assert_fails_cleanly(broken, tmp_path / "out", "mis-shaped")
    assert "base_model.model.model.mm_projector.2.weight is [7, 5], expected [32, 32]" in message


def test_unexpected_extra_key(broken, tmp_path):
    path = broken["finetuned"] / "mm_audio_aligner.bin"
    sd = torch.load(path, weights_only=True)
    sd["model.mm_audio_aligner.extra_head.weight"] = torch.zeros(2, 2)
    torch.save(sd, path)
    message = assert_fails_cleanly(broken, tmp_path / "out", "unexpected")
    assert "finetuned/mm_audio_aligner.bin: model.mm_audio_aligner.extra_head.weight" in message


def test_wrong_variant_name(broken, tmp_path, capsys):
    broken["variant"] = "speech-5e"
    assert_fails_cleanly(broken, tmp_path / "out", r"Unknown variant 'speech-5e'\. Expected one of")
    argv = ["--variant", "speech-5e", "--base", str(broken["base"]), "--finetuned", str(broken["finetuned"])]
    argv += ["--clip", str(broken["clip"]), "--whisper", str(broken["whisper"]), "--out", str(tmp_path / "cli")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown variant 'speech-5e'") and "Traceback" not in err
    assert not (tmp_path / "cli").exists()


def test_a_failure_while_writing_leaves_no_output(broken, tmp_path, monkeypatch):
    import hub_export.write as module

    calls = {"n": 0}
    original = module.materialize

    def fail_later(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 50:
            raise OSError("disk full")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "materialize", fail_later)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        run_convert(broken, out, max_shard_size="100KB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]


class Payload:
    """An arbitrary object: unpickling it would run code of our choosing."""


def test_pickles_are_loaded_with_weights_only(broken, tmp_path):
    path = broken["finetuned"] / "mlp_gates.bin"
    torch.save({"model.layers.0.mlp.gate.weight": torch.zeros(4, 32), "meta": Payload()}, path)
    assert_fails_cleanly(broken, tmp_path / "out", r"only ever loaded with torch.load\(weights_only=True\)")


# -- push -----------------------------------------------------------------------------------------------------------
class _FakeHub(BaseHTTPRequestHandler):
    """The Hub API calls create_repo + upload_folder make (every file uploaded as a regular file)."""

    repos, files = [], {}

    def log_message(self, *args):
        pass

    def _reply(self, body: dict, status: int = 200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        import base64

        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/api/repos/create":
            request = json.loads(body)
            self.repos.append(request)
            return self._reply({"url": f"http://{self.headers['Host']}/{request['organization']}/{request['name']}"})
        if self.path == "/api/validate-yaml":  # the model card's metadata
            return self._reply({"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply(
                {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if "/commit/" in self.path:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            url = f"http://{self.headers['Host']}/{repo}/commit/{'1' * 40}"
            return self._reply({"commitUrl": url, "commitOid": "1" * 40})
        self._reply({"error": f"unexpected {self.path}"}, 404)


def test_push_uploads_the_folder_to_a_hub_stand_in(parity):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        folder = parity["out"] / "speech-4e"
        push_folder(
            folder, "org/uni-moe-speech-4e", endpoint=f"http://127.0.0.1:{server.server_port}", token="hf_test"
        )
    finally:
        server.shutdown()
    assert _FakeHub.repos[0]["name"] == "uni-moe-speech-4e" and _FakeHub.repos[0]["organization"] == "org"
    local = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert _FakeHub.files == local


def test_push_offline_fails_with_a_message(parity):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = parity["out"] / "speech-4e"
    with pytest.raises(ConversionError, match="Could not reach the Hub") as info:
        push_folder(folder, "org/name", endpoint=f"http://127.0.0.1:{port}", token="hf_test")
    assert "is complete" in str(info.value) and "hf upload org/name" in str(info.value)


def test_cli_push_offline_prints_no_traceback(parity, release_root, tmp_path):
    paths = build_release(release_root, "speech-4e")
    argv = [sys.executable, "-m", "hub_export.convert", "--variant", "speech-4e", "--base", str(paths["base"])]
    argv += ["--finetuned", str(paths["finetuned"]), "--clip", str(paths["clip"]), "--whisper", str(paths["whisper"])]
    argv += ["--out", str(tmp_path / "out"), "--push", "org/name", "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_TOKEN="hf_test")
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "error: Cannot push to org/name: the Hub is disabled (HF_HUB_OFFLINE=1)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "config.json").exists()  # the conversion itself completed
