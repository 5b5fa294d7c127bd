"""The code stays readable: no module over ~300 lines, no function over ~60, stage two never imports torch,
and member kinds, blenders and poolings are reached through their registries (no import by string)."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT

MAX_FILE_LINES, MAX_FUNCTION_LINES = 320, 60


def modules():
    return sorted((ROOT / "stack").rglob("*.py"))


def test_no_module_over_300_lines_and_no_function_over_60():
    long_files = [(p.relative_to(ROOT), n) for p in modules() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not long_files, f"split these modules: {long_files}"
    long_functions = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long_functions, f"split these functions: {long_functions}"


def test_nothing_imports_a_module_named_in_a_string():
    offenders = [str(p.relative_to(ROOT)) for p in modules()
                 if "import_module(" in p.read_text() and p.name != "__init__.py"]
    assert not offenders, f"use a registry instead of importlib.import_module in {offenders}"


def test_stage_two_and_the_member_registry_import_without_torch():
    code = ("import sys, stack.blend.run, stack.blend.persist, stack.members, stack.report; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
