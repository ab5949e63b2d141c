"""``fmstack guard``: scan text for injections, jailbreaks, PII and secrets; redact it; list
the built-in policies.

``scan`` exits 0 when nothing is found (or nothing is blocked, with ``--policy``) and 2 when
something is, like other secret scanners, so it can gate a CI job; errors exit 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fmstack.cli import common

if TYPE_CHECKING:
    from fmstack.guard import Finding, Scanner

app = typer.Typer(help="Guards: scan text for injections, jailbreaks, PII and secrets; redact.",
                  add_completion=False, no_args_is_help=True)

# What `scan` and `redact` run when no scanner or policy is named: the pattern scanners, which
# need no model.
DEFAULT_SCAN = ("injection", "unicode", "pii", "secrets")
DEFAULT_REDACT = ("pii", "secrets")
MAX_BYTES = 20_000_000
FOUND_EXIT = 2

FileArg = Annotated[str, typer.Argument(help="A UTF-8 text file, or - for stdin.")]
ScannerOpt = Annotated[list[str] | None, typer.Option(
    "--scanner", "-s", help="A scanner to run (repeatable; see `fmstack guard scanners`).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
MaxBytesOpt = Annotated[int, typer.Option("--max-bytes", help="Refuse bigger inputs.")]


@app.command("scan")
def scan(
    file: FileArg = "-",
    scanner: ScannerOpt = None,
    policy: Annotated[str | None, typer.Option(
        "--policy", "-p", help="Apply a policy's input rules instead (default, strict, audit or "
        "a YAML file): actions and thresholds as configured.")] = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", help="With --scanner: report findings scored at least this.")] = 0.5,
    as_json: JsonOpt = False,
    max_bytes: MaxBytesOpt = MAX_BYTES,
) -> None:
    """Report what the scanners find in FILE (a table, or JSON)."""
    with common.user_errors():
        if policy is not None and scanner:
            raise common.ConfigError("give --policy or --scanner, not both")
        text = _read(file, max_bytes)
        if policy is not None:
            from fmstack.guard import load_policy

            verdict = load_policy(policy).input.check(text)
            findings, blocked = verdict.findings, verdict.blocked
        else:
            findings = [f for s in _scanners(scanner or DEFAULT_SCAN) for f in s.scan(text)
                        if f.score >= threshold]
            blocked = None
    if as_json:
        common.print_json({"findings": [f.to_json() | {"text": text[f.start:f.end][:200]}
                                        for f in findings],
                           "blocked": blocked.to_json() if blocked else None})
    else:
        _table(text, findings)
        if blocked is not None:
            common.err().print(f"blocked: {blocked.kind}: {blocked.detail}", markup=False,
                               style="red")
    if (blocked is not None) if policy is not None else bool(findings):
        raise typer.Exit(FOUND_EXIT)


@app.command("redact")
def redact(
    file: FileArg = "-",
    scanner: ScannerOpt = None,
    vault: Annotated[Path | None, typer.Option(
        "--vault", help="Write reversible placeholders (<EMAIL_1>) and save the originals to "
        "this JSON file, for `fmstack guard restore`.")] = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", help="Redact findings scored at least this.")] = 0.5,
    max_bytes: MaxBytesOpt = MAX_BYTES,
) -> None:
    """Print FILE with what the scanners find (default: PII and secrets) replaced."""
    with common.user_errors():
        from fmstack.guard import Policy, Rule

        text = _read(file, max_bytes)
        box = None
        if vault is not None:
            from fmstack.guard.vault import Vault

            box = Vault()
        rules = [Rule(s, "redact", threshold) for s in _scanners(scanner or DEFAULT_REDACT)]
        verdict = Policy(rules, max_chars=max_bytes, redactor=box).check(text)
        if box is not None and vault is not None:
            _write_atomic(vault, json.dumps(box.to_json(), ensure_ascii=False, indent=2))
    sys.stdout.write(verdict.text)


@app.command("restore")
def restore(
    file: FileArg = "-",
    vault: Annotated[Path, typer.Option("--vault", help="The JSON file `redact` wrote.")] = Path(
        "vault.json"),
    max_bytes: MaxBytesOpt = MAX_BYTES,
) -> None:
    """Put the originals back into FILE's vault placeholders."""
    with common.user_errors():
        from fmstack.guard.vault import Vault

        try:
            box = Vault.from_json(json.loads(vault.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise common.ConfigError(f"cannot read vault {vault}: {e}") from None
        text = _read(file, max_bytes)
    sys.stdout.write(box.restore(text))


@app.command("scanners")
def scanners(as_json: JsonOpt = False) -> None:
    """List the installed scanners."""
    from fmstack.guard import scanner_classes

    names = sorted(scanner_classes())
    if as_json:
        common.print_json(names)
    else:
        for name in names:
            common.out().print(name, markup=False)


@app.command("policies")
def policies(as_json: JsonOpt = False) -> None:
    """List the built-in policies and their rules."""
    import yaml

    from fmstack.guard.guard import POLICY_DIR

    found = {p.stem: yaml.safe_load(p.read_text(encoding="utf-8"))
             for p in sorted(POLICY_DIR.glob("*.yaml"))}
    if as_json:
        common.print_json(found)
        return
    for name, data in found.items():
        common.out().print(f"[bold]{name}[/bold]: {' '.join(data['description'].split())}")
        for side in ("input", "output"):
            rules = ", ".join(f"{r['scanner']}→{r.get('action', 'block')}"
                              for r in data.get(side) or [])
            common.out().print(f"  {side}: {rules}", markup=False)


def _scanners(names: Any) -> list[Scanner]:
    from fmstack.guard import make_scanner

    return [make_scanner(n) for n in names]


def _read(file: str, max_bytes: int) -> str:
    if file == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise common.ConfigError("no input: give FILE or pipe text on stdin")
        data = sys.stdin.buffer.read(max_bytes + 1)
        name = "stdin"
    else:
        path = Path(file)
        if not path.is_file():
            raise common.ConfigError(f"{file}: no such file")
        if path.stat().st_size > max_bytes:
            raise common.ConfigError(f"{file} is {path.stat().st_size:,} bytes, over the limit "
                                     f"of {max_bytes:,} bytes (--max-bytes)")
        data = path.read_bytes()
        name = file
    if len(data) > max_bytes:
        raise common.ConfigError(f"{name} is over the limit of {max_bytes:,} bytes (--max-bytes)")
    if b"\x00" in data[:65536]:
        raise common.ConfigError(f"{name} looks binary (it has NUL bytes): give a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise common.ConfigError(f"{name} is not UTF-8 text (byte {e.start}): convert it "
                                 "first") from None


def _table(text: str, findings: list[Finding]) -> None:
    from rich.table import Table
    from rich.text import Text

    if not findings:
        common.err().print("nothing found")
        return
    table = Table("scanner", "kind", "where", "score", "match", "detail")
    for f in sorted(findings, key=lambda f: f.start):
        line = text.count("\n", 0, f.start) + 1
        match = text[f.start:f.end]
        shown = match if len(match) <= 60 else match[:57] + "..."
        # Text(): a hostile file must not be able to style or move the terminal.
        table.add_row(f.scanner, f.kind, f"line {line}, {f.start}-{f.end}", f"{f.score:.2f}",
                      Text(shown.encode("unicode_escape").decode("ascii")), Text(f.detail))
    common.out().print(table)


def _write_atomic(path: Path, content: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(content, encoding="utf-8")
    tmp.replace(path)
