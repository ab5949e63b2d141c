"""Structured output: turn a ``response_format`` into something a decoder can enforce, and check
what came out.

Enforcement happens inside each backend (llama.cpp grammars, xgrammar for torch, the API's
json_schema mode); this module holds the pieces they share: GBNF grammars for llama.cpp (JSON
Schema through llama-cpp-python's own converter, regex and choice through ours), a regex for a
list of choices, and ``parse``, which every completion with a format goes through.
"""

from __future__ import annotations

import json
import re
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

from fmstack.errors import ConfigError, OutputValidationError
from fmstack.models.types import ChoiceFormat, JsonSchemaFormat, RegexFormat

Format = JsonSchemaFormat | RegexFormat | ChoiceFormat


def parse(fmt: Format, text: str, finish_reason: str = "stop") -> Any:
    """The value ``text`` holds under ``fmt``, or ``OutputValidationError`` saying why not."""
    cut = " (generation hit max_tokens; raise it)" if finish_reason == "length" else ""
    if isinstance(fmt, JsonSchemaFormat):
        import jsonschema

        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise OutputValidationError(f"output is not valid JSON: {e}{cut}") from None
        try:
            jsonschema.validate(value, fmt.json_schema)
        except jsonschema.ValidationError as e:
            path = "/".join(str(p) for p in e.absolute_path) or "(root)"
            raise OutputValidationError(
                f"output does not match the schema at {path}: {e.message}"
            ) from None
        return value
    if isinstance(fmt, RegexFormat):
        if re.fullmatch(fmt.pattern, text) is None:
            raise OutputValidationError(f"output {text!r} does not match /{fmt.pattern}/{cut}")
        return text
    if text not in fmt.choices:
        raise OutputValidationError(f"output {text!r} is not one of {fmt.choices}{cut}")
    return text


def choice_regex(choices: list[str]) -> str:
    """A regex matching exactly one of ``choices`` (longest first, so prefixes cannot win)."""
    return "(" + "|".join(re.escape(c) for c in sorted(choices, key=len, reverse=True)) + ")"


# ----- GBNF (llama.cpp grammars) --------------------------------------------------------------


def to_gbnf(fmt: Format) -> str:
    """A GBNF grammar (root rule ``root``) that accepts exactly the outputs ``fmt`` allows."""
    if isinstance(fmt, JsonSchemaFormat):
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        try:
            return str(json_schema_to_gbnf(json.dumps(fmt.json_schema)))
        except Exception as e:  # the converter raises bare exceptions on unsupported keywords
            raise ConfigError(f"llama.cpp cannot enforce this JSON Schema: {e}") from None
    if isinstance(fmt, ChoiceFormat):
        return "root ::= " + " | ".join(_gbnf_literal(c) for c in fmt.choices) + "\n"
    return "root ::= " + regex_to_gbnf(fmt.pattern) + "\n"


def _gbnf_literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 32:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _class_char(code: int) -> str:
    ch = chr(code)
    if ch in "]\\-^[":
        return "\\" + ch
    if code < 32 or code == 127:
        return f"\\x{code:02x}"
    return ch


_CATEGORIES = {
    "CATEGORY_DIGIT": (False, "0-9"),
    "CATEGORY_NOT_DIGIT": (True, "0-9"),
    "CATEGORY_WORD": (False, "a-zA-Z0-9_"),
    "CATEGORY_NOT_WORD": (True, "a-zA-Z0-9_"),
    "CATEGORY_SPACE": (False, " \\t\\n\\r\\x0b\\x0c"),
    "CATEGORY_NOT_SPACE": (True, " \\t\\n\\r\\x0b\\x0c"),
}


def regex_to_gbnf(pattern: str) -> str:
    """Translate a Python regex into a GBNF expression (full-match semantics).

    Supports literals, classes, ``.``, groups, alternation, greedy and lazy repeats and the
    ``\\d \\w \\s`` classes. Anchors at the ends are dropped (matching is always full).
    Backreferences and lookaround cannot be expressed in a context-free grammar: ConfigError.
    """
    try:
        tree = sre_parse.parse(pattern)
    except re.error as e:
        raise ConfigError(f"invalid regex {pattern!r}: {e}") from None
    return _seq(tree, pattern)


def _seq(items: Any, pattern: str) -> str:
    parts: list[str] = []
    run = ""  # adjacent literal characters become one GBNF string: "yes", not "y" "e" "s"
    for op, av in items:
        if str(op) == "LITERAL":
            run += chr(av)
            continue
        if run:
            parts.append(_gbnf_literal(run))
            run = ""
        part = _node(op, av, pattern)
        if part:
            parts.append(part)
    if run:
        parts.append(_gbnf_literal(run))
    if not parts:
        return '""'
    return "(" + " ".join(parts) + ")" if len(parts) > 1 else parts[0]


def _node(op: Any, av: Any, pattern: str) -> str:
    name = str(op)
    if name == "LITERAL":
        return _gbnf_literal(chr(av))
    if name == "NOT_LITERAL":
        return "[^" + _class_char(av) + "]"
    if name == "ANY":
        return "[^\\n]"
    if name == "AT":
        return ""  # ^ $ \A \Z: matching is always anchored at both ends
    if name == "IN":
        return _char_class(av, pattern)
    if name == "CATEGORY":
        negate, body = _CATEGORIES[str(av)]
        return "[" + ("^" if negate else "") + body + "]"
    if name == "BRANCH":
        return "(" + " | ".join(_seq(branch, pattern) for branch in av[1]) + ")"
    if name == "SUBPATTERN":
        return "(" + _seq(av[-1], pattern) + ")"
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        lo, hi, body = av
        inner = _seq(body, pattern)
        if not inner.startswith(("(", "[", '"')) or (" " in inner and not inner.startswith("(")):
            inner = "(" + inner + ")"
        unbounded = hi == sre_parse.MAXREPEAT
        if (lo, unbounded) == (0, True):
            return inner + "*"
        if (lo, unbounded) == (1, True):
            return inner + "+"
        if (lo, hi) == (0, 1):
            return inner + "?"
        if unbounded:
            return f"{inner}{{{lo},}}"
        return f"{inner}{{{lo},{hi}}}" if lo != hi else f"{inner}{{{lo}}}"
    raise ConfigError(
        f"regex {pattern!r} uses {name.lower()}, which a grammar cannot enforce "
        "(no backreferences or lookaround)"
    )


def _char_class(items: Any, pattern: str) -> str:
    negate = False
    body: list[str] = []
    for op, av in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            body.append(_class_char(av))
        elif name == "RANGE":
            body.append(_class_char(av[0]) + "-" + _class_char(av[1]))
        elif name == "CATEGORY":
            cat_negate, cat_body = _CATEGORIES[str(av)]
            if cat_negate:
                raise ConfigError(f"regex {pattern!r}: negated classes like \\D inside [] "
                                  "are not supported")
            body.append(cat_body)
        else:
            raise ConfigError(f"regex {pattern!r}: unsupported class item {name.lower()}")
    return "[" + ("^" if negate else "") + "".join(body) + "]"
