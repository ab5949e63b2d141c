"""``fmstack bench quant``: the shipped SmolLM2 Q4_1 GGUF measured with tiny settings, its bits
per byte checked against ``fmstack eval bench shakespeare``'s own code on the same text, its
size and parameter count against llama.cpp's, and the one-line errors for bad input. Nothing is
built or quantized here (that needs llama.cpp's tools; ``bench/quant.py`` does it)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from fmstack.bench import quant
from fmstack.cli import app
from fmstack.errors import ConfigError, ModelNotFoundError
from fmstack.eval.benchmarks import run_shakespeare, shakespeare_text

TINY = dict(decode_tokens=4, prompt_tokens=16, chunk_tokens=48, threads=1)


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.slow
def test_cli_bits_per_byte_equal_eval_benchmark(tmp_path: Path, smollm2_path: Path) -> None:
    # The reference: the eval benchmark's first two chunks, loaded and scored by its own code.
    ref = run_shakespeare(f"llamacpp:{smollm2_path}", limit=2, chunk_tokens=48,
                          options={"n_threads": 1})
    text = shakespeare_text().encode("utf-8")[: ref.n_bytes].decode("utf-8")
    out, png = tmp_path / "quant.json", tmp_path / "quant.png"
    result = invoke("bench", "quant", str(smollm2_path), "--ppl-chars", str(len(text)),
                    "--decode-tokens", "4", "--prompt-tokens", "16", "--chunk-tokens", "48",
                    "--threads", "1", "--out", str(out), "--plot", str(png))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    (row,) = data["variants"]
    # Same text, same chunks, same model: the very same number, not a close one.
    assert row["chunks"] == 2 and row["n_bytes"] == ref.n_bytes
    assert row["n_tokens"] == ref.n_tokens
    assert row["bits_per_byte"] == ref.bits_per_byte
    assert row["perplexity"] == pytest.approx(ref.perplexity, rel=1e-12)
    assert data["settings"]["slice"] == {
        "work": "hamlet_gut.txt", "chars": len(text), "bytes": ref.n_bytes,
        "what": f"the first {len(text)} characters (whole lines) of hamlet_gut.txt, scored in "
                "chunks of up to 48 tokens, each alone (BOS only)"}
    assert data["reference"] == "Q4_1" and data["notes"] == []

    info = row["info"]
    assert row["label"] == "Q4_1" and row["origin"] == "given"
    assert info["file_type"] == "Q4_1" and info["size_bytes"] == smollm2_path.stat().st_size
    assert info["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert 5 < info["bits_per_weight"] < 6  # Q4_1 is 5 bits per weight, plus f32 norms
    # Speed: a 16-token prompt and 4 greedy tokens, rates consistent with their timings.
    (run,) = row["runs"]
    assert run["prompt_tokens"] == row["prompt_tokens"] and 8 <= run["prompt_tokens"] <= 16
    assert row["decode_tokens"] >= 2
    assert run["prompt_tok_s"] == pytest.approx(run["prompt_tokens"] / run["ttft_s"])
    assert row["decode_tok_s"] == pytest.approx(1 / run["tpot_s"]) and row["decode_tok_s"] > 0
    assert row["delta_bits_per_byte"] == 0 and row["decode_speedup"] == 1
    assert row["weight_rel_rmse"] is None  # one file: nothing to compare its weights with

    # The table shows the row as computed; the plot is a real PNG.
    assert "Q4_1" in result.stdout and f"{ref.bits_per_byte:.4f}" in result.stdout
    assert f"{row['decode_tok_s']:.1f}" in result.stdout
    assert "q4_1 x210, f32 x61, q8_0 x1" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_gguf_info_agrees_with_llama_cpp(smollm2_path: Path) -> None:
    import llama_cpp

    info = quant.gguf_info(smollm2_path)
    llm = llama_cpp.Llama(str(smollm2_path), n_ctx=64, verbose=False)
    try:
        assert info.n_params == llama_cpp.llama_model_n_params(llm.model)
        assert info.tensor_bytes == llama_cpp.llama_model_size(llm.model)
    finally:
        llm.close()
    assert info.bits_per_weight == pytest.approx(8 * info.tensor_bytes / info.n_params)
    assert math.isclose(info.n_params, 134_515_008)


def _write_gguf(path: Path, tensors: dict[str, Any]) -> Path:
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_weight_error_is_the_relative_rms_difference(tmp_path: Path) -> None:
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((4, 64)).astype(np.float32) for _ in range(2))
    ref = _write_gguf(tmp_path / "ref.gguf", {"a": (a, T.F32), "b": (b, T.F32)})
    qa, qb = quantize(a, T.Q4_0), quantize(b, T.Q8_0)
    q = _write_gguf(tmp_path / "q.gguf", {"a": (qa, T.Q4_0), "b": (qb, T.Q8_0)})
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    da, db = (dequantize(x, t).astype(np.float64) for x, t in ((qa, T.Q4_0), (qb, T.Q8_0)))
    want = math.sqrt((np.square(da - a64).sum() + np.square(db - b64).sum())
                     / (np.square(a64).sum() + np.square(b64).sum()))
    assert quant.weight_error(q, ref) == pytest.approx(want, rel=1e-9) and 0.01 < want < 0.2
    info = quant.gguf_info(q)
    assert info.n_params == 512 and info.tensor_types == {"Q4_0": 1, "Q8_0": 1}
    assert info.bits_per_weight == pytest.approx((4.5 + 8.5) / 2)  # 18 and 34 bytes per 32
    other = _write_gguf(tmp_path / "other.gguf", {"a": (a[:2], T.F32), "b": (b, T.F32)})
    assert quant.weight_error(other, ref) is None  # not the same tensors: no comparison


def test_rows_of_one_type_are_told_apart() -> None:
    a, b, c = Path("pkg/m.Q4_1.gguf"), Path("cache/m.Q4_1.gguf"), Path("other/n.Q4_1.gguf")
    rows = quant._unique_labels([("Q4_1", a, "given"), ("F16", b, "converted"),
                                 ("Q4_1", b, "quantized"), ("Q4_1", c, "given")])
    assert [r[0] for r in rows] == ["Q4_1 (m.Q4_1.gguf)", "F16", "Q4_1 (quantized)",
                                    "Q4_1 (n.Q4_1.gguf)"]


def test_slice_is_whole_lines_and_the_same_text_for_every_model() -> None:
    text = shakespeare_text()
    for chars in (1, 500, 3000):
        s = quant.shakespeare_slice(chars)
        assert text.startswith(s) and s.endswith("\n") and len(s) >= chars
        assert "\n" not in s[chars - 1 : -1]  # no whole line could be dropped


def test_bad_input_is_one_line(tmp_path: Path, smollm2_path: Path) -> None:
    notes = tmp_path / "notes.gguf"
    notes.write_text("hello, not a model\n")
    line = error_line(invoke("bench", "quant", str(smollm2_path), str(notes)))
    assert line == (f"error: {notes} is not a GGUF file (it starts with b'hell', a GGUF file "
                    "with b'GGUF')")
    assert "model file not found" in error_line(invoke("bench", "quant", "missing.gguf"))
    assert "smollm2-hf is a hf model; bench quant measures GGUF files" in error_line(
        invoke("bench", "quant", "smollm2-hf"))
    assert "unknown quantization type(s) Q9_9" in error_line(
        invoke("bench", "quant", "smollm2", "--quantize", "Q8_0,q9_9"))
    assert "decode_tokens must be >= 2" in error_line(
        invoke("bench", "quant", "smollm2", "--decode-tokens", "1"))
    assert "ppl_chars must be a positive integer" in error_line(
        invoke("bench", "quant", "smollm2", "--ppl-chars", "0"))
    out = tmp_path / "r.json"
    error_line(invoke("bench", "quant", str(notes), "--out", str(out)))
    assert not out.exists()
    with pytest.raises(ModelNotFoundError, match="is not a GGUF file"):
        quant.gguf_info(notes)
    with pytest.raises(ConfigError, match="Q8_0,Q4_K_M"):
        quant.parse_types(" , ")
    assert quant.parse_types("q8_0, Q4_K_M,Q8_0") == ["Q8_0", "Q4_K_M"]


def test_without_llama_cpp_tools_nothing_is_made(
    tmp_path: Path, smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No converter and no llama-quantize: the run says why instead of failing or guessing.
    monkeypatch.setenv("FMSTACK_LLAMA_CPP_BUILD", str(tmp_path / "no-build"))
    monkeypatch.setenv("PATH", str(tmp_path))
    made = quant.make_variants(smollm2_path, ["Q8_0", "Q4_0"])
    assert made.made == [] and made.base == "none"
    assert made.notes[0].startswith("NO F16 SOURCE (llama.cpp's convert_hf_to_gguf.py not found")
    assert "requantized from SmolLM2-135M-Instruct.Q4_1.gguf" in made.notes[0]
    assert "is itself quantized (Q4_1)" in made.notes[1]
    assert made.notes[2] == ("llama-quantize is not built (make llama-cpp-tools, or put it on "
                             "PATH): Q8_0, Q4_0 not made")
