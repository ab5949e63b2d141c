"""The ``fmstack`` command line: thin wiring from flags to the library, then printing.

One module per command group (models, generate, chat, logs, prompt, eval, rag, guard); ``common``
holds the error contract and shared flags. Heavy imports (pydantic models, llama.cpp, torch)
happen inside the commands, so ``fmstack --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from fmstack import __version__
from fmstack.cli import (
    bench,
    chat,
    common,
    generate,
    guard,
    keys,
    logs,
    models,
    prompt,
    rag,
    serve,
)
from fmstack.cli import eval as eval_cli

app = typer.Typer(
    name="fmstack",
    help="fmstack: the foundation-model application stack.",
    no_args_is_help=True,
    add_completion=False,
    # Locals can hold prompts and keys; a bug's traceback should not print them.
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fmstack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """fmstack: the foundation-model application stack."""


app.command("models")(models.models)
app.command("generate")(generate.generate)
app.command("chat")(chat.chat)
app.add_typer(logs.app, name="logs")
app.add_typer(prompt.app, name="prompt")
app.add_typer(eval_cli.app, name="eval")
app.add_typer(rag.app, name="rag")
app.add_typer(bench.app, name="bench")
app.command("serve")(serve.serve)
app.add_typer(keys.app, name="keys")
app.add_typer(guard.app, name="guard")


def main() -> None:
    """Entry point of the ``fmstack`` console script.

    Usage errors found while parsing (an unknown flag, a non-number for --top-k) are reported
    in the same one-line ``error:`` form as everything else, with exit code 2.
    """
    try:
        code = app(prog_name="fmstack", standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("\n")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        # Typer's usage errors are click's (vendored in newer typer, so not importable under
        # one name across versions): recognised by their interface instead of their class.
        exit_code = getattr(e, "exit_code", None)
        if not (hasattr(e, "format_message") and isinstance(exit_code, int)):
            raise
        ctx = getattr(e, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        common.print_error(e.format_message() + hint)
        sys.exit(exit_code)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
