"""PII redaction: e-mail addresses, phone numbers and payment card numbers.

Applied to what reviewers, logs and exports see when the deciding policy says
`pii_redaction: true`. Execution always uses the arguments as approved.

Detection is deliberately conservative about ordinary numbers (ticket ids, dates,
amounts, order numbers): a phone number needs an international prefix (+ or 00), a
national trunk 0 followed by a separator, parentheses, or the North American
3-3-4 grouping; a card number needs 13-19 digits that pass the Luhn check.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by single spaces or dashes; confirmed by Luhn.
CARD = re.compile(r"(?<![\d.,])\d(?:[ -]?\d){12,18}(?![\d]|[.,]\d)")
PHONE = re.compile(
    r"""
    (?<![\w+/.,-])                                   # not inside an id, path or number
    (?:
      (?:\+|\b00)[1-9]\d{0,2}                         # international: +49 / 0049
        (?:[ .-]?\(0?\d{0,4}\))?                      #   optional (0) or (30)
        (?:[ .-]?\d{1,8}){1,6}
    | \(\d{2,5}\)[ .-]?\d{2,8}(?:[ .-]?\d{2,8}){0,3}  # (030) 1234567, (555) 123-4567
    | 0\d{1,5}[ ./-]\d{2,8}(?:[ .-]\d{2,8}){0,3}      # 030 1234567, 0171-234 5678
    | [2-9]\d{2}[ .-]\d{3}[ .-]\d{4}                  # 555-123-4567
    | 0[1-9]\d{8,9}                                   # 01711234567 (no separators)
    )
    (?![\w/-]|[.,]\d)
    """,
    re.X,
)
# Things the phone pattern can see that are really dates: 05.11.2026, 01/02/2026.
DATE = re.compile(r"\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|\d{4}[./-]\d{1,2}[./-]\d{1,2}")

EMAIL_MASK = "[email redacted]"
PHONE_MASK = "[phone redacted]"
CARD_MASK = "[card redacted]"


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _is_card(text: str) -> bool:
    digits = _digits(text)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _is_phone(text: str) -> bool:
    if DATE.fullmatch(text):
        return False
    digits = _digits(text)
    return 7 <= len(digits) <= 15


def find(text: str) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, mask) spans, in order. E-mail wins over card,
    card over phone, so each piece of PII is masked once under its own label."""
    spans = [(m.start(), m.end(), EMAIL_MASK) for m in EMAIL.finditer(text)]
    # Matches of one pattern never overlap each other, so a candidate only has to be
    # checked against the (sorted) spans of the stronger kinds: a bisect, not a scan.
    for pattern, accept, mask in ((CARD, _is_card, CARD_MASK), (PHONE, _is_phone, PHONE_MASK)):
        taken = sorted(spans)
        starts = [s for s, _, _ in taken]
        for m in pattern.finditer(text):
            if not accept(m.group()):
                continue
            i = bisect.bisect_left(starts, m.end())  # spans starting before our end
            if i and taken[i - 1][1] > m.start():
                continue  # overlaps the nearest earlier span (they are disjoint)
            spans.append((m.start(), m.end(), mask))
    return sorted(spans)


def redact_text(text: str) -> str:
    out: list[str] = []
    pos = 0
    for start, end, mask in find(text):
        out.append(text[pos:start])
        out.append(mask)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redact(value: Any) -> Any:
    """Redact every string inside a JSON-like value; keys are kept."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    return value


def _restore_text(edited: str, original: str) -> str:
    """Put the original PII back behind each mask the reviewer left in place.

    The n-th mask of a kind in the edit stands for the n-th value of that kind in the
    original, so a reviewer can fix a typo elsewhere in a redacted sentence without
    the mask being sent to the customer. A mask the original never had (or one too
    many) stays as typed.
    """
    if edited == redact_text(original):
        return original
    originals: dict[str, list[str]] = {}
    for start, end, mask in find(original):
        originals.setdefault(mask, []).append(original[start:end])
    if not originals:
        return edited
    used: dict[str, int] = {}
    pattern = re.compile("|".join(re.escape(m) for m in originals))

    def put_back(match: re.Match[str]) -> str:
        mask = match.group()
        n = used.get(mask, 0)
        used[mask] = n + 1
        values = originals[mask]
        return values[n] if n < len(values) else mask

    return pattern.sub(put_back, edited)


def restore(edited: Any, original: Any) -> Any:
    """Undo redaction in a reviewer's edit: whatever the reviewer left redacted keeps
    its original value, so editing one field never writes a mask into another."""
    if isinstance(edited, str) and isinstance(original, str):
        return _restore_text(edited, original)
    if isinstance(edited, dict) and isinstance(original, dict):
        return {k: restore(v, original[k]) if k in original else v for k, v in edited.items()}
    if isinstance(edited, list) and isinstance(original, list) and len(edited) == len(original):
        return [restore(e, o) for e, o in zip(edited, original, strict=True)]
    return edited
