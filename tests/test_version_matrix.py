"""The transformers version matrix: tests/compat/check_version.py on checkpoints/uni-moe-tiny in one venv per
transformers version of `MATRIX`, compared with the same script run by this venv's python (the reference).

Each version's venv is build/venvs/tf-<version> (tests/compat/venvs.py: made with uv when its stamp is missing or
stale; `make test` makes them before pytest starts). The version this venv has gets no venv of its own: its report
is the reference.

One test per version and check (`test_check[<version>-<check>]`), the script run once per version. A test passes when
the check is "ok" (and is skipped, with its reason, when the script skipped it) and, on the other versions, when the
greedy tokens equal the reference's, the prefill logits are within `LOGITS_ATOL` of them and the pipelines' replies
are the same. The reports (JSON and logits), the scripts' logs and a version x check table (matrix.md) are written
to build/compat/.
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.compat.check_version import CHECKS
from tests.compat.venvs import MAIN, MATRIX, VenvError, ensure_venv, version_key
from tests.helpers import REPO, TINY_CHECKPOINT


SCRIPT = REPO / "tests" / "compat" / "check_version.py"
FOLDER = TINY_CHECKPOINT
REPORTS = REPO / "build" / "compat"
VERSIONS = sorted({*MATRIX, MAIN}, key=version_key)

CHECK_TIMEOUT = 600  # seconds, per run of the script (about 5 s warm)
LOGITS_ATOL = 1e-5  # fp32 logits of the same weights through two transformers versions


class MatrixError(Exception):
    """A version's script run failed: every check of that version fails with this message."""


# ------------------------------------------------------------------------------------------------------------ checks


def run_checks(python: Path, version: str) -> dict:
    """Run the script with `python`; its report, with the logits (numpy arrays) under "logits"."""
    from safetensors.numpy import load_file

    REPORTS.mkdir(parents=True, exist_ok=True)
    report_file, log_file = REPORTS / f"transformers-{version}.json", REPORTS / f"transformers-{version}.log"
    report_file.unlink(missing_ok=True)
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["HF_HUB_OFFLINE"] = "1"
    start = time.perf_counter()
    try:
        result = subprocess.run(
            [str(python), str(SCRIPT), str(FOLDER), str(report_file)],
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT,
            cwd=REPORTS,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise MatrixError(f"{SCRIPT.name} ran for more than {CHECK_TIMEOUT} s") from None
    seconds = round(time.perf_counter() - start, 1)
    log_file.write_text(result.stdout + result.stderr)
    if result.returncode or not report_file.is_file():
        raise MatrixError(f"{SCRIPT.name} exited with {result.returncode} (log: {log_file}):\n{result.stderr[-3000:]}")
    report = json.loads(report_file.read_text())
    report["logits"] = load_file(str(report_file.with_name(report["logits_file"])))
    report["run_seconds"] = seconds
    installed = report["versions"]["transformers"]
    if installed != version:
        raise MatrixError(f"{python} has transformers {installed}, expected {version}")
    return report


def report_of(version: str) -> dict | Exception:
    """The version's report, or the error that stopped it."""
    try:
        python, created = (Path(sys.executable), None) if version == MAIN else ensure_venv(version)
        report = run_checks(python, version)
    except (MatrixError, VenvError) as error:
        return error
    report["venv_seconds"] = created
    return report


@pytest.fixture(scope="module")
def matrix(request):
    """version -> its report (or the error that stopped it). The selected versions run two at a time (each run is one
    process that mostly imports) from the first use on; a version x check table is written to build/compat/matrix.md
    at the end."""
    selected = {item.callspec.params["version"] for item in request.session.items
                if item.originalname == "test_check" and hasattr(item, "callspec")}  # fmt: skip
    pool, futures = ThreadPoolExecutor(max_workers=2), {}

    def get(version: str) -> dict:
        if not futures:  # the reference too: every other version is compared with it
            futures.update({v: pool.submit(report_of, v) for v in VERSIONS if v in selected | {version, MAIN}})
        if version not in futures:
            futures[version] = pool.submit(report_of, version)
        report = futures[version].result()
        if isinstance(report, Exception):
            role = " (the reference)" if version == MAIN else ""
            pytest.fail(f"transformers {version}{role}: {report}", pytrace=False)
        return report

    yield get
    pool.shutdown(wait=True)
    if futures:
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / "matrix.md").write_text(results_table({v: future.result() for v, future in futures.items()}))


def results_table(reports: dict) -> str:
    """A markdown table, one column per version: each check's result ("ok", "skipped [n]", "failed [n]", [n] being
    the numbered message under the table), then the seconds to make the venv (when it was made) and to run the
    script."""
    versions = sorted(reports, key=version_key)
    messages = []

    def cell(result: str) -> str:
        if result == "ok":
            return result
        if result not in messages:
            messages.append(result)
        return f"{result.split(':')[0]} [{messages.index(result) + 1}]"

    header = "| check | " + " | ".join(f"{v} (reference)" if v == MAIN else v for v in versions) + " |"
    rows = [header, "|---" * (len(versions) + 1) + "|"]
    for check in CHECKS:
        cells = []
        for version in versions:
            report = reports[version]
            if isinstance(report, Exception):
                cells.append(cell(f"not run: {' '.join(str(report).split())[:300]}"))
            else:
                cells.append(cell(report["checks"].get(check, "not run: not in the report")))
        rows.append(f"| {check} | " + " | ".join(cells) + " |")
    for key, name in (("venv_seconds", "venv made (s)"), ("run_seconds", "checks run (s)")):
        values = [r.get(key) if isinstance(r, dict) else None for r in (reports[v] for v in versions)]
        rows.append(f"| {name} | " + " | ".join("" if x is None else f"{x:g}" for x in values) + " |")
    notes = [f"{i}. {message}" for i, message in enumerate(messages, 1)]
    return "\n".join(rows) + "\n\n" + "\n".join(notes) + ("\n" if notes else "")


def compare_with_reference(version: str, check: str, report: dict, reference: dict) -> str | None:
    """Where the check has them: greedy tokens equal, prefill logits within LOGITS_ATOL, pipeline replies equal.
    What differs, or None."""
    import numpy as np

    against = f"the reference (transformers {MAIN})"
    if check.startswith("generate_"):
        if reference["checks"][check] != "ok":
            return f"cannot compare, {against} {reference['checks'][check]}"
        modality = check.removeprefix("generate_")
        tokens, expected = report["tokens"][modality], reference["tokens"][modality]
        if tokens != expected:
            return f"greedy tokens {tokens}, {against} {expected}"
        logits, expected = report["logits"][f"logits.{modality}"], reference["logits"][f"logits.{modality}"]
        difference = float(np.abs(logits - expected).max())
        if not difference <= LOGITS_ATOL:
            return f"prefill logits differ from {against} by up to {difference:.2e} (allowed {LOGITS_ATOL:g})"
    elif check in report["texts"]:
        if check not in reference["texts"]:
            return f"cannot compare, {against} {reference['checks'][check]}"
        reply, expected = report["texts"][check], reference["texts"][check]
        if reply != expected:
            return f"reply {reply!r}, {against} {expected!r}"
    return None


@pytest.mark.parametrize(
    "version, check", [(v, c) for v in VERSIONS for c in CHECKS], ids=[f"{v}-{c}" for v in VERSIONS for c in CHECKS]
)
def test_check(matrix, version, check):
    report = matrix(version)
    result = report["checks"][check]
    if result.startswith("skipped: "):
        pytest.skip(f"transformers {version}, {check}: {result.removeprefix('skipped: ')}")
    if result != "ok":
        pytest.fail(f"transformers {version}, {check}: {result}", pytrace=False)
    difference = None if version == MAIN else compare_with_reference(version, check, report, matrix(MAIN))
    if difference:
        pytest.fail(f"transformers {version}, {check}: {difference}", pytrace=False)
