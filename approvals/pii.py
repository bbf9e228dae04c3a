"""PII redaction: e-mail addresses, phone numbers and payment card numbers.

Applied to what reviewers, logs and exports see when the deciding policy says
`pii_redaction: true`. Execution always uses the arguments as approved.
"""

from __future__ import annotations

import re
from typing import Any

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by spaces or dashes; confirmed by the Luhn check.
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
# International or national numbers with 7-15 digits and common separators.
PHONE = re.compile(r"(?<![\w+])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,4}\)?){2,4}(?!\w)")

EMAIL_MASK = "[email redacted]"
PHONE_MASK = "[phone redacted]"
CARD_MASK = "[card redacted]"


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return CARD_MASK if 13 <= len(digits) <= 19 and _luhn(digits) else match.group()


def _phone(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return PHONE_MASK if 7 <= len(digits) <= 15 else match.group()


def redact_text(text: str) -> str:
    text = EMAIL.sub(EMAIL_MASK, text)
    text = CARD.sub(_card, text)
    return PHONE.sub(_phone, text)


def redact(value: Any) -> Any:
    """Redact every string inside a JSON-like value; keys are kept."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    return value


def restore(edited: Any, original: Any) -> Any:
    """Undo redaction in a reviewer's edit: a string left exactly as it was shown
    (redacted) keeps its original value, so editing one field never writes a mask
    into another."""
    if isinstance(edited, str) and isinstance(original, str):
        return original if edited == redact_text(original) else edited
    if isinstance(edited, dict) and isinstance(original, dict):
        return {k: restore(v, original[k]) if k in original else v for k, v in edited.items()}
    if isinstance(edited, list) and isinstance(original, list) and len(edited) == len(original):
        return [restore(e, o) for e, o in zip(edited, original, strict=True)]
    return edited
