"""``fmstack prompt``: list, show, render, diff and run prompt files.

``render`` prints the exact text the model receives (its chat template applied), so nothing
about the prompt is hidden; ``run`` sends that same request, traced with the prompt's name and
version. ``--prompts DIR`` (repeatable, before or after the command) searches DIR first, then
the usual path (``$FMSTACK_PROMPTS`` or ``$FMSTACK_HOME/prompts``, then the builtin prompts).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fmstack.cli import common
from fmstack.cli.common import (
    DEFAULT_MODEL,
    FrequencyPenalty,
    MaxTokens,
    MinP,
    PresencePenalty,
    RepetitionPenalty,
    Seed,
    Stop,
    Temperature,
    TopK,
    TopP,
)
from fmstack.errors import ConfigError

if TYPE_CHECKING:
    from fmstack.models import Completion
    from fmstack.prompts import PromptFile, PromptLibrary

app = typer.Typer(
    help="Prompt files: list, show, render (the exact text the model sees), diff, run.",
    no_args_is_help=True,
    add_completion=False,
)

PromptsOpt = Annotated[
    list[str] | None,
    typer.Option("--prompts", metavar="DIR", help="Also search DIR for prompt files, first "
                 "(repeatable)."),
]
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Prompt name or path to a "
                                        ".prompt file.")]
VarOpt = Annotated[
    list[str] | None,
    typer.Option("--var", metavar="KEY=VALUE", help="An input variable (repeatable); "
                 "converted to the declared type (arrays and objects as JSON)."),
]
PromptModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Alias or URI; by default the prompt's own model, "
                 f"else {DEFAULT_MODEL}."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.callback()
def _prompts_root(ctx: typer.Context, prompts: PromptsOpt = None) -> None:
    ctx.obj = list(prompts or [])


def _library(ctx: typer.Context, extra: list[str] | None) -> PromptLibrary:
    from fmstack.prompts import PromptLibrary, default_dirs

    given = [*(ctx.obj or []), *(extra or [])]
    return PromptLibrary([*given, *default_dirs()]) if given else PromptLibrary()


def _parse_vars(prompt: PromptFile, pairs: list[str] | None) -> dict[str, Any]:
    raw: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--var expects KEY=VALUE, got {pair!r}")
        raw[key.strip()] = value
    return prompt.coerce_vars(raw)


def _summary(p: PromptFile) -> dict[str, Any]:
    return {"name": p.name, "version": p.version, "source": p.source,
            "description": p.description, "path": str(p.path) if p.path else None}


@app.command("list")
def list_prompts(ctx: typer.Context, prompts: PromptsOpt = None, as_json: JsonOpt = False) -> None:
    """List the prompts on the search path."""
    with common.user_errors():
        library = _library(ctx, prompts)
        found = library.list()
    for problem in library.problems:
        common.err().print(f"warning: skipped {problem}", style="yellow", markup=False)
    if as_json:
        common.print_json([_summary(p) for p in found])
        return
    console = common.out()
    if not found:
        console.print("no prompts found", style="dim")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("name", "version", "source", "description"):
        table.add_column(col, no_wrap=col != "description")
    for p in found:
        table.add_row(p.name, p.version, p.source, p.description)
    console.print(table)


@app.command("show")
def show(
    ctx: typer.Context, name: NameArg, prompts: PromptsOpt = None, as_json: JsonOpt = False,
) -> None:
    """Show a prompt file, its inputs and the versions recorded so far."""
    with common.user_errors():
        from fmstack.store.prompts import PromptVersions

        p = _library(ctx, prompts).get(name)
        with PromptVersions() as store:
            seen = store.versions(p.name)
    versions = [{"version": v["version"], "created_at": v["created_at"], "path": v["path"],
                 "current": v["version"] == p.version} for v in seen]
    if as_json:
        common.print_json({
            **_summary(p), "model": p.model,
            "params": p.params.model_dump(mode="json", exclude_unset=True),
            "inputs": {k: {"type": s.type, "description": s.description,
                           "required": s.required, **({} if s.required else {"default": s.default})}
                       for k, s in p.inputs.items()},
            "examples": len(p.examples), "output_schema": p.output_schema,
            "versions": versions, "text": p.text,
        })
        return
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = common.out()
    meta = Table.grid(padding=(0, 2))
    meta.add_column(style="bold")
    meta.add_column()
    for label, value in [("name", p.name), ("version", p.version), ("source", p.source),
                         ("path", str(p.path)), ("description", p.description),
                         ("model", p.model),
                         ("examples", str(len(p.examples)) if p.examples else None)]:
        if value:
            meta.add_row(label, Text(value))
    console.print(meta)
    if p.inputs:
        table = Table(box=None, pad_edge=False, header_style="bold", title="inputs",
                      title_justify="left")
        for col in ("name", "type", "required", "default", "description"):
            table.add_column(col)
        for k, s in p.inputs.items():
            table.add_row(k, s.type, "yes" if s.required else "no",
                          "" if s.required else repr(s.default), s.description)
        console.print(table)
    console.print(Panel(Text(p.text), title=str(p.path or p.name), title_align="left"))
    if versions:
        console.print("versions seen (oldest first): " + ", ".join(
            v["version"] + (" (current)" if v["current"] else "") for v in versions))
    else:
        console.print("no versions recorded yet (one is recorded when the prompt is rendered)",
                      style="dim")


@app.command("render")
def render(
    ctx: typer.Context, name: NameArg, var: VarOpt = None, model: PromptModelOpt = None,
    prompts: PromptsOpt = None, as_json: JsonOpt = False,
) -> None:
    """Print the exact text MODEL receives (chat template applied), its token count and cost."""
    with common.user_errors():
        from fmstack.models import load_model
        from fmstack.prompts import render as render_prompt

        p = _library(ctx, prompts).get(name)
        values = _parse_vars(p, var)
        p.check_inputs(values)  # before loading the model: a bad variable costs nothing
        with load_model(model or p.model or DEFAULT_MODEL, trace=False) as m:
            r = render_prompt(p, values, m)
            model_name = m.name
    if as_json:
        common.print_json({
            "name": p.name, "version": p.version, "model": model_name,
            "messages": [msg.model_dump() for msg in r.messages], "text": r.text,
            "token_count": r.token_count, "estimated_cost": r.estimated_cost,
            "params": r.request.params.model_dump(mode="json", exclude_defaults=True),
        })
        return
    sys.stdout.write(r.text if r.text.endswith("\n") else r.text + "\n")
    sys.stdout.flush()
    cost = f"${r.estimated_cost:.6f}" if r.estimated_cost else "$0 (no price for this model)"
    common.err().print(
        f"{p.name}@{p.version} · {model_name} · {r.token_count} tokens · estimated cost {cost} "
        f"(prompt + max_tokens {r.request.params.max_tokens})", style="dim", markup=False)


@app.command("diff")
def diff(
    ctx: typer.Context, name: NameArg,
    v1: Annotated[str, typer.Argument(metavar="V1", help="A recorded version (hash prefix).")],
    v2: Annotated[str | None, typer.Argument(metavar="V2", help="Another one; omit for the "
                                             "current file.")] = None,
    prompts: PromptsOpt = None,
) -> None:
    """Unified diff between two recorded versions of a prompt."""
    with common.user_errors():
        library = _library(ctx, prompts)
        # A recorded version outlives its file, so a plain name with two versions needs no file.
        by_file = v2 is None or name.endswith(".prompt") or "/" in name
        prompt_name = library.get(name).name if by_file else name
        text = library.diff(prompt_name, v1, v2)
    if not text:
        common.err().print("the versions are identical", style="dim")
        return
    sys.stdout.write(text)


@app.command("run")
def run(
    ctx: typer.Context, name: NameArg, var: VarOpt = None, model: PromptModelOpt = None,
    prompts: PromptsOpt = None,
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the Completion as JSON "
                                          "(no streaming).")] = False,
    no_trace: Annotated[bool, typer.Option("--no-trace", help="Do not log this call.")] = False,
) -> None:
    """Run a prompt: stream the model's answer (traced with the prompt's name and version)."""
    given: dict[str, Any] = {k: v for k, v in dict(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, seed=seed, max_tokens=max_tokens, stop=stop,
    ).items() if v is not None and v != []}
    with common.user_errors():
        common.sampling_params(given, common.flag_names())  # a bad flag fails before loading
        from fmstack.models import load_model

        p = _library(ctx, prompts).get(name)
        values = _parse_vars(p, var)
        request = p.request(values, **given)
        with load_model(model or p.model or DEFAULT_MODEL, trace=not no_trace) as m:
            if as_json:
                c = m.complete(request)
                common.print_json({"text": c.text, "prompt": p.name, "prompt_version": p.version,
                                   **c.model_dump(mode="json")})
                return
            final: Completion | None = None
            for delta in m.stream(request):
                if delta.text:
                    sys.stdout.write(delta.text)
                    sys.stdout.flush()
                if delta.completion is not None:
                    final = delta.completion
            sys.stdout.write("\n")
    if final is not None:
        common.err().print(f"{p.name}@{p.version} · {common.footer_text(final)}", style="dim",
                           markup=False)
