"""Prompt files: versioned, validated, rendered exactly as the model sees them.

Start with ``PromptLibrary().get("name")`` or ``load_prompt(path)``, then ``prompt.request(vars)``
for a Request, or ``render(prompt, vars, model)`` for the final text and its token count.
"""

from fmstack.errors import PromptError
from fmstack.prompts.files import (
    Example,
    InputSpec,
    PromptFile,
    load_prompt,
    parse_prompt,
    unified_diff,
    version_of,
)
from fmstack.prompts.library import BUILTIN_DIR, PromptLibrary, Rendered, default_dirs, render
from fmstack.prompts.techniques import (
    Chain,
    ChainResult,
    Critique,
    Step,
    chain_of_thought,
    extract_answer,
    select_examples,
    self_critique,
)

__all__ = [
    "BUILTIN_DIR",
    "Chain",
    "ChainResult",
    "Critique",
    "Example",
    "InputSpec",
    "PromptError",
    "PromptFile",
    "PromptLibrary",
    "Rendered",
    "Step",
    "chain_of_thought",
    "default_dirs",
    "extract_answer",
    "load_prompt",
    "parse_prompt",
    "render",
    "select_examples",
    "self_critique",
    "unified_diff",
    "version_of",
]
