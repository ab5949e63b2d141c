"""Evaluation: metrics, sandboxed execution, AI judges, comparative rankings."""
