"""Retrieval-augmented generation: loaders, chunkers, indexes, fusion, rerankers, answers."""
