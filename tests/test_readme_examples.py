"""Every Python example of README.md runs as written, against the shipped checkpoints/uni-moe-tiny.

The rule:

- A step is a fenced ```python block of README.md, or a call in a table row (an inline code span such as
  `ask(text=..., images="cat.jpg")`) of a function that a block of the same section defines.
- A section is the text under one heading (`#`, `##` or `###`). Its steps run in order in one fresh Python process,
  in one namespace, as a reader would paste them into one session: a step may use what the section's earlier steps
  defined, never what another section defined. The first failure ends the section; its later steps are reported as
  not run.
- The process runs in a temporary folder that holds what the examples name: `checkpoints/uni-moe-tiny` (a copy of
  the shipped model) and small media files made here (`cat.jpg`, `clip.mp4`, `question.wav`, `q.wav`,
  `beeps.flac`). The Hub is offline (`HF_HUB_OFFLINE=1`).
- `<!-- readme-test: skip REASON -->` on the last non-blank line before a block's opening fence skips that block
  (e.g. one that needs a GPU or the Hub); the reason is shown in the test report.

Each step is one test, named after its README line and section.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from tests.helpers import REPO, TINY_CHECKPOINT
from tests.processing.processing_helpers import sine, write_audio, write_image, write_video


README = REPO / "README.md"
HEADING = re.compile(r"^(#{1,3}) +(.+?)\s*$")
FENCE = re.compile(r"^```(\S*)\s*$")
SKIP = re.compile(r"^<!--\s*readme-test:\s*skip\b\s*(.*?)\s*-->\s*$")
CODE_SPAN = re.compile(r"`([^`]+)`")
DEFINED = re.compile(r"^def +([A-Za-z_]\w*) *\(", re.MULTILINE)
SECTION_TIMEOUT = 300


@dataclass
class Step:
    section: str
    line: int  # 1-based line of README.md where the code starts
    kind: str  # "block" or "call"
    code: str
    skip: str | None = None

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")[:40]
        return f"L{self.line}-{self.kind}-{slug}"


def readme_steps(text: str) -> list[Step]:
    """The steps of README.md in order (see the module docstring)."""
    lines = text.splitlines()
    steps, section, i = [], "(top)", 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise AssertionError(f"README.md:{i + 1}: a code block is never closed")
            if fence.group(1) == "python":
                before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
                skip = SKIP.match(before.strip())
                code = "\n".join(lines[i + 1 : end]) + "\n"
                steps.append(Step(section, i + 2, "block", code, skip.group(1) or "no reason given" if skip else None))
            i = end + 1
            continue
        heading = HEADING.match(line)
        if heading:
            section = heading.group(2)
        elif line.startswith("|"):
            defined = {
                name
                for step in steps
                if step.section == section and not step.skip
                for name in DEFINED.findall(step.code)
            }
            for span in CODE_SPAN.findall(line):
                call = re.match(r"([A-Za-z_]\w*)\(", span)
                if call and call.group(1) in defined:
                    steps.append(Step(section, i + 1, "call", span + "\n"))
        i += 1
    return steps


STEPS = readme_steps(README.read_text())

# one process per section: runs the steps in order in one namespace, writes one result per step
DRIVER = r"""
import json, sys, traceback
steps = json.load(open(sys.argv[1]))
results, namespace, failed = [], {"__name__": "__main__"}, None
for step in steps:
    if failed is not None:
        results.append({"status": "not run", "line": step["line"], "error": f"README.md:{failed}, earlier in the section, failed"})
        continue
    print(f"--- README.md:{step['line']}", flush=True)
    try:
        exec(compile(step["code"], f"README.md:{step['line']}", "exec"), namespace)
        results.append({"status": "passed", "line": step["line"]})
    except BaseException as error:
        frames = traceback.format_exception(error)
        results.append({"status": "failed", "line": step["line"], "error": frames[-1] + "".join(frames[-12:])})
        failed = step["line"]
    json.dump(results, open(sys.argv[2], "w"))
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The folder the examples run in: the shipped model and the media files they name."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(TINY_CHECKPOINT, root / "checkpoints" / "uni-moe-tiny")
    write_image(root / "cat.jpg", color=(200, 120, 40), size=(64, 48))
    write_video(root / "clip.mp4", num_frames=12)
    speech = sine(2.0, freq=300)
    write_audio(root / "question.wav", speech)
    write_audio(root / "q.wav", speech)
    beeps = np.concatenate([sine(0.2, sr=44100, freq=2000), np.zeros(8820, np.float32)] * 3)
    write_audio(root / "beeps.flac", beeps, sr=44100, format="FLAC")
    return root


@pytest.fixture(scope="module")
def section_results(workdir):
    """Runs each section once (on first use); maps a step's line to its result."""
    done = {}

    def result(section: str) -> dict:
        if section not in done:
            steps = [s for s in STEPS if s.section == section and not s.skip]
            slug = re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-")[:40] or "top"
            steps_file, results_file = workdir / f".steps-{slug}.json", workdir / f".results-{slug}.json"
            steps_file.write_text(json.dumps([{"line": s.line, "code": s.code} for s in steps]))
            env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
            env.pop("PYTHONPATH", None)
            try:
                process = subprocess.run(
                    [sys.executable, "-c", DRIVER, str(steps_file), str(results_file)],
                    cwd=workdir,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=SECTION_TIMEOUT,
                )
                output = (process.stdout + process.stderr)[-3000:]
            except subprocess.TimeoutExpired as error:
                output = f"the section ran past {SECTION_TIMEOUT} s: {error}"
            results = json.loads(results_file.read_text()) if results_file.is_file() else []
            by_line = {r["line"]: r for r in results}
            for s in steps:
                by_line.setdefault(s.line, {"status": "not run", "error": f"the process ended early:\n{output}"})
            done[section] = by_line
        return done[section]

    return result


def test_the_readme_has_python_examples():
    blocks = [s for s in STEPS if s.kind == "block"]
    assert len(blocks) >= 4 and any(s.kind == "call" for s in STEPS), [s.id for s in STEPS]


def test_the_step_rule():
    text = "\n".join(
        [
            "# Top",
            "```python",
            "def ask(x):",
            "    return x",
            "```",
            "| a | `ask(1)` or `other(2)` |",
            "## Next",
            "<!-- readme-test: skip needs a GPU -->",
            "```python",
            "import torch",
            "```",
            "```bash",
            "ask(3)",
            "```",
            "| b | `ask(4)` |",
        ]
    )
    steps = readme_steps(text)
    assert [(s.section, s.line, s.kind, s.code, s.skip) for s in steps] == [
        ("Top", 3, "block", "def ask(x):\n    return x\n", None),
        ("Top", 6, "call", "ask(1)\n", None),
        ("Next", 10, "block", "import torch\n", "needs a GPU"),
    ]


@pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])
def test_readme_example_runs_as_written(step, section_results):
    if step.skip:
        pytest.skip(f"README.md:{step.line}: {step.skip}")
    result = section_results(step.section)[step.line]
    assert result["status"] == "passed", f"README.md:{step.line} ({step.section}):\n{step.code}\n{result['error']}"
