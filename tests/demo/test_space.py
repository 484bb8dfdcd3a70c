"""The demo as a Hugging Face Space: the files demo/publish.py uploads (`publish.stage_space`: the demo's modules and
the routing analysis at its package path) in a folder alone, started the way a Space starts it (environment
variables only: GRADIO_SERVER_NAME=0.0.0.0, GRADIO_SERVER_PORT, UNIMOE_DEMO_MODEL = a copy of the tiny model),
reached on a non-loopback address of this machine and asked an image question through gradio_client, the experts
plot downloaded over HTTP. Fast in this venv with the repository's packages blocked from import (but for the Space's
own files); slow in a fresh venv made with uv from the folder's own requirements.txt. Also: the pinned requirements,
the Space metadata and demo/publish.py (against a stand-in for HfApi: no network here)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest

from modeling_unimoe.training.synthetic import is_correct, make_example
from tests.helpers import REPO, TINY_CHECKPOINT, needs_tiny_checkpoint


gradio_client = pytest.importorskip("gradio_client")

import publish  # noqa: E402  (demo/: tests/conftest.py puts it on the path)


DEMO = REPO / "demo"
TORCH_WHEELS = Path("/opt/wheels")
TORCH_INDEX_LINE = "--extra-index-url https://download.pytorch.org/whl/cpu"
READY_TIMEOUT_S = 240
# what `python app.py` runs in the fast test: the repository's packages found only among the Space's own files (the
# current folder), so the app can only work from those and the model folder's remote code
BLOCKED_RUN = (
    "import importlib.abc, importlib.machinery, os, runpy, sys\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('modeling_unimoe', 'training', 'hub_export', 'processing', 'demo'):\n"
    "            spec = importlib.machinery.PathFinder.find_spec(name, path or [os.getcwd()])\n"
    "            if spec is None:\n"
    "                raise ModuleNotFoundError(f'{name} is blocked: a Space has only its own files and the model')\n"
    "            return spec\n"
    "sys.meta_path.insert(0, Block())\n"
    "sys.argv = ['app.py']\n"
    "runpy.run_path('app.py', run_name='__main__')\n"
)

pytestmark = needs_tiny_checkpoint


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than 127.x: the source address of the default route (a UDP
    "connection" sends nothing), else the first of `hostname -I`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
            address = sock.getsockname()[0]
        except OSError:
            address = None
    if address and not address.startswith("127.") and address != "0.0.0.0":
        return address
    try:
        names = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        names = []
    return next((n for n in names if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", n) and not n.startswith("127.")), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


def copy_space(tmp_path: Path) -> tuple[Path, Path]:
    """The Space's files (as demo/publish.py uploads them) and a copy of the tiny model, side by side in tmp_path."""
    space = publish.stage_space(tmp_path / "space")
    model = tmp_path / "uni-moe-tiny"
    shutil.copytree(TINY_CHECKPOINT, model)
    return space, model


def space_env(tmp_path: Path, port: int, **variables) -> dict:
    """The environment of a Space: no PYTHONPATH, the server variables, a private temp folder."""
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "GRADIO_", "UNIMOE_"))}
    env.update(
        GRADIO_SERVER_NAME="0.0.0.0",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        TMPDIR=str(scratch),
    )
    env.update(variables)
    return env


def _serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def run_space_and_ask(command, space: Path, env: dict, url: str, log_path: Path, tmp_path: Path):
    """Start the Space, ask an image question on `url`; returns (answer, downloaded plot, context, log text)."""
    example = make_example("image_color", "test", 1, 0)
    image = tmp_path / "shape.png"
    example["image"].save(image)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=space, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ("Uni-MoE demo running on" in log_path.read_text() and _serves(url)):
            if process.poll() is not None:
                raise RuntimeError(f"The Space exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"The Space did not serve {url}:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        downloads = tmp_path / "downloads"
        client = gradio_client.Client(url, verbose=False, download_files=str(downloads))
        message = {"text": example["question"], "files": [gradio_client.handle_file(str(image))]}
        answer, plot, context = client.predict(message, 0.0, 8, "auto", True, api_name="/chat")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert is_correct(answer, example["answer"]), f"asked {example['question']!r}: got {answer!r}"
    assert context.startswith("History on: no earlier exchange yet"), context
    plot = Path(plot)
    assert plot.is_relative_to(downloads), f"the experts plot was not downloaded over HTTP: {plot}"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 1000
    return log_path.read_text()


@pytest.fixture
def address():
    found = non_loopback_address()
    if found is None:
        pytest.skip("this machine has no non-loopback IPv4 address to reach the Space on")
    return found


def test_space_from_a_copy_of_demo_with_variables_only(tmp_path, address):
    space, model = copy_space(tmp_path)
    port = free_port()
    env = space_env(tmp_path, port, UNIMOE_DEMO_MODEL=str(model))
    log = run_space_and_ask(
        [sys.executable, "-c", BLOCKED_RUN], space, env, f"http://{address}:{port}/", tmp_path / "space.log", tmp_path
    )
    assert f"Uni-MoE demo running on http://localhost:{port}/" in log  # gradio names 0.0.0.0 so
    assert "is blocked" not in log
    assert not list((tmp_path / "tmp").glob("unimoe-demo-*")), "the cache folder is removed when the Space stops"


def test_space_without_a_model_variable_names_it(tmp_path):
    space = publish.stage_space(tmp_path / "space")
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN],
        cwd=space,
        env=space_env(tmp_path, free_port()),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Uni-MoE demo: could not load the model 'uni-moe/uni-moe-tiny' (the default; set "), last
    assert "Set UNIMOE_DEMO_MODEL (or pass --model)" in last and "python demo/publish.py" in last, last
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_space_in_a_fresh_venv_from_its_requirements(tmp_path, address):
    """The Space's own requirements.txt in a new venv (uv; torch from the local CPU wheel in place of PyTorch's
    index, which this machine cannot reach), then `python app.py` with the Space's variables."""
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        pytest.skip(f"{uv} is missing: it comes with the dev extra")
    if not sorted(TORCH_WHEELS.glob("torch-2.13.0+cpu-*.whl")):
        pytest.skip(f"no torch 2.13.0+cpu wheel in {TORCH_WHEELS}")
    space, model = copy_space(tmp_path)
    requirements = (space / "requirements.txt").read_text()
    assert TORCH_INDEX_LINE in requirements
    local = tmp_path / "requirements-local.txt"
    local.write_text(requirements.replace(TORCH_INDEX_LINE, f"--find-links {TORCH_WHEELS}"))
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for command in (
        [str(uv), "venv", "--quiet", "-p", f"python{version}", str(venv)],
        [str(uv), "pip", "install", "--quiet", "--python", str(python), "-r", str(local)],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{' '.join(command[:3])} failed:\n{done.stderr[-3000:]}"
    probe = subprocess.run([str(python), "-c", "import modeling_unimoe"], capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0, "the Space's venv must not hold the uni-moe package"
    port = free_port()
    env = space_env(tmp_path, port, UNIMOE_DEMO_MODEL=str(model))
    run_space_and_ask(
        [str(python), "app.py"], space, env, f"http://{address}:{port}/", tmp_path / "space.log", tmp_path
    )


# ------------------------------------------------------------------------------------ requirements, metadata, publish


def test_requirements_are_pinned_to_the_tested_versions():
    lines = [line.strip() for line in (DEMO / "requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    assert lines[0] == TORCH_INDEX_LINE
    pins = dict(line.split("==") for line in lines[1:])
    assert len(pins) == len(lines) - 1, f"every requirement is pinned with ==: {lines[1:]}"
    assert pins["torch"].endswith("+cpu")
    for name in ("torch", "transformers", "gradio", "matplotlib", "bitsandbytes", "huggingface_hub", "av"):
        assert name in pins, name
    for name, pinned in pins.items():
        assert installed_version(name) == pinned, f"{name}: pinned {pinned}, tested with {installed_version(name)}"


def test_space_metadata():
    text = (DEMO / "README.md").read_text()
    front = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    assert front, "README.md starts with the Space's YAML metadata"
    meta = dict(re.findall(r"^(\w+):\s*(.+)$", front.group(1), re.MULTILINE))
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == installed_version("gradio")
    assert meta["python_version"].strip('"') == f"{sys.version_info.major}.{sys.version_info.minor}"
    for variable in ("UNIMOE_DEMO_MODEL", "UNIMOE_DEMO_REVISION", "UNIMOE_DEMO_QUANTIZATION", "GRADIO_SERVER_NAME"):
        assert variable in text


class FakeCommit:
    oid = "0123456789abcdef0123456789abcdef01234567"
    commit_url = "https://huggingface.co/you/uni-moe-tiny/commit/0123456"


class FakeHfApi:
    """Records the calls demo/publish.py makes to huggingface_hub.HfApi."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])  # a staged folder is gone after the call: its files are kept
        kwargs["files"] = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return FakeCommit()

    def add_space_variable(self, repo_id, key, value):
        self.calls.append(("add_space_variable", repo_id, {key: value}))


def test_publish_dry_run_touches_nothing():
    logged = []
    result = publish.publish(TINY_CHECKPOINT, dry_run=True, space="you/uni-moe-demo", api=object(), log=logged.append)
    expected = sorted(p.name for p in TINY_CHECKPOINT.iterdir() if p.is_file())
    assert result["files"] == expected and result["revision"] is None and result["repo_id"] == "uni-moe/uni-moe-tiny"
    assert "modeling_unimoe.py" in expected and "pipeline_unimoe.py" in expected
    assert "Would upload" in logged[0] and "uni-moe/uni-moe-tiny" in logged[0]
    assert "UNIMOE_DEMO_MODEL=uni-moe/uni-moe-tiny" in logged[1]


def test_publish_uploads_the_model_and_the_space(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(TINY_CHECKPOINT, folder)
    (folder / "eval").mkdir()
    (folder / "eval" / "eval.json").write_text("{}")  # an evaluation's output is not part of the model
    api = FakeHfApi()
    result = publish.publish(folder, "you/uni-moe-tiny", space="you/uni-moe-demo", api=api, log=lambda *_: None)
    assert result["revision"] == FakeCommit.oid
    kinds = [(call[0], call[1]) for call in api.calls]
    assert kinds == [
        ("create_repo", "you/uni-moe-tiny"),
        ("upload_folder", "you/uni-moe-tiny"),
        ("create_repo", "you/uni-moe-demo"),
        ("upload_folder", "you/uni-moe-demo"),
        ("add_space_variable", "you/uni-moe-demo"),
        ("add_space_variable", "you/uni-moe-demo"),
    ]
    model_upload, space_upload = api.calls[1][2], api.calls[3][2]
    assert model_upload["folder_path"] == str(folder) and "eval/eval.json" not in model_upload["allow_patterns"]
    assert set(model_upload["allow_patterns"]) == {p.name for p in TINY_CHECKPOINT.iterdir() if p.is_file()}
    assert api.calls[2][2]["space_sdk"] == "gradio" and api.calls[2][2]["repo_type"] == "space"
    assert space_upload["files"] == sorted(publish.SPACE_FILES) == [
        "README.md", "app.py", "backends.py", "chat.py", "media.py", "modeling_unimoe/training/routing.py",
        "requirements.txt", "ui.py",
    ]  # fmt: skip
    assert space_upload["delete_patterns"] == ["*.py"]  # modules an earlier demo had and this one has not
    assert api.calls[4][2] == {"UNIMOE_DEMO_MODEL": "you/uni-moe-tiny"}
    assert api.calls[5][2] == {"UNIMOE_DEMO_REVISION": FakeCommit.oid}


def test_publish_refuses_an_incomplete_folder_and_a_bad_id(tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(TINY_CHECKPOINT, folder)
    (folder / "modeling_unimoe.py").unlink()
    config = json.loads((folder / "config.json").read_text())
    assert "modeling_unimoe.UniMoEForCausalLM" in config["auto_map"].values()
    with pytest.raises(publish.PublishError, match="missing modeling_unimoe.py"):
        publish.publish(folder, dry_run=True)
    assert publish.main(["--folder", str(folder), "--dry-run"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(publish.PublishError, match="--repo-id is 'uni-moe-tiny'; expected a Hub repository id"):
        publish.publish(TINY_CHECKPOINT, "uni-moe-tiny", dry_run=True)
    with pytest.raises(publish.PublishError, match="is not a folder"):
        publish.publish(tmp_path / "nothing", dry_run=True)


def test_the_staged_space_imports_only_its_own_files(tmp_path):
    """Every module of the Space imports, of the repository's packages, only modules the Space carries."""
    import ast

    space = publish.stage_space(tmp_path / "space")
    carried = {str(p.relative_to(space).with_suffix("")).replace("/", ".") for p in space.rglob("*.py")}
    carried |= {"modeling_unimoe", "modeling_unimoe.training"}  # folders of the Space (namespace packages)
    for path in space.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                if name.split(".")[0] in {"modeling_unimoe", "training", "hub_export", "processing", "demo"}:
                    assert name in carried, f"{path.relative_to(space)} imports {name}, which the Space lacks"
    with pytest.raises(publish.PublishError, match="is not empty"):
        publish.stage_space(space)
