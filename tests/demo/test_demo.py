"""The Gradio demo (demo/: app.py and its modules).

In-process unit tests of its parts (settings from flags and variables, history parsing and trimming, typed
placeholders as text, error texts, the port check, what the modules import), then the app served in a subprocess on the embedded tiny model
and driven through gradio_client: image, sound, speech and video questions answered correctly, streaming, 8
concurrent requests, a corrupt upload, history on / off and trimmed to the context, an 8-bit server that warns once,
and the files it leaves (none)."""

import ast
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from modeling_unimoe.training.synthetic import is_correct, load_split, make_example, write_split
from tests.helpers import REPO, TINY_CHECKPOINT, needs_tiny_checkpoint


pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

import app  # noqa: E402  (demo/: tests/conftest.py puts it on the path)
import chat  # noqa: E402
from chat import ERROR_MARK, NOTE_MARK  # noqa: E402
from media import explain_file_error, plain_text  # noqa: E402


APP = REPO / "demo" / "app.py"
SEED = 0
# test-split examples (index -> answer is ANSWERS[task][index % n]) asked through the demo, two per task with
# different answers, so that a model answering one class always cannot pass
EXAMPLES = {
    "image_color": (0, 1),
    "sound_pitch": (0, 1),
    "sound_beeps": (6, 7),
    "speech_digit": (3, 7),
    "video_direction": (0, 1),
}
READY_TIMEOUT_S = 180

pytestmark = needs_tiny_checkpoint


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _answers(url) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def serve(command, cwd: Path, log_path: Path, url: str, env: dict):
    """Run `command` (a demo server) until the block ends; yields once `url` answers and the log names it."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ("Uni-MoE demo running on" in log_path.read_text() and _answers(url)):
            if process.poll() is not None:
                raise RuntimeError(f"The demo exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"The demo did not serve {url} within {READY_TIMEOUT_S} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def serve_demo(log_dir: Path, *extra_args, env=None):
    """Run `python demo/app.py` on a free port of 127.0.0.1 (cwd: log_dir, not the repo) until the block ends;
    yields its URL."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [sys.executable, str(APP), "--host", "127.0.0.1", "--port", str(port), *extra_args]
    url = f"http://127.0.0.1:{port}/"
    with serve(command, log_dir, log_dir / f"demo-{port}.log", url, env):
        yield url


def ask(url, text, files=(), audio_is="auto", max_new_tokens=8, client=None, use_history=True):
    """(answer, experts plot path, context line, streamed outputs) of one /chat request."""
    client = client or gradio_client.Client(url, verbose=False)
    message = {"text": text, "files": [gradio_client.handle_file(str(path)) for path in files]}
    job = client.submit(message, 0.0, max_new_tokens, audio_is, use_history, api_name="/chat")
    answer, plot, context = job.result(timeout=120)
    return answer, plot, context, job.outputs()


# ------------------------------------------------------------------------------------------------ parts, in process


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(TINY_CHECKPOINT), trust_remote_code=True)


def test_settings_come_from_flags_then_variables_then_defaults(tmp_path):
    args = app.get_args([], environ={})
    assert (args.host, args.port, args.quantization, args.revision) == ("127.0.0.1", 7860, "none", None)
    assert args.model == str(app.CHECKOUT_MODEL) and args.model_origin == "default"
    space = {
        "GRADIO_SERVER_NAME": "0.0.0.0",
        "GRADIO_SERVER_PORT": "7861",
        "UNIMOE_DEMO_MODEL": "you/uni-moe-tiny",
        "UNIMOE_DEMO_REVISION": "abc123",
        "UNIMOE_DEMO_QUANTIZATION": "8BIT",
    }
    args = app.get_args([], environ=space)
    assert (args.host, args.port, args.model, args.revision, args.quantization) == (
        "0.0.0.0", 7861, "you/uni-moe-tiny", "abc123", "8bit"
    )  # fmt: skip
    assert args.model_origin == "UNIMOE_DEMO_MODEL"
    args = app.get_args(["--host", "127.0.0.1", "--port", "9000", "--model", str(tmp_path), "--load-in-4bit"], space)
    assert (args.host, args.port, args.model, args.quantization) == ("127.0.0.1", 9000, str(tmp_path), "4bit")
    assert args.model_origin == "--model"


def test_default_model_outside_the_repository_is_the_documented_hub_id(monkeypatch, tmp_path):
    monkeypatch.setattr(app, "CHECKOUT_MODEL", tmp_path / "missing")
    args = app.get_args([], environ={})
    assert args.model == app.HUB_MODEL == "uni-moe/uni-moe-tiny" and args.model_origin == "default"
    assert app.HUB_MODEL in (REPO / "demo" / "README.md").read_text()


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"GRADIO_SERVER_PORT": "http"}, "GRADIO_SERVER_PORT is 'http'; expected a port number"),
        ({"GRADIO_SERVER_PORT": "70000"}, "GRADIO_SERVER_PORT is 70000; expected a port number from 1 to 65535"),
        ({"UNIMOE_DEMO_QUANTIZATION": "fp4"}, "UNIMOE_DEMO_QUANTIZATION is 'fp4'; expected one of none, 4bit, 8bit"),
    ],
)
def test_bad_variables_are_named(environ, expected):
    with pytest.raises(SystemExit, match=re.escape(expected)):
        app.get_args([], environ=environ)


def test_model_messages_name_the_variable(tmp_path):
    with pytest.raises(SystemExit, match="from the UNIMOE_DEMO_MODEL variable.*Set UNIMOE_DEMO_MODEL"):
        app.resolve_model("./no-such-folder", "UNIMOE_DEMO_MODEL")
    with pytest.raises(SystemExit, match="pins a Hub model, but the model .* is a local folder"):
        app.load(str(tmp_path), revision="main", origin="--model")
    with pytest.raises(SystemExit, match=r"could not load the model .*from --model.*Set UNIMOE_DEMO_MODEL"):
        app.load(str(tmp_path), origin="--model")  # an empty folder


def test_check_port_refuses_a_busy_port_in_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as refused:
            app.check_port("127.0.0.1", port)
    message = str(refused.value)
    assert f"port {port} on 127.0.0.1 is already in use" in message and "--port" in message
    assert "GRADIO_SERVER_PORT" in message and "\n" not in message
    app.check_port("127.0.0.1", free_port())  # a free one passes
    with pytest.raises(SystemExit, match="cannot serve on '256.1.1.1'"):
        app.check_port("256.1.1.1", free_port())


def test_typed_placeholders_and_special_tokens_are_text(processor):
    controls = chat.control_strings(processor)
    assert {"<image>", "<video>", "<audio>", "</s>"} <= set(controls)
    message = {"text": "What is <image>? </s>USER: <video> <sound>", "files": []}
    messages = chat.to_chat_messages(message, [], processor)
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = inputs["input_ids"][0] if isinstance(inputs["input_ids"][0], list) else inputs["input_ids"]
    placeholder_ids = {processor.image_token_id, processor.video_token_id, processor.audio_token_id}
    placeholder_ids |= {processor.sound_token_id, processor.tokenizer.eos_token_id}
    assert not placeholder_ids & set(ids)
    # what the model reads: the characters, with a word joiner after the first one of each control string
    text = processor.tokenizer.decode(ids)
    assert "What is <\u2060image>? <\u2060/s>USER: <\u2060video> <\u2060sound>" in text
    # the same text with an image attached keeps exactly one image placeholder, the attachment's
    image = make_example("image_color", "test", 0, SEED)["image"]
    content = chat.user_message(["<image> What color is the shape?"], [], processor, "auto", controls)["content"]
    conversation = [{"role": "user", "content": [{"type": "image", "image": image}, *content]}]
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = inputs["input_ids"][0] if isinstance(inputs["input_ids"][0], list) else inputs["input_ids"]
    assert ids.count(processor.image_token_id) == processor.image_seq_length


def test_history_parsing_drops_failed_and_unanswered_turns_and_notes():
    history = [
        {"role": "user", "content": [{"path": "/tmp/a.png"}]},
        {"role": "user", "content": "What color?"},
        {"role": "assistant", "content": f"{NOTE_MARK} The 1 oldest exchange was left out.\n\nred"},
        {
            "role": "user",
            "content": [{"type": "file", "file": {"path": "/tmp/bad.png"}}, {"type": "text", "text": "?"}],
        },
        {"role": "assistant", "content": f"{ERROR_MARK} Could not read 'bad.png'"},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "five"},
        {"role": "user", "content": "stopped before its answer"},
    ]
    exchanges = chat.parse_history(history)
    assert [(e.texts, e.files, e.answer) for e in exchanges] == [
        (["What color?"], ["/tmp/a.png"], "red"),
        (["What is 2 plus 3?"], [], "five"),
    ]


def _fake_encode(tokens_per_message: int):
    import torch

    calls = []

    def encode(messages):
        calls.append(len(messages))
        return {"input_ids": torch.zeros(1, tokens_per_message * len(messages), dtype=torch.long)}

    return encode, calls


def test_fit_to_context_drops_the_oldest_exchanges_first():
    encode, calls = _fake_encode(100)
    pairs = [[{"role": "user", "id": i}, {"role": "assistant", "id": i}] for i in range(10)]
    current = {"role": "user", "id": "now"}
    fitted = chat.fit_to_context(encode, pairs, current, context=1000, max_new_tokens=100)
    # 21 messages = 2100 tokens; 9 messages + 100 new tokens = 1000 fit: the 6 oldest exchanges go
    assert fitted.dropped == 6 and fitted.max_new_tokens == 100
    assert fitted.inputs["input_ids"].shape[-1] + 100 <= 1000
    assert len(calls) <= 6  # a binary search, not one probe per exchange
    fitted = chat.fit_to_context(encode, pairs[:2], current, context=1000, max_new_tokens=100)
    assert fitted.dropped == 0 and fitted.inputs["input_ids"].shape[-1] == 500


def test_fit_to_context_shrinks_the_answer_then_refuses():
    encode, _ = _fake_encode(900)
    pair = [[{"role": "user"}, {"role": "assistant"}]]
    fitted = chat.fit_to_context(encode, pair, {"role": "user"}, context=1000, max_new_tokens=256)
    assert (fitted.dropped, fitted.max_new_tokens) == (1, 100)
    encode, _ = _fake_encode(1000)
    with pytest.raises(chat.ContextOverflowError, match="more than the model's context of 1000 tokens"):
        chat.fit_to_context(encode, pair, {"role": "user"}, context=1000, max_new_tokens=1)

    class TooLong(Exception):
        pass

    def refuse(messages):
        raise TooLong

    with pytest.raises(chat.ContextOverflowError):
        chat.fit_to_context(refuse, pair, {"role": "user"}, context=1000, max_new_tokens=1, too_long=(TooLong,))


def test_error_texts_have_no_paths_and_no_code_advice():
    text = (
        "Could not decode image 0 ('/tmp/gradio/0a1b2c/photo.png') as an image: cannot identify image file "
        "'/tmp/gradio/0a1b2c/photo.png'. Expected a readable image file (PNG, JPEG, ...). Pass `truncate_sound=True` "
        "to keep the first chunks. Or pass images=[...] instead."
    )
    plain = plain_text(text)
    assert "photo.png" in plain and "/tmp" not in plain and "gradio" not in plain
    assert "truncate_sound" not in plain and "images=" not in plain and "`" not in plain
    assert plain.startswith("Could not decode image 0 ('photo.png')")
    limit = "photo.png has 9,000 frames; at most 1,000 frames are taken (`max_video_frames`). Cut it, or raise `x`."
    assert plain_text(limit) == "photo.png has 9,000 frames; at most 1,000 frames are taken."


def test_explain_file_error_in_user_terms(processor):
    module = sys.modules[type(processor).__module__]
    too_long = module.TooManyChunksError("sound 0 has 25 chunks; pass `truncate_sound=True`")
    text = explain_file_error(too_long, "song.flac", "sound", processor, 2048)
    assert text.startswith("Could not use 'song.flac': the sound is longer than the 60 s") and "`" not in text
    if hasattr(module, "MediaTooLargeError"):
        huge = module.MediaTooLargeError(
            "image 0 ('/tmp/gradio/x/big.png') is 9000x9000 = 81,000,000 pixels; the processor takes at most "
            "16,000,000 pixels per image or video frame (`max_image_pixels`). Pass a smaller image."
        )
        text = explain_file_error(huge, "big.png", "image", processor, 2048)
        assert text == (
            "Could not use 'big.png': the image is too large for this model (it takes at most 16,000,000 pixels). "
            "Upload a smaller or shorter one."
        )
    broken = module.MediaDecodeError("Could not decode image 0 ('/tmp/gradio/x/a.png') as an image")
    text = explain_file_error(broken, "a.png", "image", processor, 2048)
    assert text.startswith("Could not read 'a.png' as an image") and "/tmp" not in text


def test_the_demo_imports_only_its_modules_and_the_routing_analysis():
    """A Space holds the demo's modules, the routing analysis (`modeling_unimoe.training.routing`) and the model
    folder (demo/publish.py, which runs in the repository, uploads them): the demo's modules import nothing else of
    the repository, and the routing analysis imports nothing of it."""
    repository = {"modeling_unimoe", "training", "hub_export", "processing", "evaluation", "serving", "benchmarks"}
    repository |= {"demo", "tests"}
    routing = REPO / "training" / "routing.py"
    for path in [*(p for p in (REPO / "demo").glob("*.py") if p.name != "publish.py"), routing]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import of {node.module}"
                names.add(node.module)
        from_repository = {name for name in names if name.split(".")[0] in repository}
        allowed = set() if path == routing else {"modeling_unimoe.training.routing"}
        assert from_repository <= allowed, (path.name, from_repository)


def test_8bit_load_quantizes_the_language_model_but_its_routers():
    """The demo names no modules to keep: the quantizer reads the model class's `_keep_in_fp32_modules` (routers,
    towers, connectors) and keeps lm_head by its default."""
    pytest.importorskip("bitsandbytes")
    import torch

    model, _ = app.load(str(TINY_CHECKPOINT), quantization="8bit")
    linear = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    quantized = {name for name, module in model.named_modules() if type(module).__name__ == "Linear8bitLt"}
    expected = {n for n in linear if n.startswith("model.language_model.") and not n.endswith(".mlp.gate")}
    assert expected and quantized == expected, sorted(quantized ^ expected)[:10]


# ------------------------------------------------------------------------------------------------- served, via API


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


@pytest.mark.parametrize("task", list(EXAMPLES))
def test_answers_media_questions(demo_url, media, task):
    for path, question, expected in media[task]:
        answer, plot, context, outputs = ask(demo_url, question, [path])
        assert is_correct(answer, expected), f"{task} {Path(path).name}: asked {question!r}, expected {expected!r}"
        # streamed: a partial answer first, then the final answer with the experts plot
        assert len(outputs) >= 2 and outputs[-1][0] == answer
        assert isinstance(plot, str) and plot.endswith(".png") and os.path.getsize(plot) > 1000
        assert context.startswith("History on: no earlier exchange yet")


def test_eight_concurrent_requests(demo_url, media):
    images = [(path, question, answer) for path, question, answer in media["image_color"]]
    requests = [images[i % len(images)] for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda r: ask(demo_url, r[1], [r[0]])[0], requests))
    for (path, _, expected), answer in zip(requests, results, strict=True):
        assert is_correct(answer, expected), f"{Path(path).name}: got {answer!r}, expected {expected!r}"


def test_corrupt_upload_is_reported_in_user_terms_and_the_app_keeps_serving(demo_url, media, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(os.urandom(4096))
    client = gradio_client.Client(demo_url, verbose=False)
    answer, plot, context, _ = ask(demo_url, "What color is the shape?", [corrupt], client=client)
    assert answer.startswith(f"{ERROR_MARK} Could not read 'corrupt.png' as an image"), answer
    assert "/" not in answer and "gradio" not in answer and "`" not in answer and "=" not in answer, answer
    assert context == "This message was not answered."
    path, question, expected = media["image_color"][0]
    answer = ask(demo_url, question, [path, corrupt], use_history=False)[0]  # the file at fault among several
    assert answer.startswith(f"{ERROR_MARK} Could not read 'corrupt.png' as an image"), answer
    # the same session (its history holds the failed turn, left out of later prompts) and a new one still answer
    path, question, expected = media["image_color"][0]
    answer, _, context, _ = ask(demo_url, question, [path], client=client)
    assert is_correct(answer, expected) and context.startswith("History on: no earlier exchange yet"), context
    assert is_correct(ask(demo_url, question, [path])[0], expected)


def test_too_long_sound_is_refused_in_user_terms(demo_url, tmp_path):
    import numpy as np
    import soundfile

    long_sound = tmp_path / "long.wav"
    soundfile.write(long_sound, np.zeros(16000 * 65, dtype=np.float32), 16000)  # the tiny model hears 60 s at most
    answer = ask(demo_url, "Is the tone high or low?", [long_sound], audio_is="sound", use_history=False)[0]
    assert answer.startswith(f"{ERROR_MARK} Could not use 'long.wav'"), answer
    assert "/" not in answer and "`" not in answer and "truncate" not in answer, answer


def test_unknown_file_type_and_empty_message(demo_url, media, tmp_path):
    document = tmp_path / "notes.txt"
    document.write_text("hello")
    with pytest.raises(gradio_client.exceptions.AppError, match="Invalid file type"):  # refused by the textbox
        ask(demo_url, "What is this?", [document])
    answer = ask(demo_url, "")[0]
    assert answer.startswith(ERROR_MARK) and "empty" in answer, answer
    path, question, expected = media["image_color"][0]
    assert is_correct(ask(demo_url, question, [path])[0], expected)


def test_history_is_stated_and_can_be_turned_off(demo_url, media):
    sum_question = make_example("text_add", "test", 5, SEED)["question"]
    alone = ask(demo_url, sum_question, use_history=False)[0]  # a fresh session: no history either way
    client = gradio_client.Client(demo_url, verbose=False)
    path, question, expected = media["image_color"][1]
    answer, _, context, _ = ask(demo_url, question, [path], client=client)
    assert is_correct(answer, expected) and context.startswith("History on: no earlier exchange yet")
    _, _, context, _ = ask(demo_url, sum_question, client=client)
    assert context.startswith("History on: this answer saw 1 earlier exchange of 1."), context
    answer, _, context, _ = ask(demo_url, sum_question, client=client, use_history=False)
    assert context.startswith("History off: this answer saw only this message."), context
    assert answer == alone  # the stateless answer of a session with history is the fresh session's answer


def test_typed_placeholder_is_text_through_the_demo(demo_url, media):
    """Unescaped, the typed `<image>` would be a second image placeholder for one image (refused) and `<video>` one
    with no video; escaped, both are text and the message is answered (what the model reads: the unit test above)."""
    path, question, _ = media["image_color"][0]
    for text, files in ((f"<image> {question} <video> </s>", [path]), ("What is <image>?", [])):
        answer, _, context, _ = ask(demo_url, text, files, use_history=False)
        assert answer.strip() and not answer.startswith(ERROR_MARK), answer
        assert context.startswith("History off: this answer saw only this message."), context


def test_history_is_trimmed_to_the_context_oldest_first(demo_url, media):
    client = gradio_client.Client(demo_url, verbose=False)
    path, question, expected = media["image_color"][0]
    assert is_correct(ask(demo_url, question, [path], client=client)[0], expected)
    long_text = "Tell me about this. " + "one two three four five six seven eight nine ten " * 90
    answers, contexts = [], []
    for _ in range(3):  # each long question takes about 1000 of the 2048 tokens: two do not fit together
        answer, _, context, _ = ask(demo_url, long_text, client=client, max_new_tokens=64)
        answers.append(answer)
        contexts.append(context)
    assert not answers[0].startswith(NOTE_MARK) and "left out" not in contexts[0], contexts[0]
    # the next ones do not fit beside the earlier turns: the oldest exchanges (the image one first, with its file)
    # are left out, and the answer says so
    note = re.compile(rf"^{NOTE_MARK} The (\d+) oldest exchanges? \(with 1 file\) (was|were) left out to fit the model's "
                      r"context of 2048 tokens\.\n\n")  # fmt: skip
    dropped = [int(note.match(answer).group(1)) for answer in answers[1:]]
    assert dropped[0] >= 1 and dropped[1] > dropped[0], answers
    for context in contexts:
        used, limit = map(int, re.search(r"Prompt: (\d+) of (\d+) tokens", context).groups())
        assert used + 64 <= limit, context
    assert "to fit the context left out" in contexts[2], contexts[2]
    # the session keeps answering, with one note (notes are stripped from the answers fed back as history)
    answer = ask(demo_url, question, [path], client=client)[0]
    assert answer.count(NOTE_MARK) == 1 and not answer.startswith(ERROR_MARK), answer


# ------------------------------------------------------------------------------- short-lived files, 8-bit, shutdown


def test_8bit_server_warns_once_and_leaves_no_files(tmp_path, media):
    pytest.importorskip("bitsandbytes")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # GRADIO_TEMP_DIR empty: the demo makes its own cache folder (in TMPDIR) and removes it at exit
    env = {"TMPDIR": str(scratch), "UNIMOE_DEMO_QUANTIZATION": "8bit", "GRADIO_TEMP_DIR": ""}
    path, question, expected = media["image_color"][0]
    with serve_demo(tmp_path, "--keep-files", "2", env=env) as url:
        caches = list(scratch.glob("unimoe-demo-*"))
        assert len(caches) == 1, list(scratch.iterdir())
        answer, plot, _, _ = ask(url, question, [path], max_new_tokens=16)
        assert is_correct(answer, expected), answer
        assert os.path.getsize(plot) > 1000
        assert any(p.name == Path(path).name for p in caches[0].rglob("*")), "the upload is in the demo's cache"
        deadline = time.monotonic() + 60
        while [p for p in caches[0].rglob("*") if p.is_file()]:  # --keep-files 2: gradio's delete_cache sweeps
            assert time.monotonic() < deadline, [str(p) for p in caches[0].rglob("*") if p.is_file()]
            time.sleep(0.5)
        log = next(tmp_path.glob("demo-*.log"))
    # stopped by SIGTERM: the cache folder is gone
    assert not list(scratch.glob("unimoe-demo-*")), list(scratch.iterdir())
    text = log.read_text()
    assert text.count("MatMul8bitLt: inputs will be cast") <= 1, text[-3000:]
    assert "Uni-MoE demo: stopping." in text


def test_busy_port_is_one_line_before_the_model_loads(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # the model does not exist: the port is checked first, so the message is about the port
        result = subprocess.run(
            [sys.executable, str(APP), "--port", str(port), "--model", str(tmp_path / "no-model")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
        )
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and f"port {port} on 127.0.0.1 is already in use" in lines[0], lines
