"""The layers' rules that import-linter cannot state in general, and the one error base.

pyproject.toml's contracts (run by ``lint-imports`` in ./dev test) forbid
each other layer and each third-party package the project uses today by
name; the import tests here catch any package at all, including one added
tomorrow.  The error test keeps every exception class edgeswarm defines under
``EdgeswarmError``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgeswarm
from edgeswarm.errors import EdgeswarmError, HttpError

ROOT = Path(edgeswarm.__file__).parent
FOUNDATION = "edgeswarm.errors"  # the one edgeswarm module every layer may import


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def outside(module: str, package: str) -> bool:
    """Neither the standard library, nor edgeswarm.errors, nor ``package`` (relative imports stay inside it)."""
    if module.startswith("."):
        return module.startswith("..")
    if module.split(".")[0] in sys.stdlib_module_names or module == FOUNDATION:
        return False
    return not (module == package or module.startswith(package + "."))


def test_policy_imports_only_the_standard_library_policy_and_errors():
    files = sorted((ROOT / "policy").glob("*.py"))
    assert len(files) > 1
    bad = {f.name: sorted(m for m in imported_modules(f) if outside(m, "edgeswarm.policy")) for f in files}
    assert {name: mods for name, mods in bad.items() if mods} == {}


def test_errors_imports_only_the_standard_library():
    assert sorted(m for m in imported_modules(ROOT / "errors.py") if outside(m, FOUNDATION)) == []
    assert sorted(m for m in imported_modules(ROOT / "wholefile.py") if outside(m, FOUNDATION)) == []


def test_the_import_check_sees_a_third_party_import_and_another_layer(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json\nfrom edgeswarm.policy import picker\nfrom edgeswarm.errors import HttpError\n\n"
        "def f():\n    import yaml\n    from edgeswarm.protocol import bitfield\n"
    )
    assert sorted(m for m in imported_modules(probe) if outside(m, "edgeswarm.policy")) == ["edgeswarm.protocol", "yaml"]


@functools.cache
def exception_classes() -> list[type[BaseException]]:
    """Every exception class defined in an edgeswarm module (``__main__`` would run the command, so it is left out)."""
    found = []
    for info in pkgutil.walk_packages([str(ROOT)], "edgeswarm."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found += [
            obj for obj in vars(module).values() if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == info.name
        ]
    return found


def test_every_edgeswarm_exception_derives_from_one_base():
    classes = exception_classes()
    assert len(classes) > 20
    assert sorted(c.__qualname__ for c in classes if not issubclass(c, EdgeswarmError)) == []


def test_errors_that_carry_a_status_are_http_errors():
    """UpstreamError and TokenError each carried status and message of their own; they are HttpErrors now."""
    from edgeswarm.node.upstream import UpstreamError
    from edgeswarm.trust.access import KeyRefused
    from edgeswarm.trust.tokens import TokenError

    statuses = {cls.__name__: cls(503, "why") for cls in (UpstreamError, TokenError, KeyRefused)}
    for exc in statuses.values():
        assert isinstance(exc, HttpError)
        assert (exc.status, exc.message, str(exc), exc.args) == (503, "why", "why", ("why",))


# what `edgeswarm get` and `edgeswarm peer` need not load to start: bench swarm --mode get starts 20 gets at once on
# two cores, and these cost each about 50 ms of CPU (YAML: region maps and scenarios; PyJWT with cryptography.x509:
# tokens and tickets, which an open-mode peer never checks; sqlite3: the edge's ledger)
NOT_AT_START = ("yaml", "jwt", "cryptography.x509", "sqlite3")


@pytest.mark.integration
def test_get_and_peer_start_without_yaml_jwt_or_sqlite():
    code = (
        "import sys\n"
        "from edgeswarm.cli import build_parser\n"
        "for command in ('get', 'peer'):\n"
        "    build_parser(command)\n"
        "import edgeswarm.roles.get, edgeswarm.roles.peer\n"
        f"print(' '.join(m for m in {NOT_AT_START!r} if m in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert loaded == []
