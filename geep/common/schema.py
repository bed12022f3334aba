"""Checks of the JSON documents the suite reads back: checkpoint metadata and run files.

A schema says each field's type and range; :func:`first_problem` names the first field that
breaks it, so a damaged or hand-edited file is one line naming the file and the field, never a
traceback from deep inside the code that uses the value::

    CONFIG = document({"seq_len": whole(8), "seed": whole(0), "note": maybe(text())})
    first_problem({"seq_len": "64", "seed": 1}, CONFIG)
    # "seq_len must be a whole number >= 8, got '64' (a string)"
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Check:
    """What a value must be: ``test`` it, described as ``want`` ("a whole number >= 1").

    ``optional``: the field may be missing or null. ``fields``: an object's fields, each checked
    in turn (others are allowed). ``items``: what every item of a list must be.
    """

    test: Callable[[Any], bool]
    want: str
    optional: bool = False
    fields: Mapping[str, Check] | None = None
    items: Check | None = None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def text() -> Check:
    return Check(lambda v: isinstance(v, str), "a string")


def whole(low: int = 0) -> Check:
    return Check(
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
        f"a whole number >= {low}",
    )


def number(low: float = -math.inf, high: float = math.inf) -> Check:
    """A finite number in [low, high]."""
    if high < math.inf:
        want = f"a number in [{low:g}, {high:g}]"
    else:
        want = f"a number >= {low:g}" if low > -math.inf else "a number"
    return Check(lambda v: _is_number(v) and math.isfinite(v) and low <= v <= high, want)


def choice(*options: str) -> Check:
    return Check(lambda v: isinstance(v, str) and v in options, f"one of {', '.join(options)}")


def document(fields: Mapping[str, Check]) -> Check:
    """A JSON object with these fields (and any others)."""
    return Check(lambda v: isinstance(v, dict), "an object", fields=fields)


def listing(items: Check, at_least: int = 0) -> Check:
    want = f"a list of at least {at_least} item{'s' * (at_least > 1)}" if at_least else "a list"
    return Check(lambda v: isinstance(v, list) and len(v) >= at_least, want, items=items)


def maybe(check: Check) -> Check:
    """``check``, or missing, or null."""
    return replace(check, optional=True)


def first_problem(value: Any, check: Check, name: str = "") -> str | None:
    """The first way ``value`` breaks ``check``, as "FIELD must be WANT, got VALUE"; None when
    it holds. Fields are named by their path (``train.seq_len``, ``rows[3].accuracy``)."""
    if value is None and check.optional:
        return None
    if not check.test(value):
        return f"{name or 'the document'} must be {check.want}, got {_shown(value)}"
    for key, field in (check.fields or {}).items():
        path = f"{name}.{key}" if name else key
        if key not in value:
            if field.optional:
                continue
            return f"{path} is missing"
        if problem := first_problem(value[key], field, path):
            return problem
    if check.items is not None:
        for i, item in enumerate(value):
            if problem := first_problem(item, check.items, f"{name}[{i}]"):
                return problem
    return None


_KINDS = {str: "a string", bool: "a boolean"}


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    kind = _KINDS.get(type(value), "a number" if _is_number(value) else type(value).__name__)
    return f"{shown} ({kind})"
