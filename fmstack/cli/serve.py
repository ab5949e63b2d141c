"""``fmstack serve``: the OpenAI-compatible API (``fmstack.serve.app``) on a local port."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fmstack.cli import common


def serve(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Model alias or URI to serve (repeatable); clients pick it by "
        "its name.")] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads for local models.")] = None,
) -> None:
    """Serve models over an OpenAI-compatible API (/v1/chat/completions, /v1/completions,
    /v1/models, /health)."""
    with common.user_errors():
        from fmstack.errors import ConfigError, missing

        try:
            import uvicorn

            from fmstack.serve.app import create_app
        except ImportError:
            raise missing("fastapi", "serve") from None
        from fmstack.models.registry import load_model

        names = model or [common.DEFAULT_MODEL]
        if len(set(names)) != len(names):
            raise ConfigError("a model is named twice")
        if not 0 < port < 65536:
            raise ConfigError(f"--port {port} is not a TCP port")
        options: dict[str, Any] = {} if threads is None else {"n_threads": threads}
        loaded = {name: load_model(name, **options) for name in names}
    common.err().print(f"serving {', '.join(loaded)} on http://{host}:{port}/v1",
                       markup=False)
    try:
        uvicorn.run(create_app(loaded), host=host, port=port, log_level="warning")
    finally:
        for m in loaded.values():
            m.close()
