"""The layers' rule that import-linter cannot state in general: policy imports only the standard library.

pyproject.toml's contracts (run by ``lint-imports`` in ./dev test) forbid
each other layer and each third-party package the project uses today by
name; this test catches any package at all, including one added tomorrow.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import edgeswarm

POLICY = Path(edgeswarm.__file__).parent / "policy"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def outside_policy(module: str) -> bool:
    """Neither the standard library nor edgeswarm.policy (relative imports stay inside the package)."""
    if module.startswith("."):
        return module.startswith("..")
    top = module.split(".")[0]
    return top not in sys.stdlib_module_names and not (module == "edgeswarm.policy" or module.startswith("edgeswarm.policy."))


def test_policy_imports_only_the_standard_library_and_policy():
    files = sorted(POLICY.glob("*.py"))
    assert len(files) > 1
    bad = {f.name: sorted(m for m in imported_modules(f) if outside_policy(m)) for f in files}
    assert {name: mods for name, mods in bad.items() if mods} == {}


def test_the_check_sees_a_third_party_import_and_another_layer(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import json\nfrom edgeswarm.policy import picker\n\ndef f():\n    import yaml\n    from edgeswarm.protocol import bitfield\n")
    assert sorted(m for m in imported_modules(probe) if outside_policy(m)) == ["edgeswarm.protocol", "yaml"]
