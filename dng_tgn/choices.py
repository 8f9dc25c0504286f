"""Reading an enum choice from a run config, where it arrives as its name (Sacred configs are JSON)."""
from __future__ import annotations

from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)

__all__ = ["parse_choice"]


def parse_choice(cls: type[E], value, what: str, *, error: type[Exception] = ValueError, also: str = "") -> E:
    """``value`` (a member, or its value in any case) -> member of ``cls``; otherwise ``error`` naming ``what``
    and listing the valid values (``also`` adds e.g. " or None" where the caller accepts that too)."""
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).strip().lower())
    except ValueError:
        valid = ", ".join(repr(m.value) for m in cls)
        raise error(f"unknown {what} {value!r}; valid values are {valid}{also}") from None
