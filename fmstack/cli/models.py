"""``fmstack models``: the aliases you can pass to ``-m``, the registered backends, and whether
each is usable here.

Nothing heavy is imported: install status comes from ``importlib.util.find_spec``, so listing
never pays for importing torch or llama.cpp (or, for gemma3-270m, for unpacking the model).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any

import typer

from fmstack.cli import common

# The modules each built-in backend imports to run (beyond fmstack). A plugin backend is checked
# by finding its own module, since its dependencies are its package's business.
BACKEND_MODULES: dict[str, tuple[str, ...]] = {
    "llamacpp": ("llama_cpp",),
    "hf": ("torch", "transformers", "gguf", "accelerate"),
    "openai": ("openai", "httpx"),
}

# Built-in aliases ship their weights in a Python package (Alias.package). Listing checks for that
# package rather than resolving the alias, because resolving gemma3-270m assembles a 250 MB file
# on first use. These aliases resolve to a path without writing anything:
CHEAP_TARGET = frozenset({"smollm2", "smollm2-hf"})


def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List model aliases and backends, and what is installed."""
    with common.user_errors():
        report = collect()
    if as_json:
        common.print_json(report)
        return
    from rich.table import Table
    from rich.text import Text

    console = common.out()
    aliases = Table(title="models (use with -m)", title_justify="left", header_style="bold",
                    box=None, pad_edge=False)
    for col in ("name", "backend", "usable", "description / target"):
        aliases.add_column(col, overflow="fold")
    for a in report["aliases"]:
        name = a["name"] + (" (default)" if a["name"] == report["default"] else "")
        usable = "[green]yes[/green]" if a["usable"] else f"[red]no[/red]: {a['missing']}"
        about = Text(a["description"])
        about.append("\n" + a["target"], style="dim")
        aliases.add_row(name, a["backend"], usable, about)
    console.print(aliases)
    console.print()
    backends = Table(title="backends (-m backend:target)", title_justify="left",
                     header_style="bold", box=None, pad_edge=False)
    for col in ("backend", "class", "installed"):
        backends.add_column(col, overflow="fold")
    for b in report["backends"]:
        installed = ("[green]yes[/green]" if b["installed"]
                     else f"[red]no[/red]: pip install {b['install']}")
        backends.add_row(b["name"], b["entry_point"], installed)
    console.print(backends)


def collect() -> dict[str, Any]:
    """The listing as data (what ``--json`` prints)."""
    from fmstack.models.registry import (
        BACKEND_EXTRAS,
        BUILTIN_ALIASES,
        DEFAULT_MODEL,
        backends,
        user_aliases,
    )

    registered = backends()
    backend_rows = []
    for name, entry in sorted(registered.items()):
        missing = _missing_modules(name, entry)
        backend_rows.append({
            "name": name,
            "entry_point": entry,
            "installed": not missing,
            "missing": missing,
            "install": f"'fmstack[{BACKEND_EXTRAS[name]}]'" if name in BACKEND_EXTRAS else name,
        })
    backend_ok = {b["name"]: not b["missing"] for b in backend_rows}

    alias_rows: list[dict[str, Any]] = []
    for alias in BUILTIN_ALIASES.values():
        package = alias.package
        have_weights = package is None or importlib.util.find_spec(package) is not None
        if alias.name in CHEAP_TARGET and have_weights:
            target = alias.target()
        elif package:
            target = f"from package {package}"
        else:
            target = "(resolved on load)"
        missing = []
        if not backend_ok.get(alias.backend, False):
            missing.append(f"backend {alias.backend}")
        if not have_weights:
            missing.append(f"package {package}")
        alias_rows.append(_alias_row(alias.name, alias.backend, target, alias.description,
                                     "builtin", missing))
    for name, uri in sorted(user_aliases().items()):
        backend, _, target = uri.partition(":")
        builtin = next((a for a in alias_rows if a["name"] == uri), None)
        if builtin is not None:
            alias_rows.append({**builtin, "name": name, "source": "user",
                               "description": f"→ {uri}"})
            continue
        missing = []
        if backend not in registered:
            missing.append(f"unknown backend {backend!r}")
        elif not backend_ok[backend]:
            missing.append(f"backend {backend}")
        elif backend in ("llamacpp", "hf") and not Path(target).expanduser().exists():
            missing.append("file not found")
        alias_rows.append(_alias_row(name, backend, target, f"user alias → {uri}", "user",
                                     missing))
    return {"default": DEFAULT_MODEL, "aliases": alias_rows, "backends": backend_rows}


def _alias_row(name: str, backend: str, target: str, description: str, source: str,
               missing: list[str]) -> dict[str, Any]:
    return {"name": name, "backend": backend, "target": target, "description": description,
            "source": source, "usable": not missing, "missing": ", ".join(missing)}


def _missing_modules(backend: str, entry_point: str) -> list[str]:
    module = entry_point.partition(":")[0]
    needed = BACKEND_MODULES.get(backend, ())
    return [m for m in (*needed, module) if not _importable(m)]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False
