"""A JSON parser that refuses what PostgreSQL cannot store, before any view sees it.

Valid JSON can still carry values that pass every serializer and then fail inside the
INSERT as a 500: a \\u0000 anywhere in a jsonb document or text column, a lone UTF-16
surrogate (\\ud800, not encodable as UTF-8), a number too large for a float (1e400 parses
as inf, which jsonb rejects), or nesting deep enough to exhaust Python's recursion. Agent
content is untrusted, so these get a 400 naming the top-level field.
"""

from __future__ import annotations

import math
import re
from typing import Any

from rest_framework import exceptions, parsers

MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_problem(value: Any, depth: int = 0) -> str | None:
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, str):
        if "\x00" in value:
            return "must not contain null characters (\\u0000)"
        if _SURROGATE.search(value):
            return "must not contain unpaired surrogates (invalid Unicode)"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "numbers must be finite (no Infinity or NaN, nothing beyond ±1.8e308)"
    if isinstance(value, dict):
        for key, item in value.items():
            found = json_problem(key, depth + 1) or json_problem(item, depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for item in value:
            found = json_problem(item, depth + 1)
            if found:
                return found
    return None


class StrictJSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None,
              parser_context: dict | None = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise exceptions.ParseError(
                f"JSON parse error - nested deeper than {MAX_DEPTH} levels") from exc
        if isinstance(data, dict):
            errors = {}
            for key, value in data.items():
                found = json_problem(key, 1) or json_problem(value, 1)
                if found:
                    errors[_printable(key)] = [found]
            if errors:
                raise exceptions.ValidationError(errors)
        else:
            found = json_problem(data)
            if found:
                raise exceptions.ValidationError({"non_field_errors": [found]})
        return data


def _printable(key: str) -> str:
    return _SURROGATE.sub("\ufffd", key.replace("\x00", "\\u0000"))
