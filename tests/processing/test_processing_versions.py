"""The Hub processor files under every transformers in build/venvs/tf-*/ (4.57, 5.0, 5.19, 5.25, ...): each loads the
exported folder with AutoProcessor (remote code) and runs tests/processing/processor_version_dump.py; its model inputs, rendered
prompts, decoded texts, tokens and error messages must equal the main interpreter's exactly (bit for bit), and both
pipelines (`unimoe-any-to-text`, `image-text-to-text`) must answer. A converted folder's processor (a LLaMA
SentencePiece tokenizer with the original's preprocessing, written by the converter here) is dumped and compared
too."""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from modeling_unimoe.processing.export import PROCESSOR_HUB_FILES
from tests.helpers import REPO, TINY_CHECKPOINT
from tests.processing.processing_helpers import sine, write_audio, write_image, write_video
from tests.processing.test_processor_faithfulness import write_converted_processor, write_release_tokenizer


DUMP = REPO / "tests" / "processing" / "processor_version_dump.py"
VENVS = sorted(path.parents[1] for path in REPO.glob("build/venvs/tf-*/bin/python"))
# strings that may differ between versions: the files a save writes (4.x adds special_tokens_map.json) and the
# pipelines' replies (greedy decoding of the model, which is not what this test compares: checked to be text)
NOT_COMPARED = {"reloaded_files", "pipelines"}
REQUIRED_FILES = {"processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                  *PROCESSOR_HUB_FILES}  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The tiny checkpoint with this tree's Hub files: the processor's (`PROCESSOR_HUB_FILES`), pipeline_unimoe.py,
    chat_template.jinja and the modeling files (the pipelines need the model)."""
    out = tmp_path_factory.mktemp("unimoe-tiny") / "uni-moe-tiny"
    shutil.copytree(TINY_CHECKPOINT, out)
    for name in (*PROCESSOR_HUB_FILES, "pipeline_unimoe.py", "chat_template.jinja"):
        shutil.copyfile(REPO / "processing" / name, out / name)
    for name in ("modeling_unimoe.py", "configuration_unimoe.py"):
        shutil.copyfile(REPO / "modeling_unimoe" / name, out / name)
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A converted folder's processor files (tokenizer.json saved by this transformers, this tree's processing
    code)."""
    release = write_release_tokenizer(tmp_path_factory.mktemp("release"))
    return write_converted_processor(tmp_path_factory.mktemp("converted"), release)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("version-media")
    write_image(root / "red.png", size=(72, 40))
    write_video(root / "clip.mp4", num_frames=12)
    write_audio(root / "speech.wav", sine(4.0, freq=300))  # two 3 s chunks
    write_audio(root / "beeps.flac", sine(1.0, sr=44100, freq=2000), sr=44100, format="FLAC")
    return root


def dump(python, folder, media, out, converted):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(out / "modules"),  # each interpreter its own copy of the remote code
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    result = subprocess.run(
        [str(python), str(DUMP), str(folder), str(media), str(out), str(converted)],
        capture_output=True,
        text=True,
        cwd=out,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, f"{python}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    arrays = np.load(out / "arrays.npz")
    report = json.loads((out / "strings.json").read_text(encoding="utf-8"))
    assert report["versions"]["processor"].startswith("transformers_modules."), report["versions"]
    assert REQUIRED_FILES <= set(report["strings"]["reloaded_files"]), report["strings"]["reloaded_files"]
    replies = report["strings"]["pipelines"]
    assert replies["pipeline_class"] == "UniMoEPipeline", replies
    texts = [replies["any_to_text"], *replies["any_to_text_batch"], replies["image_text_to_text"]]
    assert len(texts) == 4 and all(isinstance(text, str) for text in texts), replies
    assert report["strings"]["converted"]["settings"] == [True, 480_001, "last_sample"], report["strings"]["converted"]
    return {key: arrays[key] for key in arrays.files}, report


@pytest.fixture(scope="module")
def dumps(folder, media, converted, tmp_path_factory):
    """Every interpreter's dump, two at a time (each is one process that mostly imports): the main interpreter's under
    "main", the others under their venv's name. Values are futures of `dump`'s result."""
    pythons = {"main": Path(sys.executable), **{venv.name: venv / "bin" / "python" for venv in VENVS}}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(dump, python, folder, media, tmp_path_factory.mktemp(f"dump-{name}"), converted)
            for name, python in pythons.items()
        }
        yield futures


@pytest.fixture(scope="module")
def reference(dumps):
    """The main interpreter's dump (the pinned transformers): the values every other version must reproduce."""
    arrays, report = dumps["main"].result()
    # within one interpreter: the save_pretrained + AutoProcessor round trip gives the same inputs
    for key in [k for k in arrays if k.startswith("chat_paths/")]:
        np.testing.assert_array_equal(arrays[key], arrays["roundtrip/" + key.split("/", 1)[1]])
    assert report["strings"]["reloaded_rendered"] == report["strings"]["rendered"]["chat_paths"]
    return arrays, report


@pytest.mark.parametrize("venv", VENVS or [None], ids=[path.name for path in VENVS] or ["none"])
def test_processor_outputs_equal_across_transformers_versions(venv, dumps, reference):
    if venv is None:
        pytest.skip("no interpreters under build/venvs/tf-*/ (one venv per transformers version to compare)")
    expected_arrays, expected = reference
    arrays, report = dumps[venv.name].result()
    versions = report["versions"]
    assert sorted(arrays) == sorted(expected_arrays), versions
    different = []
    for key, want in expected_arrays.items():
        got = arrays[key]
        if got.dtype != want.dtype or got.shape != want.shape:
            different.append(f"{key}: {got.dtype}{got.shape} != {want.dtype}{want.shape}")
        elif not np.array_equal(got, want):
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            different.append(f"{key}: {int((diff > 0).sum())} of {diff.size} values differ (max {diff.max():.3g})")
    assert not different, f"transformers {versions['transformers']} vs {expected['versions']['transformers']}:\n" + (
        "\n".join(different)
    )
    for name, value in expected["strings"].items():
        if name not in NOT_COMPARED:
            assert report["strings"][name] == value, f"{name} differs under transformers {versions['transformers']}"
