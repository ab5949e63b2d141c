"""The shape every guard shares: scanners find things, policies decide what to do with them.

A **scanner** is a small class with a ``name`` and one method, ``scan(text) -> list[Finding]``.
It only reports: where, what kind, how sure. It never edits text or decides anything.

A **policy** is an ordered list of rules, each naming a scanner and an action:

* ``allow``: let the text through; the findings are still recorded (audit mode),
* ``redact``: replace each finding's span with a placeholder (``[EMAIL]``), or with a reversible
  vault placeholder when the policy has a vault,
* ``block``: stop the text; the caller gets ``GuardBlocked`` with a reason code.

Rules have a ``threshold``: findings scored below it are ignored, so a layered detector can be
tuned without code. A scanner that raises makes the policy **fail closed**: the text is blocked
with reason ``guard_error`` and the exception's message, never let through unscanned.

Scanners register by name, built-in ones through the same ``fmstack.scanners`` entry-point group
a plugin package uses (see pyproject.toml), so a policy file can name any installed scanner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from fmstack.errors import ConfigError, FmstackError

Action = Literal["allow", "redact", "block"]
ACTIONS: tuple[Action, ...] = ("allow", "redact", "block")
ENTRY_POINT_GROUP = "fmstack.scanners"

# Texts longer than this are refused before any scanner runs (a clear error, not a stall).
DEFAULT_MAX_CHARS = 1_000_000


@dataclass(frozen=True)
class Finding:
    """One thing a scanner found in a text.

    ``start``/``end`` index the scanned string (``text[start:end]`` is the match); a finding about
    the text as a whole (a perplexity anomaly, a self-check verdict) spans all of it.
    ``kind`` is dotted and stable (``email``, ``credit_card``, ``injection.override``,
    ``unicode.invisible``): reason codes and reports are built from it.
    """

    scanner: str
    kind: str
    start: int
    end: int
    score: float = 1.0
    detail: str = ""
    action: Action = "allow"  # set by the policy that applied the rule

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@runtime_checkable
class Scanner(Protocol):
    """What a scanner is: a name and ``scan``. Options are constructor keyword arguments."""

    name: ClassVar[str]

    def scan(self, text: str) -> list[Finding]: ...


_REGISTRY: dict[str, type[Any]] = {}


def register(name: str) -> Callable[[type[Any]], type[Any]]:
    """Class decorator: make a scanner available under ``name`` without an entry point
    (handy in tests and notebooks; packages should declare an entry point)."""

    def wrap(cls: type[Any]) -> type[Any]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def scanner_classes() -> dict[str, Any]:
    """Every installed scanner by name (an entry point, loaded on use, or a ``register``-ed
    class); registered classes win over entry points of the same name."""
    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep  # loaded lazily in make_scanner: some scanners import heavy modules
    found.update(_REGISTRY)
    return found


def make_scanner(name: str, **options: Any) -> Scanner:
    """Build the scanner called ``name`` with ``options``; a clear error for an unknown name or
    an option the scanner does not take."""
    classes = scanner_classes()
    if name not in classes:
        known = ", ".join(sorted(classes)) or "none"
        raise ConfigError(f"unknown scanner {name!r} (installed scanners: {known})")
    cls = classes[name]
    if not isinstance(cls, type):
        try:
            cls = cls.load()
        except ImportError as e:  # a plugin whose own dependency is missing
            raise ConfigError(f"scanner {name!r} cannot be loaded ({cls.value}): {e}") from e
    try:
        scanner = cls(**options)
    except TypeError as e:
        raise ConfigError(f"scanner {name!r}: bad options {sorted(options)}: {e}") from e
    return scanner


@dataclass
class Rule:
    """Apply ``scanner``'s findings scored at least ``threshold`` with ``action``."""

    scanner: Scanner
    action: Action = "block"
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"action {self.action!r} for scanner {self.scanner.name!r} "
                              f"must be one of {', '.join(ACTIONS)}")


class GuardBlocked(FmstackError):
    """A policy stopped a text. ``reason`` is a short code (``injection``, ``pii``,
    ``canary_leak``, ``guard_error``, ...); ``verdict`` says everything that was found."""

    def __init__(self, verdict: Verdict, where: str = "input") -> None:
        self.verdict = verdict
        self.where = where
        blocked = verdict.blocked
        assert blocked is not None
        self.reason = reason_code(blocked)
        # What the guard did on the whole call (set by the Guard that raised this).
        self.record: dict[str, Any] | None = None
        why = blocked.detail or blocked.kind
        super().__init__(f"{where} blocked by guard ({self.reason}): {why}")


def reason_code(finding: Finding) -> str:
    """The reason a block is reported under: the finding's kind up to its first dot."""
    return finding.kind.split(".", 1)[0]


@dataclass
class Verdict:
    """What a policy did to one text: the text to use next (redacted when a rule said so), every
    finding kept with the action applied to it, and the finding that blocked, if any."""

    text: str
    findings: list[Finding] = field(default_factory=list)
    blocked: Finding | None = None

    @property
    def ok(self) -> bool:
        return self.blocked is None

    def to_json(self) -> dict[str, Any]:
        return {
            "blocked": self.blocked.to_json() if self.blocked else None,
            "findings": [f.to_json() for f in self.findings],
        }


class Redactor(Protocol):
    """Turns a finding into the text that replaces it (the vault implements this reversibly)."""

    def placeholder(self, kind: str, original: str) -> str: ...


def label(kind: str, original: str) -> str:
    """The default, irreversible placeholder: ``[EMAIL]``, ``[CREDIT_CARD]``."""
    return "[" + kind.split(".")[-1].upper() + "]"


@dataclass
class Policy:
    """An ordered list of rules applied to one text.

    Every rule scans the original text, so redactions never hide a finding from a later rule;
    spans found by several rules are redacted once. The first blocking finding (in rule order)
    wins, and scanning stops there.
    """

    rules: list[Rule] = field(default_factory=list)
    max_chars: int = DEFAULT_MAX_CHARS
    redactor: Redactor | None = None

    def check(self, text: str) -> Verdict:
        if len(text) > self.max_chars:
            too_big = Finding("policy", "too_large", 0, len(text),
                              detail=f"text of {len(text):,} characters is over the guard's "
                                     f"limit of {self.max_chars:,}", action="block")
            return Verdict(text, [too_big], too_big)
        kept: list[Finding] = []
        for rule in self.rules:
            try:
                found = rule.scanner.scan(text)
            except Exception as e:  # fail closed: an unscanned text never passes
                crash = Finding(rule.scanner.name, "guard_error", 0, len(text),
                                detail=f"scanner {rule.scanner.name!r} failed: "
                                       f"{type(e).__name__}: {e}", action="block")
                return Verdict(text, [*kept, crash], crash)
            for f in found:
                if f.score < rule.threshold:
                    continue
                f = dataclasses.replace(f, action=rule.action)
                kept.append(f)
                if rule.action == "block":
                    return Verdict(text, kept, f)
        redact = [f for f in kept if f.action == "redact"]
        return Verdict(apply_redactions(text, redact, self.redactor), kept)

    @property
    def empty(self) -> bool:
        return not self.rules


def apply_redactions(text: str, findings: Sequence[Finding],
                     redactor: Redactor | None = None) -> str:
    """Replace each finding's span; overlapping spans merge into the earliest-starting one."""
    placeholder = redactor.placeholder if redactor is not None else label
    out: list[str] = []
    pos = 0
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if f.end <= pos:  # inside a span already replaced
            continue
        start = max(f.start, pos)
        out.append(text[pos:start])
        out.append(placeholder(f.kind, text[start:f.end]))
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


def rules_from_config(entries: Iterable[Any], where: str) -> list[Rule]:
    """Rules from a config list: ``{scanner: pii, action: redact, threshold: 0.5, <options>}``;
    keys other than scanner/action/threshold are the scanner's options."""
    rules = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"scanner": entry}
        if not isinstance(entry, dict) or "scanner" not in entry:
            raise ConfigError(f"{where}[{i}]: each rule needs a 'scanner' (got {entry!r})")
        options = dict(entry)
        name = options.pop("scanner")
        action = options.pop("action", "block")
        threshold = options.pop("threshold", 0.0)
        if not isinstance(threshold, int | float):
            raise ConfigError(f"{where}[{i}]: threshold must be a number, got {threshold!r}")
        try:
            rules.append(Rule(make_scanner(str(name), **options), action, float(threshold)))
        except ConfigError as e:
            raise ConfigError(f"{where}[{i}]: {e}") from e
    return rules
