"""``fmstack logs``: the trace store, newest first; ``fmstack logs show ID`` for one call."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer

from fmstack.cli import common
from fmstack.errors import ConfigError

app = typer.Typer(
    help="Recent model calls from the trace store (`fmstack logs show ID` for one in full).",
    add_completion=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.callback(invoke_without_command=True)
def list_traces(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many traces.")] = 20,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Only calls to this model.")
    ] = None,
    errors: Annotated[bool, typer.Option("--errors", help="Only calls that failed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List recent traces."""
    if ctx.invoked_subcommand is not None:
        return
    with common.user_errors():
        if limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {limit}")
        from fmstack.store import TraceStore

        store = TraceStore()
        try:
            rows = store.list(limit=limit, model=model, errors_only=errors)
        finally:
            store.close()
    if as_json:
        common.print_json(rows)
        return
    console = common.out()
    if not rows:
        console.print("no traces" + (" match" if model or errors else " yet"), style="dim")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("id", "time", "model", "prompt", "output", "tokens", "secs", "error"):
        table.add_column(name, justify="right" if name in ("id", "tokens", "secs") else "left",
                         no_wrap=True)
    # Rich's own column shrinking drops whole columns on a narrow terminal, so the free-text
    # columns are cut here to share what the fixed ones (id, time, tokens, secs) leave.
    free = max(console.width - 44, 40)
    model_w, text_w = free * 2 // 10, free * 25 // 100
    error_w = free - model_w - 2 * text_w
    for r in rows:
        tokens = (r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0)
        table.add_row(
            str(r["id"]),
            _local_time(r["created_at"]),
            common.shorten(r["model"], model_w),
            common.shorten(prompt_of(r), text_w),
            common.shorten(r["output"], text_w),
            str(tokens) if r["completion_tokens"] is not None else "",
            f"{r['total_s']:.2f}" if r["total_s"] is not None else "",
            common.shorten(r["error"], error_w),
            style="red" if r["error"] else None,
        )
    console.print(table)


@app.command("show")
def show(
    trace_id: Annotated[int, typer.Argument(metavar="ID", help="Trace id (see `fmstack logs`).")],
    as_json: JsonOpt = False,
) -> None:
    """Show one trace in full."""
    with common.user_errors():
        from fmstack.store import TraceStore

        store = TraceStore()
        try:
            row = store.get(trace_id)
            if row is None:
                newest = store.list(limit=1)
                hint = f"the newest is {newest[0]['id']}" if newest else "the store is empty"
                raise ConfigError(f"no trace with id {trace_id} ({hint})")
        finally:
            store.close()
    if as_json:
        common.print_json(row)
        return
    _print_trace(row)


def prompt_of(row: dict[str, Any]) -> str:
    """What the user asked: the raw prompt, or the last user message of a chat."""
    if row.get("prompt") is not None:
        return str(row["prompt"])
    for m in reversed(row.get("messages") or []):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return ""


def _local_time(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _print_trace(r: dict[str, Any]) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = common.out()
    meta = Table.grid(padding=(0, 2))
    meta.add_column(style="bold")
    meta.add_column()
    tokens = f"{r['prompt_tokens']} prompt + {r['completion_tokens']} completion"
    timing = ", ".join(
        f"{label} {r[key]:.3f} s" for label, key in
        [("queue", "queue_s"), ("ttft", "ttft_s"), ("tpot", "tpot_s"), ("total", "total_s")]
        if r.get(key) is not None
    )
    for label, value in [
        ("id", r["id"]), ("time", _local_time(r["created_at"])), ("model", r["model"]),
        ("backend", r["backend"]), ("kind", r["kind"]),
        ("params", json.dumps(r["params"], ensure_ascii=False)),
        ("tokens", tokens if r["completion_tokens"] is not None else None),
        ("timings", timing), ("cost", f"${r['cost']:.6f}" if r["cost"] else None),
        ("finish", r["finish_reason"]),
        ("tags", json.dumps(r["tags"], ensure_ascii=False) if r["tags"] else None),
    ]:
        if value not in (None, ""):
            meta.add_row(label, Text(str(value)))
    console.print(meta)
    if r["messages"] is not None:
        for m in r["messages"]:
            console.print(Panel(Text(m["content"]), title=m["role"], title_align="left"))
    elif r["prompt"] is not None:
        console.print(Panel(Text(r["prompt"]), title="prompt", title_align="left"))
    choices = r["choices"] or []
    if len(choices) > 1:
        for c in choices:
            console.print(Panel(Text(c["text"]), title=f"output [{c['index'] + 1}]",
                                title_align="left", border_style="green"))
    elif r["output"] is not None:
        console.print(Panel(Text(r["output"]), title="output", title_align="left",
                            border_style="green"))
    if r["error"]:
        console.print(Panel(Text(r["error"]), title="error", title_align="left",
                            border_style="red"))
