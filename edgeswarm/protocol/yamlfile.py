"""Reading an operator's YAML (or JSON) file, with an error in one line.

PyYAML's own message spans several lines, a caret under an excerpt for each
of its marks; a node's log and a CLI's stderr want one sentence: the file,
the line and column, what was wrong.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from edgeswarm.errors import EdgeswarmError

if TYPE_CHECKING:
    import yaml


class YamlFileError(EdgeswarmError, ValueError):
    """A file that cannot be read or is not YAML; the message names the file and, for YAML, the line and column."""


MAX_FILE = 16 << 20  # bytes of a configuration file read at most (region maps and edge lists are kilobytes)


def read_yaml(path: Path, what: str) -> object:
    """The document in ``path`` (YAML, so JSON too); YamlFileError in one line, naming ``what`` it is, if it cannot be
    read or parsed."""
    import yaml  # here, not at the top: a peer and `edgeswarm get` import this module (via roles.announce) and read no YAML

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE + 1)  # a device (/dev/zero) or a huge file given by mistake was read until memory ran out
        if len(raw) > MAX_FILE:
            raise YamlFileError(f"{what} {path} is larger than {MAX_FILE >> 20} MiB: not a configuration file")
        return yaml.load(raw.decode("utf-8"), Loader=_unique_keys())
    except OSError as exc:
        raise YamlFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise YamlFileError(f"{what} {path} is not a text file (expected YAML or JSON in UTF-8)") from None
    except _given_twice() as exc:  # valid YAML, refused: "not valid YAML" misled an operator (a docs audit)
        raise YamlFileError(f"{what} {path}: {one_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise YamlFileError(f"{what} {path} is not valid YAML or JSON: {one_line(exc)}") from None


@functools.cache
def _given_twice() -> type[yaml.constructor.ConstructorError]:
    """The error of a key given twice: a class made once PyYAML is loaded (not at import: see read_yaml)."""
    import yaml

    return type("GivenTwice", (yaml.constructor.ConstructorError,), {})


@functools.cache
def _unique_keys() -> type[yaml.SafeLoader]:
    """PyYAML's safe loader, refusing a key written twice in one mapping: the last one won without a word, in files that
    refuse unknown keys and wrong types (``scan_interval: 2`` then ``scan_interval: 3``: an adversarial session)."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
            seen: set[object] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *defaults``: overriding what it merges is its point
                    continue
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str | int | float | bool) and key in seen:
                    raise _given_twice()(None, None, f"{key!r} is given twice", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeys


def one_line(exc: yaml.YAMLError) -> str:
    """PyYAML's error as ``line L, column C: problem`` (its marks count from 0)."""
    import yaml  # loaded already: ``exc`` is one of its errors

    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem or exc.context}"
    return " ".join(str(exc).split())
