"""Quantization trade-offs on SmolLM2-135M: the released Q4_1 GGUF, an F16 GGUF and the types
llama.cpp's llama-quantize makes from it, measured by ``fmstack bench quant``'s library.

    make bench            # or: .venv/bin/python bench/quant.py [--ppl-chars 20000]
                          #     [--types Q8_0,...] [--repeats 3] [--threads 1]

Writes bench/results/quant.json and bench/results/quant.png. Per variant: file size, bits per
weight (tensor data / weights), the tensor types in the file, the relative RMS difference of
its weights from the F16 file's, prompt-processing and decode tokens/s (the median of
``--repeats`` rounds; each round runs every variant once, freshly loaded, greedy, a 256-token
Shakespeare prompt plus 128 generated tokens, one thread, and starts one variant later than the
round before) and bits per byte / perplexity on the first ``--ppl-chars`` characters of Hamlet
scored in 512-token chunks exactly as ``fmstack eval bench shakespeare`` scores them.

``Q4_1`` is made again from the F16 file as a check: it should land on the released Q4_1's
weights (the F16 file holds them), and so on its bits per byte. The machine's 2 cores are shared
with other work: each speed run records the 1-minute load average when it began.

The F16 file comes from the transformers checkpoint that the hf backend dequantizes from the
Q4_1 release, converted by llama.cpp's convert_hf_to_gguf.py; the other types are quantized from
it. SmolLM2's original full-precision weights are not available offline, so the F16 row is the
Q4_1 model's quality and every other type adds its rounding on top of Q4_1's. Where
llama-quantize is not built (``make llama-cpp-tools``), only the released file is measured and
the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fmstack.bench import quant
from fmstack.bench.serve import machine, write_json
from fmstack.cli.bench import print_quant
from fmstack.models.registry import smollm2_gguf

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "quant.json"
PLOT = ROOT / "bench" / "results" / "quant.png"
TYPES = "Q8_0,Q6_K,Q5_K_M,Q5_1,Q5_0,Q4_K_M,Q4_1,Q4_0,Q3_K_M,Q2_K"


def git_state() -> tuple[str, list[str]]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "fmstack"], cwd=ROOT,
                           capture_output=True, text=True).stdout
    return commit, [line[3:] for line in dirty.splitlines() if line]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ppl-chars", type=int, default=20_000)
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--replot", action="store_true",
                    help="only draw quant.png again from quant.json (nothing is measured)")
    args = ap.parse_args()
    if args.replot:
        quant.plot(quant.QuantResult.from_json(json.loads(OUT.read_text())), PLOT)
        print(f"wrote {PLOT.relative_to(ROOT)} from {OUT.relative_to(ROOT)}")
        return

    config = quant.QuantConfig(ppl_chars=args.ppl_chars, decode_tokens=args.decode_tokens,
                               prompt_tokens=args.prompt_tokens, repeats=args.repeats,
                               threads=args.threads)
    tool = quant.find_tool("llama-quantize")
    types = quant.parse_types(args.types) if tool is not None else []
    started = time.perf_counter()
    result = quant.run([str(smollm2_gguf())], config, quantize=types,
                       log=lambda s: print(s, file=sys.stderr, flush=True))
    commit, dirty = git_state()
    import llama_cpp

    data = {
        "what": "SmolLM2-135M-Instruct GGUF variants: size, bits per weight, prompt/decode "
                "tokens/s (llamacpp backend, greedy, median of repeats) and bits per byte on "
                "Shakespeare",
        "machine": machine() | {"llama_cpp_python": llama_cpp.__version__},
        "command": "python bench/quant.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": {"commit": commit, "uncommitted_under_fmstack": dirty},
        "seconds": round(time.perf_counter() - started, 1),
        "llama_quantize": str(tool) if tool is not None else
            "not built: run `make llama-cpp-tools`; only the released Q4_1 file was measured",
        "convert_script": str(quant.find_convert_script()),
    } | result.to_json()
    write_json(OUT, data)
    quant.plot(result, PLOT)
    print_quant(result)  # the CLI's table (and its notes, on stderr)
    print(f"wrote {OUT.relative_to(ROOT)} and {PLOT.relative_to(ROOT)} "
          f"in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
