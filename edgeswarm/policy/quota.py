"""Per-user publishing quotas: how many bytes a user may keep published, decided without I/O.

A user's usage is what the origin publishes under their prefix plus what
their unfinished uploads have declared: an upload reserves its whole declared
length when it starts, so two uploads at once cannot both fit in the room
left for one.  Replacing a file frees the old version's bytes.  The origin
feeds this class the sizes; the class only adds and compares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from edgeswarm.errors import HttpError


class QuotaExceeded(HttpError):
    """413: the upload would take the user past their quota; the message gives the figures."""


@dataclass(frozen=True)
class QuotaPolicy:
    """``default`` bytes per user (0: nobody may publish), ``per_user`` overrides by user name."""

    default: int
    per_user: Mapping[str, int] = field(default_factory=dict)

    def limit(self, user: str) -> int:
        """The user's quota in bytes."""
        return self.per_user.get(user, self.default)

    def usage(self, published: Mapping[str, int], pending: Mapping[str, int], path: str) -> int:
        """Bytes the user holds once ``path`` is replaced: published files and other uploads' reservations, ``path`` left out."""
        return sum(n for p, n in published.items() if p != path) + sum(n for p, n in pending.items() if p != path)

    def check(self, user: str, published: Mapping[str, int], pending: Mapping[str, int], path: str, length: int) -> None:
        """Raise QuotaExceeded unless ``length`` more bytes at ``path`` fit in the user's quota.

        ``published``: the user's published files by path, with their sizes;
        ``pending``: the declared lengths of the user's unfinished uploads.
        """
        limit = self.limit(user)
        if limit <= 0:
            raise QuotaExceeded(403, f"user {user} may not publish on this origin (quota 0)")
        used = self.usage(published, pending, path)
        if used + length > limit:
            raise QuotaExceeded(
                413,
                f"quota exceeded: user {user} holds {used} bytes of a {limit}-byte quota, "
                f"and {path} needs {length} more (at most {max(0, limit - used)} fit)",
            )
