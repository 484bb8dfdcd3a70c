"""transformers' own common model tests (ModelTesterMixin & co.) for the installed transformers version, at test time.

Nothing of transformers' test suite is committed here. `load()` fetches it once per transformers version into
`build/transformers-src-<version>/hf_tests/` and imports it as the package `hf_tests`, a name that cannot collide with
this repository's own `tests` package (transformers' test files import each other relatively, `from
.test_modeling_common import ...`, so the folder only has to be a package; its name does not matter).

Where the files come from, first match wins:

1. `$TRANSFORMERS_TESTS_DIR`: the `tests/` folder of a transformers source checkout at the installed version's tag.
   It is complete: `generation/test_utils.py` (GenerationTesterMixin), `exporters/`, `models/`, ... are all there.
2. The cache `build/transformers-src-<version>/hf_tests/` of an earlier fetch.
3. The source distribution on PyPI: `pip download transformers==<version> --no-binary :all: --no-deps`, of which only
   `tests/` is extracted. The sdist ships only the top-level `tests/*.py` (`test_modeling_common.py`,
   `test_configuration_common.py`, ...), not the sub-packages they import. The three imported ones are replaced by
   stand-ins written next to them, each marked `UNIMOE_STAND_IN = True`:
   `exporters/test_export.py` (an empty `ExportTesterMixin`: no export tests), `generation/test_utils.py` (an empty
   `GenerationTesterMixin`: no generate tests; `generation_tests_available()` says so) and
   `utils/test_configuration_utils.py` (`config_common_kwargs`, the shared config kwargs `ConfigTester` checks).

`load()` raises `TransformersTestsUnavailable` with the reason when none of this works (no network, pip failing, a
missing test dependency such as `parameterized`); the test module turns it into a module-level skip.
"""

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path

import transformers


PACKAGE = "hf_tests"
ROOT = Path(__file__).resolve().parents[3]
DOWNLOAD_TIMEOUT_S = 300
# test_modeling_common imports these sub-packages, which the PyPI sdist does not ship
STAND_INS = {
    "exporters/test_export.py": '''"""Stand-in written by tests/models/unimoe/transformers_tests.py: the PyPI sdist has no tests/exporters/."""

UNIMOE_STAND_IN = True


class ExportTesterMixin:
    """transformers' export tests (torch.export, ONNX, ExecuTorch) are not in the PyPI sdist."""
''',
    "generation/test_utils.py": '''"""Stand-in written by tests/models/unimoe/transformers_tests.py: the PyPI sdist has no tests/generation/."""

UNIMOE_STAND_IN = True


class GenerationTesterMixin:
    """transformers' generate() tests are not in the PyPI sdist; set TRANSFORMERS_TESTS_DIR to a checkout's tests/."""
''',
    # the shared PreTrainedConfig kwargs, each set to a non-default value, that ConfigTester.check_config_arguments_init
    # passes to the config class and reads back
    "utils/test_configuration_utils.py": '''"""Stand-in written by tests/models/unimoe/transformers_tests.py: the PyPI sdist has no tests/utils/."""

UNIMOE_STAND_IN = True

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
''',
}


class TransformersTestsUnavailable(RuntimeError):
    """transformers' test files could not be fetched or imported; the message says why."""


def installed_version() -> str:
    return transformers.__version__


def cache_dir(version: str | None = None) -> Path:
    return ROOT / "build" / f"transformers-src-{version or installed_version()}"


def _download_sdist(version: str, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"transformers=={version}",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--disable-pip-version-check",
        "--retries",
        "2",
        "--timeout",
        "30",
        "-d",
        str(into),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        raise TransformersTestsUnavailable(
            f"`pip download transformers=={version}` (the source distribution, for its tests/) took over "
            f"{DOWNLOAD_TIMEOUT_S} s"
        ) from error
    archives = sorted(into.glob(f"transformers-{version}.tar.gz"))
    if result.returncode != 0 or not archives:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
        raise TransformersTestsUnavailable(
            f"`pip download transformers=={version} --no-binary :all:` failed (exit {result.returncode}); is PyPI "
            f"reachable? Last lines:\n{tail}"
        )
    return archives[0]


def _extract_tests(archive: Path, into: Path) -> list[str]:
    """Extract `<top>/tests/**` of the sdist into `into`; returns the extracted relative paths."""
    extracted = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 3 or parts[1] != "tests" or not member.isfile():
                continue
            relative = Path(*parts[2:])
            if ".." in relative.parts:
                continue
            target = into / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
            extracted.append(relative.as_posix())
    if "test_modeling_common.py" not in extracted:
        raise TransformersTestsUnavailable(f"{archive.name} has no tests/test_modeling_common.py")
    return extracted


def _make_package(folder: Path) -> list[str]:
    """Write the stand-ins for what is missing and an empty __init__.py in every folder; returns the stand-ins."""
    written = []
    for relative, text in STAND_INS.items():
        target = folder / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            written.append(relative)
    for directory in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        if directory.name != "__pycache__" and not (directory / "__init__.py").exists():
            (directory / "__init__.py").write_text("")
    return written


def fetch(version: str | None = None) -> Path:
    """The folder of transformers' tests/ for `version` (default: installed), downloading it on first use."""
    version = version or installed_version()
    override = os.environ.get("TRANSFORMERS_TESTS_DIR")
    if override:
        folder = Path(override)
        if not (folder / "test_modeling_common.py").is_file():
            raise TransformersTestsUnavailable(
                f"TRANSFORMERS_TESTS_DIR={override} has no test_modeling_common.py (point it at a transformers "
                "checkout's tests/ folder)"
            )
        return folder
    cache = cache_dir(version)
    folder = cache / PACKAGE
    if (cache / "SOURCE.json").is_file() and (folder / "test_modeling_common.py").is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            scratch = Path(scratch)
            archive = _download_sdist(version, scratch)
            staging = scratch / PACKAGE
            extracted = _extract_tests(archive, staging)
            stand_ins = _make_package(staging)
            if folder.exists():
                shutil.rmtree(folder)
            try:
                staging.rename(folder)  # same file system: a whole folder or none
            except OSError:
                if not (folder / "test_modeling_common.py").is_file():  # else a concurrent fetch won: use its copy
                    raise
            (cache / "SOURCE.json").write_text(
                json.dumps(
                    {
                        "transformers": version,
                        "source": f"PyPI sdist {archive.name} (pip download --no-binary :all:)",
                        "extracted": sorted(extracted),
                        "stand_ins": stand_ins,
                        "fetch_seconds": round(time.monotonic() - started, 1),
                    },
                    indent=2,
                )
            )
    except BaseException:
        if not any(cache.iterdir()):
            cache.rmdir()
        raise
    return folder


def load(version: str | None = None) -> types.SimpleNamespace:
    """Fetch and import transformers' test modules as `hf_tests.*`; returns them (test_modeling_common,
    test_configuration_common, generation_test_utils) and the folder they come from."""
    for requirement in ("parameterized", "pytest"):
        if importlib.util.find_spec(requirement) is None:
            raise TransformersTestsUnavailable(
                f"transformers' test files need `{requirement}` (pip install {requirement}; it is in the `dev` extra)"
            )
    folder = fetch(version).resolve()
    existing = sys.modules.get(PACKAGE)
    if existing is not None and Path(existing.__path__[0]).resolve() != folder:
        raise TransformersTestsUnavailable(f"`{PACKAGE}` is already imported from {existing.__path__[0]}")
    if existing is None:
        init = folder / "__init__.py"
        if not init.exists():  # a checkout given by TRANSFORMERS_TESTS_DIR has one; anything else gets one
            init.write_text("")
        spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
    try:
        modules = types.SimpleNamespace(
            folder=folder,
            test_modeling_common=importlib.import_module(f"{PACKAGE}.test_modeling_common"),
            test_configuration_common=importlib.import_module(f"{PACKAGE}.test_configuration_common"),
            generation_test_utils=importlib.import_module(f"{PACKAGE}.generation.test_utils"),
        )
    except ImportError as error:  # e.g. a test file importing something this transformers lacks
        raise TransformersTestsUnavailable(f"importing transformers' tests from {folder} failed: {error!r}") from error
    return modules


def generation_tests_available(modules: types.SimpleNamespace) -> bool:
    """False when GenerationTesterMixin is the sdist stand-in (no generate tests)."""
    return not getattr(modules.generation_test_utils, "UNIMOE_STAND_IN", False)


def export_tests_available(modules: types.SimpleNamespace) -> bool:
    return not getattr(sys.modules.get(f"{PACKAGE}.exporters.test_export"), "UNIMOE_STAND_IN", False)


if __name__ == "__main__":  # python tests/models/unimoe/transformers_tests.py: fetch, import, say where from
    loaded = load()
    print(f"transformers {installed_version()} tests in {loaded.folder}")
    print(f"generate tests: {'yes' if generation_tests_available(loaded) else 'no (stand-in)'}")
    print(f"export tests: {'yes' if export_tests_available(loaded) else 'no (stand-in)'}")
