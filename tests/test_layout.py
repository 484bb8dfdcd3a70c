"""The repository's shape: file sizes, one import name per file, imports that point one way without a cycle, and a
README Layout that names every top-level folder. Read from the tracked files' text and their `import` statements."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO


# import-name prefix -> folder (pyproject's package-dir); every other package is imported by its folder's name
PACKAGE_DIRS = dict(
    re.findall(
        r'^"([\w.]+)" = "(\w+)"$',
        (REPO / "pyproject.toml").read_text().split("[tool.setuptools.package-dir]")[1],
        flags=re.MULTILINE,
    )  # fmt: skip
)
# folders whose files import each other by bare file name, as a Space or `python script.py` runs them (the tests'
# conftest puts them on sys.path)
SCRIPT_DIRS = ("demo", "recipes/transformers")
# the modeling file is the one file allowed over 600 lines (with its copy in the embedded checkpoint)
LONG_FILES = {"modeling_unimoe/modeling_unimoe.py", "checkpoints/uni-moe-tiny/modeling_unimoe.py"}


def tracked(pattern: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", pattern], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return out.split()


def resolve(name: str, importer: str) -> str | None:
    """The tracked file that `import name` means in `importer` (a repository path), or None (not ours)."""
    for prefix, folder in PACKAGE_DIRS.items():
        if name == prefix or name.startswith(prefix + "."):
            name = folder + name[len(prefix) :]
            break
    candidates = [name.replace(".", "/")]
    if importer.startswith((*SCRIPT_DIRS, "tests/")) and "." not in name:
        candidates += [f"{folder}/{name}" for folder in SCRIPT_DIRS]
    for base in candidates:
        for path in (f"{base}.py", f"{base}/__init__.py"):
            if (REPO / path).is_file():
                return path
    return None


def imports(path: str) -> list[tuple[str | None, str]]:
    """(name as written, file) of every import in `path` that means a file of this repository; relative imports
    (`from .sibling import x`) have no name of their own: None."""
    tree = ast.parse((REPO / path).read_text(), path)
    folder = Path(path).parent
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = folder.parents[node.level - 2] if node.level > 1 else folder
            base = base.joinpath(*(node.module or "").split(".")) if node.module else base
            for alias in node.names:
                target = next((f for f in (base / f"{alias.name}.py", base.with_suffix(".py")) if (REPO / f).is_file()),
                              None)  # fmt: skip
                if target is not None:
                    found.append((None, target.as_posix()))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:  # `from a import b`: the submodule a.b where b is one, else the module a
                names = [next((f"{node.module}.{a.name}" for a in node.names
                               if resolve(f"{node.module}.{a.name}", path)), node.module)]  # fmt: skip
            found += [(name, resolve(name, path)) for name in names if resolve(name, path)]
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, str]]]:
    return {path: imports(path) for path in tracked("*.py") if not path.startswith("checkpoints/")}


def test_no_file_but_the_modeling_file_is_over_600_lines_and_the_processor_under_500():
    lengths = {path: len((REPO / path).read_text().splitlines()) for path in tracked("*.py")}
    assert {path for path, n in lengths.items() if n > 600} == LONG_FILES
    assert lengths["processing/processing_unimoe.py"] < 500


def test_every_file_is_imported_by_one_name(graph):
    names: dict[str, set[str]] = {}
    for found in graph.values():
        for name, target in found:
            if name is not None:
                names.setdefault(target, set()).add(name)
    assert {target: sorted(n) for target, n in names.items() if len(n) > 1} == {}
    assert names["training/synthetic.py"] == {"modeling_unimoe.training.synthetic"}


def test_no_project_module_imports_the_tests_and_the_demo_only_the_routing_module_of_training(graph):
    sources = {path: found for path, found in graph.items() if not path.startswith("tests/")}
    assert [path for path, found in sources.items() if any(t.startswith("tests/") for _, t in found)] == []
    demo_uses = {t for path, found in sources.items() if path.startswith("demo/") for _, t in found}
    assert {t for t in demo_uses if t.startswith("training/")} == {"training/routing.py"}


def test_no_import_cycle(graph):
    edges = {
        path: {t for _, t in found if t != path} for path, found in graph.items() if not path.startswith("tests/")
    }
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_readme_layout_names_every_top_level_folder():
    layout = (REPO / "README.md").read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    folders = {path.split("/", 1)[0] for path in tracked("*") if "/" in path}
    named = set(re.findall(r"^- `([^`/]+)/`", layout, flags=re.MULTILINE))
    assert folders - named == set() and named - folders <= {"build"}
