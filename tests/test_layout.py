"""The shape of the code, checked: imports follow the layers of docs/design.md (`lint-imports`
with the contracts in pyproject.toml), and no function in src/ is longer than 60 lines."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "llm_switch"
MAX_LINES = 60


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """(name, first line, lines) of each function or method in `source` longer than `limit`
    lines, from its `def` to its last line (decorators not counted, nested functions included)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                out.append((node.name, node.lineno, lines))
    return sorted(out, key=lambda f: f[1])


def _body(n: int) -> str:
    return "".join(f"    x{i} = {i}\n" for i in range(n))


@pytest.mark.parametrize("source,expected", [
    ("def f():\n" + _body(59), []),  # 60 lines with its def
    ("def f():\n" + _body(60), [("f", 1, 61)]),
    ("async def f():\n" + _body(60), [("f", 1, 61)]),
    ("class A:\n    def m(self):\n" + "    " + _body(60).replace("\n    ", "\n        "), [("m", 2, 61)]),
    ("@decorator\ndef f():\n" + _body(59), []),
    ("def outer():\n    def inner():\n" + _body(59).replace("    ", "        ") + "    return inner\n",
     [("outer", 1, 62)]),
    ("f = lambda: 1\n" * 100, []),
])
def test_long_functions_counts_from_def_to_last_line(source, expected):
    assert long_functions(source) == expected


def test_no_function_in_src_is_longer_than_60_lines():
    found = [f"{path.relative_to(ROOT)}:{line} {name} ({lines} lines)"
             for path in sorted(SRC.rglob("*.py"))
             for name, line, lines in long_functions(path.read_text(encoding="utf-8"))]
    assert not found, "split these into functions of one job each:\n" + "\n".join(found)


def test_imports_keep_the_layers_of_design_md():
    """The contracts in pyproject.toml ([tool.importlinter]); CI runs only pytest, so here."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "lint-imports is missing: pip install -e '.[test]' (import-linter)"
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
