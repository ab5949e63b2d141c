"""Secrets scanner: API keys, tokens, private keys and passwords in assignments.

**What.** Kinds are ``secret.<provider>``:

* provider tokens by their documented prefixes: ``aws_access_key`` (AKIA/ASIA + 16),
  ``github`` (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_), ``anthropic`` (sk-ant-), ``openai``
  (sk-, sk-proj-, sk-svcacct-, sk-admin-), ``slack`` (xoxa/b/p/r/s-), ``google_api`` (AIza +
  35), ``stripe`` (sk_live_/rk_live_, and the lower-scored *_test_ keys), ``huggingface``
  (hf_), ``fmstack`` (fms- + 43, the keys ``fmstack serve`` issues);
* ``aws_secret_key``: a 40-character secret assigned to an ``aws_secret_access_key``-like name;
* ``jwt``: three base64url parts whose header decodes to a JSON object with ``"alg"``;
* ``private_key``: a PEM ``-----BEGIN ... PRIVATE KEY-----`` block, the whole block as span
  (a block cut off before its END line still spans its base64 body, score 0.9);
* ``assignment``: ``password|secret|token|api_key|... = value`` (``=``, ``:``, ``:=``, ``=>``,
  quoted or not), scored by the value's Shannon entropy: 0.3 for a guessable "hunter2", 1.0
  for a random 32-character string. Only the value is the span.

**How.** One precompiled regex per pattern, each starting with a literal or a small character
class so the engine skips ahead quickly; a token must not continue a longer word (checked on
the character before it). Provider tokens must look random (at least 3 bits of entropy per
character), so "sk-learn-tutorials" or "sk-xxxxxxxxxxxxxxxxxxxx" are not keys. Overlapping
findings resolve to the most specific one (a GitHub token in ``token = "ghp_..."`` is
``secret.github``, not ``secret.assignment``).

**Low false positives on code.** Assigned values that are code, not secrets, are skipped:
unquoted values that are dotted identifiers (``settings.SECRET_KEY``), calls or lookups
(``os.environ["X"]``, ``getpass()``), numbers (``max_tokens: 1024``), and placeholders
(``${API_KEY}``, ``<your-token>``, ``changeme``, ``****``).

**Blind spots.** Provider keys without a distinctive prefix (Azure, many SaaS keys) are found
only through an assignment; an assignment's secret with spaces in it unquoted is cut at the
first space; secrets split across lines or encoded (base64 of a key) are not found.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from fmstack.errors import ConfigError
from fmstack.guard.core import Finding
from fmstack.guard.pii import non_overlapping

_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def shannon_entropy(s: str) -> float:
    """Bits per character of ``s`` under its own character frequencies."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


@dataclass(frozen=True)
class _Provider:
    kind: str
    pattern: re.Pattern[str]
    score: float
    detail: str
    prefix_len: int  # characters of fixed prefix, left out of the randomness check


def _p(kind: str, regex: str, score: float, detail: str, prefix_len: int) -> _Provider:
    return _Provider(kind, re.compile(regex + r"(?![A-Za-z0-9_\-])"), score, detail, prefix_len)


_PROVIDERS: tuple[_Provider, ...] = (
    _p("secret.aws_access_key", r"(?:AKIA|ASIA)[A-Z0-9]{16}", 0.95, "AWS access key id", 4),
    _p("secret.github", r"gh[pousr]_[A-Za-z0-9]{36,255}", 1.0, "GitHub token", 4),
    _p("secret.github", r"github_pat_[A-Za-z0-9_]{50,255}", 1.0,
       "GitHub fine-grained personal access token", 11),
    _p("secret.anthropic", r"sk-ant-[A-Za-z0-9_\-]{32,300}", 1.0, "Anthropic API key", 7),
    _p("secret.openai", r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,300}", 0.9,
       "OpenAI API key", 3),
    _p("secret.slack", r"xox[abprs]-[A-Za-z0-9\-]{10,250}", 0.95, "Slack token", 5),
    _p("secret.google_api", r"AIza[0-9A-Za-z_\-]{35}", 0.95, "Google API key", 4),
    _p("secret.stripe", r"[sr]k_live_[0-9a-zA-Z]{24,247}", 1.0, "Stripe live secret key", 8),
    _p("secret.stripe", r"[sr]k_test_[0-9a-zA-Z]{24,247}", 0.7, "Stripe test secret key", 8),
    _p("secret.huggingface", r"hf_[A-Za-z0-9]{30,40}", 0.95, "Hugging Face token", 3),
    _p("secret.fmstack", r"fms-[A-Za-z0-9_\-]{40,60}", 1.0, "fmstack API key", 4),
)

_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"
                     r"(?![A-Za-z0-9_\-]|\.[A-Za-z0-9_\-])")
_PEM_BEGIN_RE = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?)-----")
_PEM_BODY_RE = re.compile(r"(?:[ \t\r]*\n[ \t]*[A-Za-z0-9+/=]{16,})*")  # base64 lines
_PEM_MAX = 20_000  # longer than any RSA-16384 key in PEM

_AWS_SECRET_RE = re.compile(
    r"aws_?secret(?:_?access)?_?key[\"']?\s*(?:=|:=|:|=>)\s*[\"']?([A-Za-z0-9/+]{40})(?![\w/+=])",
    re.IGNORECASE,
)
_KEYWORDS = (r"pass(?:word|wd|phrase)?|pwd|secret|token|api[_\-]?key|apikey|access[_\-]?key|"
             r"private[_\-]?key|client[_\-]?secret|auth[_\-]?(?:token|key)|credentials?")
_ASSIGN_RE = re.compile(
    r"(?:" + _KEYWORDS + r")[\w\-]{0,30}[\"']?\s*(?:=|:=|:|=>)[ \t]*"
    r"(?:\"([^\"\n]{6,200})\"|'([^'\n]{6,200})'|([A-Za-z0-9+/=_\-.~!@#$%^&*]{6,200}))",
    re.IGNORECASE,
)
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z_.]*")
_PLACEHOLDER_RE = re.compile(
    r"^[$<{%]|xxxx|\*\*\*|\.\.\.|your[_\- ]|changeme|placeholder|example|dummy|redacted|"
    r"^(?:none|null|true|false|undefined|required|optional|string)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _Hit:
    start: int
    end: int
    kind: str
    score: float
    detail: str
    specificity: int


class SecretsScanner:
    """Finds credentials (see the module docstring for kinds, scores and blind spots).

    ``kinds`` limits the scan to some ``secret.*`` kinds; ``min_entropy`` is the bits per
    character below which an assigned value is not reported as ``secret.assignment``.
    """

    name: ClassVar[str] = "secrets"

    def __init__(self, *, kinds: list[str] | None = None, min_entropy: float = 2.5) -> None:
        if kinds is not None:
            if isinstance(kinds, str) or not isinstance(kinds, list | tuple):
                raise ConfigError(f"secrets: kinds must be a list of kind names, got {kinds!r}")
            unknown = [k for k in kinds if k not in KINDS]
            if unknown:
                raise ConfigError(f"secrets: unknown kind {unknown[0]!r} "
                                  f"(known kinds: {', '.join(KINDS)})")
        if not isinstance(min_entropy, int | float) or min_entropy < 0:
            raise ConfigError(f"secrets: min_entropy must be a non-negative number, "
                              f"got {min_entropy!r}")
        self.kinds = list(KINDS if kinds is None else kinds)
        self.min_entropy = float(min_entropy)

    def scan(self, text: str) -> list[Finding]:
        hits = [*self._providers(text), *self._jwts(text), *self._pems(text),
                *self._assignments(text)]
        wanted = set(self.kinds)
        hits = [h for h in hits if h.kind in wanted]
        ranked = sorted(hits, key=lambda h: (-h.specificity, -h.score, h.start))
        chosen = [ranked[i] for i in non_overlapping([(h.start, h.end) for h in ranked])]
        chosen.sort(key=lambda h: h.start)
        return [Finding(self.name, h.kind, h.start, h.end, h.score, h.detail) for h in chosen]

    def _providers(self, text: str) -> list[_Hit]:
        out = []
        for p in _PROVIDERS:
            for m in p.pattern.finditer(text):
                s, e = m.span()
                if s > 0 and text[s - 1] in _TOKEN_CHARS:
                    continue  # the middle of a longer word
                value = m.group()
                if p.kind == "secret.openai" and value.startswith("sk-ant-"):
                    continue
                if shannon_entropy(value[p.prefix_len:]) < 3.0:
                    continue  # "sk-xxxxxxxx...", "sk-learn-tutorials-for-beginners"
                out.append(_Hit(s, e, p.kind, p.score, p.detail, 3))
        return out

    def _jwts(self, text: str) -> list[_Hit]:
        out = []
        for m in _JWT_RE.finditer(text):
            if m.start() > 0 and text[m.start() - 1] in _TOKEN_CHARS:
                continue
            header = m.group().split(".", 1)[0]
            try:
                decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
            except (ValueError, binascii.Error):
                continue
            if isinstance(decoded, dict) and "alg" in decoded:
                out.append(_Hit(m.start(), m.end(), "secret.jwt", 0.95,
                                f"JSON Web Token (alg {str(decoded['alg'])[:10]})", 3))
        return out

    def _pems(self, text: str) -> list[_Hit]:
        out = []
        next_end: dict[str, int] = {}  # END marker -> its next position (-1: none left)
        for m in _PEM_BEGIN_RE.finditer(text):
            end_marker = f"-----END {m.group(1)}-----"
            end = next_end.get(end_marker, -2)
            if end != -1 and end < m.end():  # one search per marker and stretch: linear time
                end = next_end[end_marker] = text.find(end_marker, m.end())
            if 0 <= end <= m.end() + _PEM_MAX:
                out.append(_Hit(m.start(), end + len(end_marker), "secret.private_key", 1.0,
                                f"PEM {m.group(1).lower()} block", 4))
            else:
                body = _PEM_BODY_RE.match(text, m.end(), m.end() + _PEM_MAX)
                stop = body.end() if body else m.end()
                while stop > m.end() and text[stop - 1].isspace():
                    stop -= 1
                out.append(_Hit(m.start(), stop, "secret.private_key", 0.9,
                                f"PEM {m.group(1).lower()} block without its END line", 4))
        return out

    def _assignments(self, text: str) -> list[_Hit]:
        out = []
        for m in _AWS_SECRET_RE.finditer(text):
            if shannon_entropy(m.group(1)) >= 3.5:
                out.append(_Hit(m.start(1), m.end(1), "secret.aws_secret_key", 0.95,
                                "AWS secret access key", 2))
        for m in _ASSIGN_RE.finditer(text):
            group = 1 if m.group(1) is not None else 2 if m.group(2) is not None else 3
            value = m.group(group)
            if group == 3 and (_IDENTIFIER_RE.fullmatch(value) or value.rstrip(".").isdigit()):
                continue  # settings.SECRET_KEY, max_tokens: 1024
            if _PLACEHOLDER_RE.search(value):
                continue
            bits = shannon_entropy(value)
            if bits < self.min_entropy or value.replace(".", "").isdigit():
                continue
            score = round(min(1.0, max(0.3, (bits - 2.0) / 3.0)), 2)
            out.append(_Hit(m.start(group), m.end(group), "secret.assignment", score,
                            f"value assigned to a credential-like name "
                            f"({bits:.1f} bits of entropy per character)", 1))
        return out


KINDS: tuple[str, ...] = tuple(dict.fromkeys(
    [p.kind for p in _PROVIDERS]
    + ["secret.aws_secret_key", "secret.jwt", "secret.private_key", "secret.assignment"]))
