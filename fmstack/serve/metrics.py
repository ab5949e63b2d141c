"""``/metrics`` in Prometheus' text format (prometheus_client, one registry per app).

Names follow vLLM's where one exists (``time_to_first_token_seconds``,
``time_per_output_token_seconds``, ``e2e_request_latency_seconds``, prompt/generation token
counters), prefixed ``fmstack_``. ``model`` labels only ever hold served names (an unknown
name in a request is counted as ``-``), so a client cannot grow the label set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fmstack.models.engine import EngineStats
    from fmstack.models.types import Completion

# Buckets in seconds: token times on CPU run from ~5 ms to seconds; whole requests to minutes.
_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                  2.5, 5.0)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0,
                    120.0, 300.0)


class ServerMetrics:
    """The counters, gauges and histograms of one server."""

    def __init__(self, queue_depths: Callable[[], Iterable[tuple[str, int, int]]],
                 engines: Callable[[], Iterable[tuple[str, EngineStats]]] = lambda: ()
                 ) -> None:
        """``queue_depths`` yields ``(model, waiting, running)`` per route and ``engines``
        ``(model, stats)`` per engine replica; both are read at scrape time."""
        from prometheus_client import CollectorRegistry, Counter, Histogram
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fmstack_requests", "HTTP requests answered, by status",
                                ["model", "endpoint", "status"], registry=r)
        self.ttft = Histogram("fmstack_time_to_first_token_seconds", "Time to first token",
                              ["model"], buckets=(*_TOKEN_BUCKETS, 10.0, 30.0, 60.0),
                              registry=r)
        self.tpot = Histogram("fmstack_time_per_output_token_seconds",
                              "Mean time per output token after the first", ["model"],
                              buckets=_TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("fmstack_e2e_request_latency_seconds",
                             "End-to-end request latency", ["model"],
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("fmstack_prompt_tokens", "Prompt tokens processed",
                                     ["model"], registry=r)
        self.generation_tokens = Counter("fmstack_generation_tokens", "Tokens generated",
                                         ["model"], registry=r)
        self.cache = Counter("fmstack_response_cache", "Response cache lookups, by result",
                             ["model", "result"], registry=r)
        self.prefix_tokens = Counter("fmstack_prefix_cache_hit_tokens",
                                     "Prompt tokens reused from the backend's prefix cache",
                                     ["model"], registry=r)
        self.retries = Counter("fmstack_upstream_retries", "Attempts retried after an upstream "
                               "failure", ["model"], registry=r)
        self.fallbacks = Counter("fmstack_fallbacks", "Requests served by a fallback route",
                                 ["model"], registry=r)
        self.cancelled = Counter("fmstack_cancelled", "Generations stopped because the client "
                                 "went away", ["model"], registry=r)
        self.batch_size = Histogram("fmstack_batch_size", "Requests per generate call on "
                                    "batch-capable models", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.guard = Counter("fmstack_guard_blocked", "Requests or answers a guard blocked, "
                             "by where and reason", ["model", "where", "reason"], registry=r)
        self.embedding_inputs = Counter("fmstack_embedding_inputs", "Texts embedded",
                                        ["model"], registry=r)

        class _Queues:
            def collect(self) -> Iterable[GaugeMetricFamily]:
                waiting = GaugeMetricFamily("fmstack_queue_depth", "Requests waiting for a "
                                            "slot", labels=["model"])
                running = GaugeMetricFamily("fmstack_requests_running", "Requests holding a "
                                            "slot", labels=["model"])
                for model, w, n in queue_depths():
                    waiting.add_metric([model], w)
                    running.add_metric([model], n)
                yield waiting
                yield running

        r.register(_Queues())

        class _Engines:
            """The batching engines' own counters, summed over a route's replicas."""

            def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
                names = {
                    "prefix_hits": ("fmstack_engine_prefix_cache_hits", "Prompts that "
                                    "reused a cached KV prefix"),
                    "prefix_saved_tokens": ("fmstack_engine_prefix_cache_saved_tokens",
                                            "Prompt tokens not recomputed thanks to it"),
                    "drafted": ("fmstack_engine_spec_draft_tokens", "Speculative draft "
                                "tokens proposed"),
                    "accepted": ("fmstack_engine_spec_accepted_tokens", "Draft tokens the "
                                 "model's own sampling agreed with"),
                    "steps": ("fmstack_engine_steps", "Engine steps (llama_decode calls)"),
                    "decode_seconds": ("fmstack_engine_decode_seconds", "Time inside "
                                       "llama_decode"),
                    "step_seconds": ("fmstack_engine_step_seconds", "Time in engine steps "
                                     "(decode, batch building and sampling)"),
                }
                totals: dict[str, dict[str, float]] = {}
                busy: dict[str, int] = {}
                for model, stats in engines():
                    row = totals.setdefault(model, dict.fromkeys(names, 0.0))
                    for key in names:
                        row[key] += getattr(stats, key)
                    busy[model] = busy.get(model, 0) + stats.busy
                for key, (name, doc) in names.items():
                    family = CounterMetricFamily(name, doc, labels=["model"])
                    for model, row in totals.items():
                        family.add_metric([model], row[key])
                    yield family
                slots = GaugeMetricFamily("fmstack_engine_slots_busy", "KV slots holding a "
                                          "sequence", labels=["model"])
                for model, n in busy.items():
                    slots.add_metric([model], n)
                yield slots

        r.register(_Engines())

    def completed(self, model: str, completion: Completion, e2e_s: float) -> None:
        """One request served (from its final Completion)."""
        t = completion.timings
        if t.ttft is not None:
            self.ttft.labels(model).observe(t.ttft)
        if t.tpot is not None:
            self.tpot.labels(model).observe(t.tpot)
        self.e2e.labels(model).observe(e2e_s)
        self.prompt_tokens.labels(model).inc(completion.usage.prompt_tokens)
        self.generation_tokens.labels(model).inc(completion.usage.completion_tokens)
        if completion.usage.cached_tokens:
            self.prefix_tokens.labels(model).inc(completion.usage.cached_tokens)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
