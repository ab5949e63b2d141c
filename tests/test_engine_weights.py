"""Which weights the engine decodes with (``fmstack.models.engine.weights``): the F16 copy of
SmolLM2's Q4_1 file is made once and atomically, the engine on it answers exactly as the
one-sequence backend does on the same copy, and ``auto`` takes it only where it pays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fmstack.errors import ConfigError, FmstackError, ModelNotFoundError
from fmstack.models.backends.engine import EngineModel
from fmstack.models.engine import weights as w
from fmstack.models.registry import load_model
from fmstack.models.types import Message, Request, SamplingParams

WORDS = ["cat", "dog", "fox", "owl", "bee", "ant", "cow", "pig"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FMSTACK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def test_file_types_are_read_from_the_metadata(smollm2_path: Path) -> None:
    from fmstack.models.registry import gemma3_270m_gguf

    assert w.file_type(smollm2_path) == 3 and w.type_name(3) == "Q4_1"
    assert w.type_name(w.file_type(gemma3_270m_gguf())) == "Q4_K - Medium"


def test_the_f16_copy_is_made_once_and_holds_f16_weights(smollm2_path: Path,
                                                         cache: Path) -> None:
    first = w.expand_f16(smollm2_path)
    assert first.parent == cache and first.name.endswith(".F16.gguf")
    assert w.file_type(first) == 1  # LLAMA_FTYPE_MOSTLY_F16
    # 135M weights at 2 bytes each, against the file's ~0.7 bytes.
    assert first.stat().st_size > 2.5 * smollm2_path.stat().st_size
    stamp = first.stat().st_mtime_ns
    assert w.expand_f16(smollm2_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in cache.iterdir()] == [first.name]  # no temporary file left
    # The same model: Shakespeare scores as well from the copy as from the file (0.1% apart
    # when measured; weights rounded or read wrongly would be far off).
    from fmstack.bench.quant import shakespeare_slice
    from fmstack.eval.metrics.model import lm_score

    text = shakespeare_slice(1500)
    bpb = {}
    for path in (smollm2_path, first):
        lm = load_model(f"llamacpp:{path}", n_threads=2, trace=False)
        try:
            bpb[path] = lm_score(lm, [text]).bits_per_byte
        finally:
            lm.close()
    assert bpb[first] == pytest.approx(bpb[smollm2_path], rel=0.01)


def test_a_file_that_cannot_be_expanded_leaves_nothing_behind(smollm2_path: Path,
                                                             cache: Path, tmp_path: Path) -> None:
    # The header and metadata of a real GGUF, then the tensor data cut off.
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_path.read_bytes()[:4_000_000])
    with pytest.raises(FmstackError, match=r"could not expand .*cut\.gguf to F16"):
        w.expand_f16(cut)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_cache_that_cannot_hold_the_copy_is_named_and_auto_serves_the_file(
        smollm2_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setenv("FMSTACK_CACHE", str(blocked))
    with pytest.raises(FmstackError, match=r"could not expand .* to F16 \("):
        w.choose(smollm2_path, "f16", n_slots=16)
    fallback = w.choose(smollm2_path, "auto", n_slots=16)
    assert fallback.weights == "file" and fallback.path == smollm2_path
    assert "the F16 copy could not be made" in fallback.reason
    assert blocked.read_text() == "a file where the cache directory should be"


def test_auto_expands_only_many_slots_of_a_slow_type_on_the_cpu(smollm2_path: Path,
                                                                cache: Path) -> None:
    from fmstack.models.registry import gemma3_270m_gguf

    few = w.choose(smollm2_path, "auto", n_slots=w.AUTO_MIN_SLOTS - 1)
    assert (few.weights, few.path) == ("file", smollm2_path) and "slots" in few.reason
    gpu = w.choose(smollm2_path, "auto", n_slots=16, n_gpu_layers=99)
    assert gpu.weights == "file" and "GPU" in gpu.reason
    k_quant = w.choose(gemma3_270m_gguf(), "auto", n_slots=16)
    assert k_quant.weights == "file" and "not a type measured" in k_quant.reason
    many = w.choose(smollm2_path, "auto", n_slots=16)
    assert many.weights == "f16" and many.path.parent == cache and "Q4_1" in many.reason
    assert w.choose(smollm2_path, "file", n_slots=16).path == smollm2_path
    assert w.choose(smollm2_path, "f16", n_slots=1).path == many.path
    # An F16 file asked for as F16 is used as it is, not copied again.
    assert w.choose(many.path, "f16", n_slots=16).path == many.path
    assert sorted(p.name for p in cache.iterdir()) == [many.path.name]


def test_bad_weights_and_bad_files_are_named(smollm2_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="weights 'q8' is not one of auto, file, f16"):
        w.choose(smollm2_path, "q8", n_slots=16)
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(ModelNotFoundError, match=r"notes\.gguf is not a GGUF model"):
        w.choose(text, "auto", n_slots=16)
    with pytest.raises(ModelNotFoundError, match="model file not found"):
        load_model(f"engine:{tmp_path / 'gone.gguf'}", parallel=16, trace=False)


@pytest.fixture(scope="module")
def f16_engine() -> Iterator[EngineModel]:
    from fmstack.models.registry import smollm2_gguf

    model = load_model(f"engine:{smollm2_gguf()}", parallel=8, n_ctx=8 * 512, n_threads=2,
                       trace=False, exact_prefix=True)
    assert isinstance(model, EngineModel)
    yield model
    model.close()


def test_the_engine_on_the_f16_copy_is_the_same_model_and_batch_stable(
        f16_engine: EngineModel) -> None:
    """On F16 llama.cpp multiplies one row with another kernel than two or more, so a sequence
    decoded alone is only close to its batched self (docs/engine.md, Exactness); any batch of
    two or more gives the same tokens."""
    assert f16_engine.weights.weights == "f16"  # auto, 8 slots, Q4_1
    assert f16_engine.path == f16_engine.weights.path
    requests = [Request(messages=[Message(role="user", content=f"Describe a {x}.")],
                        params=SamplingParams(temperature=0, max_tokens=24, logprobs=True))
                for x in WORDS]
    batched = f16_engine.generate(requests)
    pairs = [c for i in range(0, len(requests), 2) for c in f16_engine.generate(requests[i:i + 2])]
    assert [c.choices[0].token_ids for c in batched] == [c.choices[0].token_ids for c in pairs]
    reference = load_model(f"llamacpp:{f16_engine.weights.path}", n_threads=2, trace=False)
    try:
        alone = [reference.complete(r) for r in requests]
    finally:
        reference.close()
    for b, a in zip(batched, alone, strict=True):
        mine, theirs = b.choices[0].logprobs, a.choices[0].logprobs
        assert mine is not None and theirs is not None and mine[0].id == theirs[0].id
        for x, y in zip(mine, theirs, strict=False):
            if x.id != y.id:
                break
            assert x.logprob == pytest.approx(y.logprob, abs=0.05)
    stats = f16_engine.engine.stats()
    assert stats.busy == 0 and stats.waiting == 0


def test_fmstack_serve_says_which_weights_each_model_decodes(tmp_path: Path) -> None:
    import subprocess
    import sys

    from servers import free_port

    fmstack = Path(sys.executable).parent / "fmstack"
    proc = subprocess.Popen([str(fmstack), "serve", "-m", "smollm2", "--parallel", "8",
                             "--ctx-size", "4096", "--port", str(free_port()), "--no-ui"],
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the "serving" line comes once every model is loaded
            lines.append(line)
            if line.startswith("serving "):
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    said = "".join(lines)
    assert "smollm2: decoding an F16 copy of its weights (Q4_1 has no batched CPU kernel; " \
           "8 slots; --weights file keeps the file's)" in said, said
