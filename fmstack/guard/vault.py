"""Reversible anonymization: replace findings with numbered placeholders, put them back later.

    >>> from fmstack.guard import make_scanner
    >>> vault = Vault()
    >>> text = "Mail ada@example.org, not bob@example.org."
    >>> safe = vault.anonymize(text, make_scanner("pii").scan(text))
    >>> safe
    'Mail <EMAIL_1>, not <EMAIL_2>.'
    >>> vault.restore("I wrote to <EMAIL_2> and <EMAIL_1> (and <EMAIL_2> again).")
    'I wrote to bob@example.org and ada@example.org (and bob@example.org again).'

A ``Vault`` is a ``Redactor`` (fmstack.guard.core): give it to a ``Policy`` and every redacted
span gets a placeholder named after the last part of its kind, upper-cased and numbered per
name (``<EMAIL_1>``, ``<CREDIT_CARD_2>``, ``<NL_BSN_1>``). The same original always gets the
same placeholder within a vault, so a conversation can be anonymized turn by turn and the
model still sees that two mentions are the same person. ``restore`` replaces every
placeholder the vault knows, in any order and as often as the model repeats it; placeholders
it does not know (the model invented ``<EMAIL_9>``) are left as they are.

Known gap: a text that already contains a placeholder the vault knows (a user typing
"<EMAIL_1>" literally) is restored too, so that one round trip is not exact.

The vault holds the originals: keep it server-side (``to_json``/``from_json`` to store one
per conversation) and never send it to the model. All methods are thread-safe.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from typing import Any

from fmstack.errors import ConfigError
from fmstack.guard.core import Finding, apply_redactions

_PLACEHOLDER_RE = re.compile(r"<([A-Z][A-Z0-9_]*?)_(\d+)>")
_NAME_RE = re.compile(r"[^A-Z0-9]+")


def _name(kind: str) -> str:
    """The placeholder name for a kind: its last dotted part, upper-cased (``EMAIL``)."""
    return _NAME_RE.sub("_", kind.split(".")[-1].upper()).strip("_") or "PII"


class Vault:
    """Numbered placeholders for findings, and the way back (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_placeholder: dict[str, str] = {}
        self._by_original: dict[tuple[str, str], str] = {}  # (name, original) -> placeholder
        self._counts: dict[str, int] = {}

    def placeholder(self, kind: str, original: str) -> str:
        """The placeholder for ``original`` found as ``kind`` (made on first use)."""
        name = _name(kind)
        with self._lock:
            key = (name, original)
            found = self._by_original.get(key)
            if found is None:
                n = self._counts.get(name, 0) + 1
                self._counts[name] = n
                found = f"<{name}_{n}>"
                self._by_original[key] = found
                self._by_placeholder[found] = original
            return found

    def anonymize(self, text: str, findings: Sequence[Finding]) -> str:
        """``text`` with every finding's span replaced by its placeholder."""
        return apply_redactions(text, findings, self)

    def restore(self, text: str) -> str:
        """``text`` with every known placeholder replaced by its original."""
        with self._lock:
            known = dict(self._by_placeholder)

        def back(m: re.Match[str]) -> str:
            return known.get(m.group(), m.group())

        return _PLACEHOLDER_RE.sub(back, text)

    @property
    def mapping(self) -> dict[str, str]:
        """A copy of placeholder -> original, in the order the placeholders were made."""
        with self._lock:
            return dict(self._by_placeholder)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_placeholder)

    def to_json(self) -> str:
        """The vault as a JSON string (it contains the originals: store it like a secret)."""
        return json.dumps({"version": 1, "mapping": self.mapping}, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str | dict[str, Any]) -> Vault:
        """A vault from ``to_json``'s output (a string or the parsed dict)."""
        try:
            obj = json.loads(data) if isinstance(data, str) else data
        except json.JSONDecodeError as e:
            raise ConfigError(f"vault: not valid JSON: {e}") from e
        mapping = obj.get("mapping") if isinstance(obj, dict) else None
        if not isinstance(mapping, dict):
            raise ConfigError("vault: expected a JSON object with a 'mapping' object")
        vault = cls()
        for placeholder, original in mapping.items():
            m = _PLACEHOLDER_RE.fullmatch(str(placeholder))
            if m is None or not isinstance(original, str):
                raise ConfigError(f"vault: bad entry {placeholder!r}: expected '<NAME_N>' "
                                  f"mapped to a string")
            name, n = m.group(1), int(m.group(2))
            vault._by_placeholder[placeholder] = original
            vault._by_original[(name, original)] = placeholder
            vault._counts[name] = max(vault._counts.get(name, 0), n)
        return vault
