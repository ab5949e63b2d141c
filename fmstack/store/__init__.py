"""Persistent state in one SQLite file under FMSTACK_HOME: traces now; eval runs, feedback and
prompt versions as those layers land."""

from fmstack.store.traces import TraceStore, redact

__all__ = ["TraceStore", "redact"]
