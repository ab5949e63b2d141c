"""What every command shares: the one-line error contract, the sampling flags, output helpers.

Errors a user can cause (``FmstackError``, or a pydantic ``ValidationError`` from a bad flag)
become exactly one line on stderr, ``error: <message>``, and exit code 1. Anything else is a bug
and keeps its traceback.

Human output goes to stdout; the dim footer (tokens, timings, cost, trace id) goes to stderr so
that ``fmstack generate ... > answer.txt`` captures only the answer.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from fmstack.errors import ConfigError, FmstackError

if TYPE_CHECKING:
    from pydantic import ValidationError

    from fmstack.models import Completion, SamplingParams, TokenLogprob

# The model used when -m is not given; kept equal to fmstack.models.DEFAULT_MODEL by a test.
# Spelled out here so `fmstack --help` does not import the model layer (and pydantic).
DEFAULT_MODEL = "smollm2"


def out() -> Console:
    # Built per call, not at import: CliRunner swaps sys.stdout between invocations.
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2, default=str) + "\n")


def print_error(message: str) -> None:
    # Newlines inside a message would break the one-line contract (e.g. a multi-line
    # exception text from a library), so they are folded.
    line = " ".join(message.split())
    err().print(f"error: {line}", markup=False, style="red")


def fail(message: str) -> typer.Exit:
    """Print the one error line and return the Exit to raise."""
    print_error(message)
    return typer.Exit(1)


def validation_message(e: ValidationError, flags: Mapping[str, str] | None = None) -> str:
    """One line naming each bad field by the flag that set it, e.g. ``--top-p: Input should be
    greater than 0``. Fields without a flag are named by their dotted location."""
    parts = []
    for item in e.errors():
        loc = [str(p) for p in item["loc"]]
        name = (flags or {}).get(loc[0], ".".join(loc)) if loc else ""
        msg = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{name}: {msg}" if name else msg)
    return "; ".join(parts)


@contextmanager
def user_errors(flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Turn the errors a user can cause into the one-line ``error:`` and exit 1."""
    try:
        yield
    except FmstackError as e:
        raise fail(str(e)) from None
    except Exception as e:
        from pydantic import ValidationError

        if isinstance(e, ValidationError):
            raise fail(validation_message(e, flags)) from None
        raise


# ----- sampling flags, shared by generate and chat --------------------------------------------

_S = "Sampling"
Temperature = Annotated[
    float | None,
    typer.Option("--temperature", "-t", help="0 = greedy. [default: 1.0]", rich_help_panel=_S),
]
TopK = Annotated[int | None, typer.Option("--top-k", help="0 = off.", rich_help_panel=_S)]
TopP = Annotated[
    float | None, typer.Option("--top-p", help="Nucleus mass in (0, 1].", rich_help_panel=_S)
]
MinP = Annotated[float | None, typer.Option("--min-p", rich_help_panel=_S)]
RepetitionPenalty = Annotated[
    float | None, typer.Option("--repetition-penalty", help="1.0 = off.", rich_help_panel=_S)
]
FrequencyPenalty = Annotated[
    float | None, typer.Option("--frequency-penalty", help="In [-2, 2].", rich_help_panel=_S)
]
PresencePenalty = Annotated[
    float | None, typer.Option("--presence-penalty", help="In [-2, 2].", rich_help_panel=_S)
]
Seed = Annotated[int | None, typer.Option("--seed", rich_help_panel=_S)]
MaxTokens = Annotated[
    int | None, typer.Option("--max-tokens", help="[default: 256]", rich_help_panel=_S)
]
Stop = Annotated[
    list[str] | None,
    typer.Option("--stop", help="Stop sequence (repeatable).", rich_help_panel=_S),
]
ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Alias (see `fmstack models`) or backend:target URI."),
]
SystemOpt = Annotated[str | None, typer.Option("--system", help="System message.")]


def flag_names(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """SamplingParams field -> the CLI flag that sets it."""
    from fmstack.models import SamplingParams

    names = {f: "--" + f.replace("_", "-") for f in SamplingParams.model_fields}
    names.update(overrides or {})
    return names


def sampling_params(values: Mapping[str, Any], flags: Mapping[str, str]) -> SamplingParams:
    """Build SamplingParams from the flags the user actually gave (None = not given), so the
    defaults live in one place: SamplingParams itself."""
    from pydantic import ValidationError

    from fmstack.models import SamplingParams

    given = {k: v for k, v in values.items() if v is not None and v != [] and v != ()}
    try:
        return SamplingParams(**given)
    except ValidationError as e:
        raise ConfigError(validation_message(e, flags)) from None


# ----- rendering ------------------------------------------------------------------------------


def decode_rate(c: Completion) -> float | None:
    """Output tokens per second after the first token (the decode speed), when measurable."""
    t = c.timings
    if t.tpot:
        return 1.0 / t.tpot
    if t.total > 0 and c.usage.completion_tokens:
        return c.usage.completion_tokens / t.total
    return None


def footer_text(c: Completion) -> str:
    u, t = c.usage, c.timings
    parts = [c.model, f"{u.prompt_tokens} prompt + {u.completion_tokens} completion tokens"]
    if t.ttft is not None:
        parts.append(f"TTFT {t.ttft * 1000:.0f} ms")
    rate = decode_rate(c)
    if rate is not None:
        parts.append(f"{rate:.1f} tok/s")
    parts.append(f"total {t.total:.2f} s")
    parts.append(f"cost ${c.cost:.6f}" if c.cost else "cost $0")
    parts.append(f"trace {c.trace_id}" if c.trace_id is not None else "not traced")
    return " · ".join(parts)


def print_footer(c: Completion) -> None:
    err().print(footer_text(c), style="dim", markup=False)


def print_logprobs(logprobs: list[TokenLogprob], title: str = "logprobs") -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("token")
    table.add_column("logprob", justify="right")
    show_top = any(t.top for t in logprobs)
    if show_top:
        table.add_column("top alternatives", style="dim")
    for i, t in enumerate(logprobs):
        row = [str(i), repr(t.token), f"{t.logprob:.3f}"]
        if show_top:
            row.append("  ".join(f"{a.token!r} {a.logprob:.2f}" for a in t.top))
        table.add_row(*row)
    console = out()
    console.print(title, style="bold", markup=False)
    console.print(table)


def shorten(text: str | None, width: int) -> str:
    """One display line: whitespace folded, cut to ``width`` with an ellipsis."""
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"
