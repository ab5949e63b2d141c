"""``fmstack keys``: API keys for ``fmstack serve`` (create, list, revoke).

The secret is printed once, by ``create``, on stdout (so ``$(fmstack keys create ci)`` captures
it); the warning that it will not be shown again goes to stderr. Only its hash is stored.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated

import typer

from fmstack.cli import common

app = typer.Typer(
    help="API keys for `fmstack serve`: create (the secret is shown once), list, revoke.",
    add_completion=False,
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A name for the key, unique among active keys.")],
    rate_limit: Annotated[int | None, typer.Option(
        "--rate-limit", help="Requests per minute for this key (also the burst). "
        "[default: unlimited]")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print its secret (shown this once only)."""
    with common.user_errors():
        from fmstack.serve.auth import KeyStore

        with KeyStore() as store:
            new = store.create(name, rate_limit=rate_limit)
    if as_json:
        common.print_json({**asdict(new.info), "secret": new.secret})
    else:
        common.out().print(new.secret, markup=False, soft_wrap=True)
    limit = f"{rate_limit} requests/minute" if rate_limit is not None else "no rate limit"
    common.err().print(f"created key {name!r} ({new.info.prefix}…, {limit}); copy the secret "
                       "now: it is stored hashed and will not be shown again", style="yellow",
                       markup=False)


@app.command("list")
def list_keys(
    active: Annotated[bool, typer.Option("--active", help="Hide revoked keys.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List keys (name, prefix, created, last used, revoked, rate limit); never the secrets."""
    with common.user_errors():
        from fmstack.serve.auth import KeyStore

        with KeyStore() as store:
            keys = store.list(include_revoked=not active)
    if as_json:
        common.print_json([asdict(k) for k in keys])
        return
    console = common.out()
    if not keys:
        console.print("no API keys yet (fmstack keys create NAME)", style="dim")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("name", "prefix", "created", "last used", "revoked", "rate limit"):
        table.add_column(column, justify="right" if column == "rate limit" else "left")
    for k in keys:
        table.add_row(k.name, k.prefix + "…", _local_time(k.created_at),
                      _local_time(k.last_used_at) or "never", _local_time(k.revoked_at),
                      f"{k.rate_limit}/min" if k.rate_limit is not None else "unlimited",
                      style="dim" if k.revoked_at else None)
    console.print(table)


@app.command("revoke")
def revoke(
    name_or_prefix: Annotated[str, typer.Argument(
        help="The key's name, or its prefix as `fmstack keys list` shows it.")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key: a running server refuses it from its next request on."""
    with common.user_errors():
        from fmstack.serve.auth import KeyStore

        with KeyStore() as store:
            info = store.revoke(name_or_prefix)
    if as_json:
        common.print_json(asdict(info))
        return
    common.out().print(f"revoked key {info.name!r} ({info.prefix}…)", markup=False)


def _local_time(iso: str | None) -> str:
    if iso is None:
        return ""
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
