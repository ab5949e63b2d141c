"""``fmstack serve``: the OpenAI-compatible API and gateway (``fmstack.serve``) on a port.

Models come from ``--model`` flags (``NAME=URI`` or a bare alias/URI, served under itself) or
from ``--config FILE`` (``fmstack.serve.config`` documents the format); flags given with a
config override its defaults for every route.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fmstack.cli import common


def serve(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Model to serve, as ALIAS/URI or NAME=ALIAS/URI (repeatable; "
        "one name given twice is two replicas).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Serve config (YAML): routes, replicas, fallbacks, limits.")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads for local models.")] = None,
    max_queue: Annotated[int | None, typer.Option(
        "--max-queue", help="Requests that may wait per model before 429 (default 64).")
    ] = None,
    max_concurrency: Annotated[int | None, typer.Option(
        "--max-concurrency", help="Requests running at once per replica (default 1).")
    ] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", help="Seconds one attempt may take before it is retried or fails.")
    ] = None,
    cache: Annotated[bool, typer.Option(
        "--cache", help="Answer repeated deterministic requests (temperature 0 or a seed) "
        "from memory.")] = False,
    embeddings: Annotated[list[str] | None, typer.Option(
        "--embeddings", help="Embedding model for /v1/embeddings (repeatable; default minilm)."
    )] = None,
    keys: Annotated[bool, typer.Option(
        "--keys", help="Require an API key (see `fmstack keys create`).")] = False,
    cors: Annotated[list[str] | None, typer.Option(
        "--cors-origin", help="Browser origin allowed to call the API (repeatable; * for any)."
    )] = None,
    ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Serve the web UI at /.")] = True,
    engine: Annotated[bool, typer.Option(
        "--engine/--no-engine", help="Serve GGUF models with the batching engine (continuous "
        "batching, prefix cache); --no-engine decodes one request at a time.")] = True,
    parallel: Annotated[int, typer.Option(
        "--parallel", "-np", help="Engine slots per GGUF model: requests decoded together.")
    ] = 4,
    speculative: Annotated[int, typer.Option(
        "--speculative", help="Engine: up to N draft tokens per step (0: off). Sampling is "
        "unchanged; tokens verified together can get slightly other logits, so a long greedy "
        "answer may rarely differ (docs/engine.md).")] = 0,
    draft: Annotated[str | None, typer.Option(
        "--draft", help="Engine: a smaller GGUF model (alias, URI or .gguf path) with the same "
        "vocabulary that proposes the draft tokens (default: prompt lookup).")] = None,
    weights: Annotated[str, typer.Option(
        "--weights", help="Engine: decode with the GGUF's own weights (file), an F16 copy of "
        "them (f16: much faster for many sequences at once where the type has no batched CPU "
        "kernel, e.g. Q4_1), or auto: f16 for Q4_1 and Q5_1 files on the CPU with 8 or more "
        "slots (docs/engine.md).")] = "auto",
    guard: Annotated[str | None, typer.Option(
        "--guard", help="Guard policy for every model: default, strict, audit or a YAML file "
        "(see `fmstack guard policies`).")] = None,
    ctx_size: Annotated[int | None, typer.Option(
        "--ctx-size", help="Engine KV cache in tokens, split over the slots (default "
        "2048 per slot).")] = None,
) -> None:
    """Serve models over an OpenAI-compatible API, with a playground and traces at /."""
    with common.user_errors():
        from fmstack.errors import ConfigError, missing

        try:
            import uvicorn

            from fmstack.serve.app import create_app
        except ImportError:
            raise missing("fastapi", "serve") from None
        from fmstack.serve.cache import ResponseCache
        from fmstack.serve.config import ServeConfig, load_config
        from fmstack.serve.gateway import RouteSpec

        if not 0 < port < 65536:
            raise ConfigError(f"--port {port} is not a TCP port")
        if config is not None and model:
            raise ConfigError("give models with --model or in --config, not both")
        cfg = load_config(config) if config is not None else ServeConfig(
            models=_routes(model or [common.DEFAULT_MODEL]),
            embeddings=embeddings or ["minilm"])
        overrides: dict[str, Any] = {k: v for k, v in {
            "max_queue": max_queue, "max_concurrency": max_concurrency,
            "timeout": timeout}.items() if v is not None}
        # exclude_unset: a field the config leaves out stays "unset" (engine routes then run
        # as many requests at once as the engine has slots).
        specs = [RouteSpec.model_validate({**spec.model_dump(exclude_unset=True), **overrides})
                 for spec in cfg.models]
        if threads is not None:
            for spec in specs:
                spec.options.setdefault("n_threads", threads)
        if embeddings:
            cfg.embeddings = embeddings
        if cache and cfg.cache is None:
            from fmstack.serve.config import CacheSpec

            cfg.cache = CacheSpec()
        keystore = None
        if keys or cfg.require_keys:
            from fmstack.serve.auth import KeyStore

            keystore = KeyStore()
            if not keystore.active():
                raise ConfigError("--keys needs at least one API key: run "
                                  "`fmstack keys create NAME` first")
        if parallel < 1:
            raise ConfigError(f"--parallel {parallel} must be at least 1")
        if ctx_size is not None and ctx_size < 16 * parallel:
            raise ConfigError(f"--ctx-size {ctx_size} is too small for {parallel} slots")
        if speculative < 0:
            raise ConfigError(f"--speculative {speculative} must be 0 or more")
        from fmstack.models.engine.weights import WEIGHTS

        if weights not in WEIGHTS:
            raise ConfigError(f"--weights {weights!r} is not one of {', '.join(WEIGHTS)}")
        sizing: dict[str, Any] | None = None
        if engine:
            sizing = {"parallel": parallel, "n_ctx": ctx_size or 2048 * parallel,
                      "speculative": speculative, "weights": weights}
            if draft is not None:
                sizing["draft"] = draft
        if guard is not None:
            cfg.guard = guard
        from fmstack.serve.config import load_guards

        guards = load_guards(cfg, specs)  # before loading models: a bad policy fails fast
        gateway = _load(specs, sizing)
    app = create_app(gateway, keys=keystore, embeddings=cfg.embeddings,
                     guards=guards.routes, key_guards=guards.keys,
                     cache=ResponseCache(cfg.cache.max_entries) if cfg.cache else None,
                     cors_origins=[*cfg.cors_origins, *(cors or [])], ui=ui)
    for route in gateway.routes.values():
        for replica in route.replicas:
            choice = getattr(replica.model, "weights", None)
            if choice is None:
                continue
            if choice.weights == "f16":
                common.err().print(f"{route.name}: decoding an F16 copy of its weights "
                                   f"({choice.reason}; --weights file keeps the file's): "
                                   f"{choice.path}", markup=False)
            else:
                common.err().print(f"{route.name}: decoding the file's own weights "
                                   f"({choice.reason})", markup=False)
    common.err().print(f"serving {', '.join(gateway.routes)} on http://{host}:{port}/v1"
                       f"{f' (UI at http://{host}:{port}/)' if ui else ''}", markup=False)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        gateway.close()


def _routes(flags: list[str]) -> list[Any]:
    """``--model`` flags as route specs: ``NAME=URI`` or a bare URI named after itself; a name
    given twice gets two replicas."""
    from fmstack.serve.gateway import RouteSpec

    uris: dict[str, list[str]] = {}
    for flag in flags:
        name, sep, uri = flag.partition("=")
        if not sep:
            name, uri = flag, flag
        if not name or not uri:
            from fmstack.errors import ConfigError

            raise ConfigError(f"--model {flag!r} is not NAME=URI or a model alias/URI")
        uris.setdefault(name, []).append(uri)
    return [RouteSpec(name=name, uris=u) for name, u in uris.items()]


def _load(specs: list[Any], sizing: dict[str, Any] | None) -> Any:
    """Load every replica (closing what was loaded when one fails). With ``sizing``, GGUF
    models (the llamacpp backend) are loaded into the batching engine with that many slots,
    and their routes run that many requests at once unless the config says otherwise."""
    from fmstack.models.registry import load_model, resolve
    from fmstack.serve.gateway import Gateway, Replica, Route

    routes: list[Route] = []
    try:
        for spec in specs:
            route = Route(spec, [])
            routes.append(route)
            for uri in spec.uris:
                backend, target = resolve(uri)
                if sizing is not None and backend == "llamacpp":
                    model = load_model(f"engine:{target}", **{**sizing, **spec.options})
                    if "max_concurrency" not in spec.model_fields_set:
                        spec.max_concurrency = model.engine.n_slots  # type: ignore[attr-defined]
                else:
                    model = load_model(uri, **spec.options)
                route.replicas.append(Replica(model))
        return Gateway(routes)
    except BaseException:
        for route in routes:
            for replica in route.replicas:
                replica.model.close()
        raise
