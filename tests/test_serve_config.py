"""The serve config file and the ``fmstack serve`` flags that build routes: errors name the
file and field; a config with replicas, fallbacks and embeddings serves what it says."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from servers import free_port

from fmstack.errors import ConfigError
from fmstack.models.registry import load_model
from fmstack.serve.config import load_config
from fmstack.serve.gateway import Gateway, Replica, Route, RouteSpec

FMSTACK = Path(sys.executable).parent / "fmstack"

CONFIG = """
models:
  - name: chat
    uris: [smollm2, smollm2]
    options: {n_threads: 1}
    policy: round_robin
    max_queue: 8
    fallbacks: [backup]
  - name: backup
    uris: [smollm2]
    options: {n_threads: 1}
embeddings: [minilm]
cache: {max_entries: 16}
cors_origins: ["http://localhost:3000"]
"""


def test_a_config_file_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(CONFIG)
    cfg = load_config(path)
    assert [m.name for m in cfg.models] == ["chat", "backup"]
    assert cfg.models[0].uris == ["smollm2", "smollm2"] and cfg.models[0].max_queue == 8
    assert cfg.models[1].retries == 2 and cfg.models[1].policy == "least_busy"  # defaults
    assert cfg.cache is not None and cfg.cache.max_entries == 16
    for text, words in [
        ("models: []", "models: List should have at least 1 item"),
        ("modles: [{name: a, uris: [smollm2]}]", "modles: Extra inputs are not permitted"),
        ("models: [{name: a, uris: [smollm2], policy: random}]", "models.0.policy"),
        ("models: [{name: a, uris: [smollm2], max_queue: -1}]", "models.0.max_queue"),
        ("models: [{name: a, uris: [smollm2], timeout: 0}]", "models.0.timeout"),
        ("- just a list", "must be a mapping"),
        ("models: [unclosed", "cannot read serve config"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(path)
        assert str(path) in str(e.value) and words in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_guard_policies_come_from_the_config_per_route_and_per_key(tmp_path: Path) -> None:
    from fmstack.serve.config import ServeConfig, load_guards

    cfg = ServeConfig.model_validate({
        "models": [{"name": "a", "uris": ["smollm2"]},
                   {"name": "b", "uris": ["smollm2"], "guard": "strict"}],
        "guard": "default", "key_guards": {"partner": "strict"}})
    guards = load_guards(cfg, cfg.models)
    assert guards.routes["a"].name == "default" and guards.routes["b"].name == "strict"
    assert guards.keys["partner"] is guards.routes["b"]  # one policy file, one Guard
    cfg.key_guards = {"partner": str(tmp_path / "missing.yaml")}
    with pytest.raises(ConfigError, match="no guard policy"):
        load_guards(cfg, cfg.models)


def test_fallbacks_must_name_served_routes() -> None:
    model = load_model("smollm2", n_threads=1, trace=False)
    try:
        with pytest.raises(ConfigError, match="falls back to 'ghost', which is not served"):
            Gateway([Route(RouteSpec(name="a", uris=["smollm2"], fallbacks=["ghost"]),
                           [Replica(model)])])
        with pytest.raises(ConfigError, match="falls back to itself"):
            Gateway([Route(RouteSpec(name="a", uris=["smollm2"], fallbacks=["a"]),
                           [Replica(model)])])
    finally:
        model.close()


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_the_serve_command_serves_a_config(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(CONFIG)
    port = free_port()
    proc = subprocess.Popen([str(FMSTACK), "serve", "--config", str(path), "--port", str(port),
                             "--no-ui"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                health = _get(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.2)
        queues = health["queues"]
        assert isinstance(queues, dict)
        assert queues["chat"]["replicas"] == ["smollm2#0", "smollm2#1"]
        assert queues["backup"]["replicas"] == ["smollm2#0"]
        models = _get(f"http://127.0.0.1:{port}/v1/models")["data"]
        assert [m["id"] for m in models] == ["chat", "backup", "minilm"]  # type: ignore[index, union-attr]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.parametrize(("args", "words"), [
    (["--keys"], "--keys needs at least one API key"),
    (["--config", "nope.yaml"], "serve config nope.yaml does not exist"),
    (["--model", "=smollm2"], "is not NAME=URI"),
    (["--model", "a=smollm2", "--config", "x.yaml"], "not both"),
    (["--max-queue", "-3"], "max_queue"),
    (["--guard", "paranoid"], "no guard policy 'paranoid'"),
    (["--weights", "q8"], "--weights 'q8' is not one of auto, file, f16"),
])
def test_serve_flags_are_checked_before_serving(args: list[str], words: str) -> None:
    out = subprocess.run([str(FMSTACK), "serve", "--port", str(free_port()), *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and words in out.stderr, out.stderr
