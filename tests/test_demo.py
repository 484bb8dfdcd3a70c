"""The Gradio demo (demo/app.py) served in a subprocess on the embedded tiny model and driven through gradio_client:
image, sound, speech and video questions answered correctly, streaming, 8 concurrent requests, a corrupt upload."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from modeling_unimoe.training.synthetic import is_correct, load_split, write_split


pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "demo" / "app.py"
MODEL = REPO / "checkpoints" / "uni-moe-tiny"
SEED = 0
# test-split examples (index -> answer is ANSWERS[task][index % n]) asked through the demo, two per task with
# different answers, so that a model answering one class always cannot pass
EXAMPLES = {
    "image_color": (0, 1),
    "sound_pitch": (0, 1),
    "sound_beeps": (1, 2),
    "speech_digit": (3, 7),
    "video_direction": (0, 1),
}
READY_TIMEOUT_S = 180
ERROR_MARK = "⚠️"

pytestmark = pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason=f"no embedded checkpoint at {MODEL}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def serve_demo(log_dir: Path, *extra_args):
    """Run `python demo/app.py` on a free port (cwd: log_dir, not the repo) until the block ends; yields its URL."""
    port = free_port()
    log_path = log_dir / f"demo-{port}.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(APP), "--host", "127.0.0.1", "--port", str(port), *extra_args],
            cwd=log_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (f"running on {url}" in log_path.read_text() and _answers(url)):  # it prints its URL when ready
            if process.poll() is not None:
                raise RuntimeError(f"The demo exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"The demo did not serve {url} within {READY_TIMEOUT_S} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    with serve_demo(tmp_path_factory.mktemp("demo"), "--max-queue", "16", "--concurrency", "2") as url:
        yield url


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """task -> [(file path, question, answer)] for EXAMPLES, written by synthetic.write_split (test split, SEED)."""
    data = tmp_path_factory.mktemp("media")
    n = 1 + max(max(indices) for indices in EXAMPLES.values())
    write_split(data, "test", n, SEED, tasks=tuple(EXAMPLES))
    rows = {(row["task"], int(row["id"].rsplit("-", 1)[1])): row for row in load_split(data, "test")}
    return {
        task: [
            (rows[task, i]["image"] or rows[task, i]["video"] or rows[task, i]["voice"], rows[task, i]["question"],
             rows[task, i]["answer"])
            for i in indices
        ]
        for task, indices in EXAMPLES.items()
    }  # fmt: skip


def ask(url, text, files=(), audio_is="auto", max_new_tokens=8, client=None):
    client = client or gradio_client.Client(url, verbose=False)
    message = {"text": text, "files": [gradio_client.handle_file(str(path)) for path in files]}
    job = client.submit(message, 0.0, max_new_tokens, audio_is, api_name="/chat")
    answer, plot = job.result(timeout=120)
    return answer, plot, job.outputs()


@pytest.mark.parametrize("task", list(EXAMPLES))
def test_answers_media_questions(demo_url, media, task):
    for path, question, expected in media[task]:
        answer, plot, outputs = ask(demo_url, question, [path])
        assert is_correct(answer, expected), f"{task} {Path(path).name}: asked {question!r}, expected {expected!r}"
        # streamed: a partial answer first, then the final answer with the experts plot
        assert len(outputs) >= 2 and outputs[-1][0] == answer
        assert isinstance(plot, str) and plot.endswith(".png") and os.path.getsize(plot) > 1000


def test_eight_concurrent_requests(demo_url, media):
    images = [(path, question, answer) for path, question, answer in media["image_color"]]
    requests = [images[i % len(images)] for i in range(8)]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda r: ask(demo_url, r[1], [r[0]])[0], requests))
    for (path, _, expected), answer in zip(requests, results, strict=True):
        assert is_correct(answer, expected), f"{Path(path).name}: got {answer!r}, expected {expected!r}"
    assert time.monotonic() - start < 120


def test_corrupt_upload_is_reported_and_the_app_keeps_serving(demo_url, media, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(os.urandom(4096))
    client = gradio_client.Client(demo_url, verbose=False)
    answer, _, _ = ask(demo_url, "What color is the shape?", [corrupt], client=client)
    assert answer.startswith(ERROR_MARK) and "corrupt.png" in answer and "image" in answer, answer
    # the same session (its history holds the failed turn) and a new one both still get answers
    path, question, expected = media["image_color"][0]
    assert is_correct(ask(demo_url, question, [path], client=client)[0], expected)
    assert is_correct(ask(demo_url, question, [path])[0], expected)


def test_unknown_file_type_and_empty_message(demo_url, media, tmp_path):
    document = tmp_path / "notes.txt"
    document.write_text("hello")
    with pytest.raises(gradio_client.exceptions.AppError, match="Invalid file type"):  # refused by the textbox
        ask(demo_url, "What is this?", [document])
    answer = ask(demo_url, "")[0]
    assert answer.startswith(ERROR_MARK) and "empty" in answer, answer
    path, question, expected = media["image_color"][0]
    assert is_correct(ask(demo_url, question, [path])[0], expected)
