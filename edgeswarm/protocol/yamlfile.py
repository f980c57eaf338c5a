"""Reading an operator's YAML (or JSON) file, with an error in one line.

PyYAML's own message spans several lines, a caret under an excerpt for each
of its marks; a node's log and a CLI's stderr want one sentence: the file,
the line and column, what was wrong.
"""

from __future__ import annotations

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
        return yaml.safe_load(raw.decode("utf-8"))
    except OSError as exc:
        raise YamlFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise YamlFileError(f"{what} {path} is not a text file (expected YAML or JSON in UTF-8)") from None
    except yaml.YAMLError as exc:
        raise YamlFileError(f"{what} {path} is not valid YAML or JSON: {one_line(exc)}") from None


def one_line(exc: yaml.YAMLError) -> str:
    """PyYAML's error as ``line L, column C: problem`` (its marks count from 0)."""
    import yaml  # loaded already: ``exc`` is one of its errors

    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem or exc.context}"
    return " ".join(str(exc).split())
