"""Benchmarks of fmstack's moving parts; ``serve`` is the load generator behind
``fmstack bench serve``. Nothing is imported here so that ``import fmstack.bench.serve`` pulls in
only what that module needs (httpx, rich)."""
