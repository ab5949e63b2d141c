"""``fmstack generate``: one prompt in, one answer out, with every sampling and decoding knob.

Flags are validated before the model loads (a bad --top-p costs nothing and leaves no trace);
everything that reaches the model is traced by the Model contract itself.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fmstack.cli import common
from fmstack.cli.common import (
    DEFAULT_MODEL,
    FrequencyPenalty,
    MaxTokens,
    MinP,
    ModelOpt,
    PresencePenalty,
    RepetitionPenalty,
    Seed,
    Stop,
    SystemOpt,
    Temperature,
    TopK,
    TopP,
)
from fmstack.errors import ConfigError

if TYPE_CHECKING:
    from fmstack.models import Completion, Request
    from fmstack.models.types import ResponseFormat

_F = "Structured output"
_T = "Test-time compute"


def generate(
    prompt: Annotated[
        str | None, typer.Argument(help="The prompt; omit it or give '-' to read stdin.")
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    system: SystemOpt = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Plain-text completion: no chat template.")
    ] = False,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    min_p: MinP = None,
    repetition_penalty: RepetitionPenalty = None,
    frequency_penalty: FrequencyPenalty = None,
    presence_penalty: PresencePenalty = None,
    seed: Seed = None,
    max_tokens: MaxTokens = None,
    stop: Stop = None,
    n: Annotated[
        int | None,
        typer.Option("--n", help="Number of samples.", rich_help_panel=common._S),
    ] = None,
    logprobs: Annotated[
        bool,
        typer.Option("--logprobs", help="Show each token's logprob.", rich_help_panel=common._S),
    ] = False,
    top_logprobs: Annotated[
        int | None,
        typer.Option("--top-logprobs", help="Alternatives per token (implies --logprobs).",
                     rich_help_panel=common._S),
    ] = None,
    json_schema: Annotated[
        str | None,
        typer.Option("--json-schema", metavar="FILE", help="Output must validate against "
                     "this JSON Schema file.", rich_help_panel=_F),
    ] = None,
    regex: Annotated[
        str | None,
        typer.Option("--regex", metavar="PATTERN", help="Output must match in full.",
                     rich_help_panel=_F),
    ] = None,
    choice: Annotated[
        list[str] | None,
        typer.Option("--choice", help="Output must be one of these (repeatable).",
                     rich_help_panel=_F),
    ] = None,
    best_of: Annotated[
        int | None,
        typer.Option("--best-of", metavar="N", help="Sample N, keep the highest mean logprob.",
                     rich_help_panel=_T),
    ] = None,
    vote: Annotated[
        int | None,
        typer.Option("--vote", metavar="N", help="Sample N, answer by majority vote "
                     "(self-consistency).", rich_help_panel=_T),
    ] = None,
    extract: Annotated[
        str | None,
        typer.Option("--extract", metavar="REGEX", help="With --vote: vote on the last match "
                     "of REGEX in each sample (its first group, if any), e.g. '-?\\d+'.",
                     rich_help_panel=_T),
    ] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print tokens as they decode.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the Completion as JSON.")
    ] = False,
    no_trace: Annotated[
        bool, typer.Option("--no-trace", help="Do not log this call to the trace store.")
    ] = False,
    guard: Annotated[
        str | None, typer.Option("--guard", metavar="POLICY", help="Screen the prompt and the "
                                 "answer with a guard policy: default, strict, audit or a YAML "
                                 "file (see `fmstack guard policies`).")
    ] = None,
) -> None:
    """Generate a completion for PROMPT."""
    sampling = dict(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, seed=seed, max_tokens=max_tokens, stop=stop, n=n,
        logprobs=logprobs or None, top_logprobs=top_logprobs,
    )
    with common.user_errors():
        fmt, fmt_flag = _response_format(json_schema, regex, choice)
        flags = common.flag_names({"response_format": fmt_flag} if fmt_flag else None)
        params = common.sampling_params({**sampling, "response_format": fmt}, flags)
        _check_combinations(params.n, best_of, vote, stream, as_json, raw, system)
        extractor = _extractor(extract, vote)
        text = _read_prompt(prompt)

        from fmstack.models import Message, Request, load_model

        if raw:
            request = Request(prompt=text, params=params)
        else:
            messages = [Message(role="system", content=system)] if system else []
            messages.append(Message(role="user", content=text))
            request = Request(messages=messages, params=params)

        if guard is not None and (best_of is not None or vote is not None):
            raise ConfigError("--guard cannot be combined with --best-of or --vote")
        policy = None
        if guard is not None:
            from fmstack.guard import load_policy

            policy = load_policy(guard)  # before loading the model: a bad file fails fast
        with load_model(model, trace=not no_trace) as loaded:
            m: Any = loaded
            if policy is not None:
                from fmstack.guard import guarded

                m = guarded(loaded, policy)
            if best_of is not None:
                _best_of(m, request, best_of, as_json)
            elif vote is not None:
                _vote(m, request, vote, as_json, extractor)
            elif stream:
                _stream(m, request)
            else:
                _plain(m.complete(request), as_json)


def _read_prompt(prompt: str | None) -> str:
    if prompt is None or prompt == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise ConfigError("no prompt: give PROMPT or pipe it on stdin")
        # Only the newline a shell pipe adds is dropped; other whitespace may be deliberate.
        prompt = sys.stdin.read().rstrip("\n")
    if not prompt.strip():
        raise ConfigError("the prompt is empty")
    return prompt


def _response_format(
    schema_file: str | None, regex: str | None, choices: list[str] | None
) -> tuple[ResponseFormat | None, str | None]:
    """The response_format the flags ask for, and the flag that asked (to name it in errors)."""
    from pydantic import ValidationError

    from fmstack.models import ChoiceFormat, JsonSchemaFormat, RegexFormat

    given = [f for f, v in (("--json-schema", schema_file), ("--regex", regex),
                            ("--choice", choices)) if v]
    if len(given) > 1:
        raise ConfigError(
            f"use only one of --json-schema, --regex, --choice (got {', '.join(given)})"
        )
    if not given:
        return None, None
    flag = given[0]
    try:
        if schema_file:
            return JsonSchemaFormat(schema=_load_schema(schema_file)), flag
        if regex is not None:
            return RegexFormat(pattern=regex), flag
        return ChoiceFormat(choices=list(choices or [])), flag
    except ValidationError as e:
        raise ConfigError(common.validation_message(e, dict.fromkeys(
            ("schema", "json_schema", "pattern", "choices"), flag))) from None


def _load_schema(path_text: str) -> dict[str, Any]:
    path = Path(path_text)
    if not path.is_file():
        raise ConfigError(f"--json-schema: no such file: {path}")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--json-schema: {path} is not valid JSON ({e})") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"--json-schema: {path} must hold a JSON object, not "
                          f"{type(schema).__name__}")
    return schema


def _extractor(pattern: str | None, vote: int | None) -> Callable[[str], str | None] | None:
    """What --vote votes on: the last match of ``pattern`` (its first group if it has one)."""
    if pattern is None:
        return None
    if vote is None:
        raise ConfigError("--extract only applies to --vote")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"--extract: invalid regex {pattern!r}: {e}") from None

    def extract(text: str) -> str | None:
        matches = list(compiled.finditer(text))
        if not matches:
            return None
        last = matches[-1]
        return last.group(1) if compiled.groups else last.group(0)

    return extract


def _check_combinations(
    n: int, best_of: int | None, vote: int | None, stream: bool, as_json: bool, raw: bool,
    system: str | None,
) -> None:
    if best_of is not None and vote is not None:
        raise ConfigError("use only one of --best-of and --vote")
    for flag, value in (("--best-of", best_of), ("--vote", vote)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} needs at least 1 sample, got {value}")
    search = "--best-of" if best_of is not None else "--vote" if vote is not None else None
    if search and n != 1:
        raise ConfigError(f"{search} sets the number of samples itself; drop --n")
    if search and stream:
        raise ConfigError(f"--stream cannot be combined with {search}")
    if stream and n != 1:
        raise ConfigError("--stream supports --n 1 only")
    if stream and as_json:
        raise ConfigError("--stream cannot be combined with --json (use --json alone)")
    if raw and system:
        raise ConfigError("--system needs a chat prompt; drop --raw")


# ----- the four ways to run -------------------------------------------------------------------


def _plain(c: Completion, as_json: bool) -> None:
    if as_json:
        common.print_json({"text": c.text, **c.model_dump(mode="json")})
        return
    for choice in c.choices:
        # Model text is written as-is: no markup, no wrapping, nothing for rich to reinterpret.
        label = f"[{choice.index + 1}] " if len(c.choices) > 1 else ""
        sys.stdout.write(f"{label}{choice.text}\n")
        sys.stdout.flush()
        if choice.logprobs is not None:
            title = f"logprobs [{choice.index + 1}]" if len(c.choices) > 1 else "logprobs"
            common.print_logprobs(choice.logprobs, title)
    common.print_footer(c)


def _stream(m: Any, request: Request) -> None:
    final: Completion | None = None
    for delta in m.stream(request):
        if delta.text:
            sys.stdout.write(delta.text)
            sys.stdout.flush()
        if delta.completion is not None:
            final = delta.completion
    sys.stdout.write("\n")
    if final is not None:
        if final.logprobs is not None:
            common.print_logprobs(final.logprobs)
        common.print_footer(final)


def _best_of(m: Any, request: Request, n: int, as_json: bool) -> None:
    from fmstack.models import best_of_n

    result = best_of_n(m, request, n)
    c = result.completion
    winner = result.best.index
    if as_json:
        common.print_json({
            "text": result.text,
            "best_of": {"n": n, "scores": result.scores, "winner": winner},
            **c.model_dump(mode="json"),
        })
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("candidate")
    for choice, score in zip(c.choices, result.scores, strict=True):
        mark = " ★" if choice.index == winner else ""
        style = "bold green" if choice.index == winner else None
        table.add_row(f"{choice.index + 1}{mark}", f"{score:.3f}",
                      common.shorten(choice.text, 80), style=style)
    console = common.out()
    console.print(f"[bold]best of {n}[/bold] (score: mean token logprob)")
    console.print(table)
    console.print(f"[bold]winner: #{winner + 1}[/bold]")
    sys.stdout.write(result.text + "\n")
    common.print_footer(c)


def _vote(
    m: Any, request: Request, n: int, as_json: bool,
    extract: Callable[[str], str | None] | None,
) -> None:
    from fmstack.models import self_consistency

    result = self_consistency(m, request, n, extract=extract)
    c = result.completion
    if as_json:
        common.print_json({
            "text": result.answer,
            "vote": {"n": n, "answer": result.answer, "counts": result.counts,
                     "answers": result.answers, "agreement": result.agreement},
            **c.model_dump(mode="json"),
        })
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column("votes", justify="right")
    table.add_column("answer")
    for answer, count in result.counts.items():
        style = "bold green" if answer == result.answer else None
        table.add_row(str(count), common.shorten(answer, 80), style=style)
    console = common.out()
    console.print(f"[bold]self-consistency over {n} samples[/bold]")
    console.print(table)
    console.print(f"[bold]answer ({result.agreement:.0%} agreement):[/bold]")
    sys.stdout.write((result.answer if result.answer is not None else "(no answer)") + "\n")
    common.print_footer(c)
