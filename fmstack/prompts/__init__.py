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

__all__ = [
    "BUILTIN_DIR",
    "Example",
    "InputSpec",
    "PromptError",
    "PromptFile",
    "PromptLibrary",
    "Rendered",
    "default_dirs",
    "load_prompt",
    "parse_prompt",
    "render",
    "unified_diff",
    "version_of",
]
