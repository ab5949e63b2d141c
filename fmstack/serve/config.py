"""The serve config: what ``fmstack serve --config FILE`` reads (YAML), and what flags build.

```yaml
models:
  - name: smollm2                 # what clients send as `model`
    uris: [smollm2, smollm2]      # two local replicas (or upstreams: openai:NAME@URL)
    options: {n_threads: 1}       # backend options for every replica
    policy: least_busy            # or round_robin
    fallbacks: [remote]           # other names to try when every attempt here failed
    retries: 2                    # extra attempts after an upstream failure (backoff doubles)
    timeout: 60                   # seconds one attempt may take
    max_concurrency: 1            # requests running at once per replica
    max_queue: 64                 # waiting requests before 429
  - {name: remote, uris: ["openai:smollm2@http://10.0.0.5:8000/v1"], max_concurrency: 8}
embeddings: [minilm]              # served on /v1/embeddings, loaded on first use
cache: {max_entries: 1024}        # exact-response cache (omit or null: off)
cors_origins: ["http://localhost:3000"]
require_keys: false               # true: every /v1 and /api request needs an API key
guard: default                    # guard policy for every model (a models: entry's own
                                  # `guard:` wins); built-in name or YAML file (fmstack.guard)
key_guards: {partner: strict}     # policy per API key name (wins over the model's)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fmstack.errors import ConfigError
from fmstack.serve.gateway import RouteSpec


class CacheSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_entries: int = Field(1024, ge=1, le=10_000_000)


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[RouteSpec] = Field(min_length=1)
    embeddings: list[str] = Field(default_factory=list)
    cache: CacheSpec | None = None
    cors_origins: list[str] = Field(default_factory=list)
    require_keys: bool = False
    guard: str | None = None
    key_guards: dict[str, str] = Field(default_factory=dict)


def load_config(path: Path) -> ServeConfig:
    """Read and validate a serve config; errors name the file and the field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"serve config {path} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read serve config {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"serve config {path} must be a mapping with a `models:` list")
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as e:
        # Every problem at once: a misspelt key shows up as both missing and unknown.
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                             for err in e.errors())
        raise ConfigError(f"serve config {path}: {problems}") from None


@dataclass
class Guards:
    """The Guard of each served name, and of each API key named in ``key_guards``."""

    routes: dict[str, Any]
    keys: dict[str, Any]


def load_guards(cfg: ServeConfig, specs: list[RouteSpec]) -> Guards:
    """Load the policies a config names; one policy file loads once, so routes naming the same
    one share a Guard (and its canary)."""
    from fmstack.guard import load_policy

    loaded: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in loaded:
            loaded[name] = load_policy(name)
        return loaded[name]

    return Guards(routes={spec.name: get(g) for spec in specs if (g := spec.guard or cfg.guard)},
                  keys={key: get(g) for key, g in cfg.key_guards.items()})
