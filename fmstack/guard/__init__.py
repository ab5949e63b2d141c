"""Guards: scanners for prompt injection, jailbreaks, PII, secrets and leaks, applied by policies
to everything a prompt passes through (generate/chat, the server, RAG).

    >>> from fmstack.guard import make_scanner
    >>> make_scanner("pii").scan("mail me at ada@example.org")[0].kind
    'email'

See ``fmstack.guard.core`` for the contracts and docs/guard.md for the guide.
"""

from fmstack.guard.core import (
    ACTIONS,
    Action,
    Finding,
    GuardBlocked,
    Policy,
    Rule,
    Scanner,
    Verdict,
    make_scanner,
    register,
    scanner_classes,
)
from fmstack.guard.guard import Guard, GuardedModel, Screened, guarded, load_policy
from fmstack.guard.spotlight import Spotlight

__all__ = [
    "ACTIONS",
    "Action",
    "Finding",
    "Guard",
    "GuardBlocked",
    "GuardedModel",
    "Policy",
    "Rule",
    "Scanner",
    "Screened",
    "Spotlight",
    "Verdict",
    "guarded",
    "load_policy",
    "make_scanner",
    "register",
    "scanner_classes",
]
