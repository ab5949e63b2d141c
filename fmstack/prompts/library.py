"""Finding prompts by name, and rendering one exactly as a model will see it.

The search path is the directories given, else ``$FMSTACK_PROMPTS`` (``os.pathsep``-separated),
else ``$FMSTACK_HOME/prompts``; then the prompts packaged with fmstack. An earlier directory
wins, so a user's ``critique.prompt`` replaces the builtin one without touching fmstack.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmstack.config import home
from fmstack.errors import PromptError
from fmstack.models.pricing import cost_of
from fmstack.models.types import Message, Request, Usage
from fmstack.prompts.files import Example, PromptFile, Source, load_prompt, unified_diff

if TYPE_CHECKING:
    from fmstack.models.base import Model

BUILTIN_DIR = Path(__file__).parent / "builtin"
SUFFIX = ".prompt"


def default_dirs() -> list[Path]:
    """The user directories searched when none are given."""
    env = os.environ.get("FMSTACK_PROMPTS")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [home() / "prompts"]


class PromptLibrary:
    """The prompts on the search path, by name. Files are parsed once, when first needed."""

    def __init__(self, dirs: Sequence[str | Path] | None = None) -> None:
        self.dirs = [Path(d).expanduser() for d in dirs] if dirs is not None else default_dirs()
        for d in self.dirs:
            if d.exists() and not d.is_dir():
                raise PromptError(f"{d}: not a directory (prompt search path)")
        self._index: dict[str, PromptFile] | None = None
        # Files that failed to load, so `list` can report them instead of hiding the rest.
        self.problems: list[PromptError] = []

    @property
    def search_path(self) -> list[Path]:
        return [*self.dirs, BUILTIN_DIR]

    def _scan(self) -> dict[str, PromptFile]:
        if self._index is not None:
            return self._index
        index: dict[str, PromptFile] = {}
        self.problems = []
        # Later directories first, so that earlier ones overwrite them: first on the path wins.
        for directory in reversed(self.search_path):
            source: Source = "builtin" if directory == BUILTIN_DIR else "user"
            here: dict[str, Path] = {}
            for path in sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []:
                try:
                    prompt = load_prompt(path, source=source)
                except PromptError as e:
                    self.problems.append(e)
                    continue
                if prompt.name in here:
                    self.problems.append(PromptError(
                        f"{path}: prompt name {prompt.name!r} is also used by {here[prompt.name]}"
                    ))
                    continue
                here[prompt.name] = path
                index[prompt.name] = prompt
        self._index = index
        return index

    def list(self) -> builtins.list[PromptFile]:
        """Every prompt found, by name (an overridden builtin appears once, as the user's)."""
        return [p for _, p in sorted(self._scan().items())]

    def names(self) -> builtins.list[str]:
        return sorted(self._scan())

    def get(self, name: str) -> PromptFile:
        """The prompt called ``name``; a path to a ``.prompt`` file also works."""
        if name.endswith(SUFFIX) or os.sep in name or "/" in name:
            return load_prompt(name)
        index = self._scan()
        if name in index:
            return index[name]
        broken = next((e for e in self.problems if Path(str(e).split(":")[0]).stem == name),
                      None)
        if broken is not None:
            raise broken
        known = ", ".join(sorted(index)) or "none"
        where = ", ".join(str(d) for d in self.dirs) or "no user directories"
        raise PromptError(f"unknown prompt {name!r} (known: {known}; searched {where} "
                          "and the builtin prompts)")

    def diff(self, name: str, old: str, new: str | None = None) -> str:
        """Unified diff between two recorded versions of ``name`` (hash prefixes allowed);
        ``new=None`` compares with the current file."""
        from fmstack.store.prompts import PromptVersions

        with PromptVersions() as store:
            a = store.get(name, old)
            if new is None:
                current = self.get(name)
                store.record(current.name, current.version, current.text, current.path)
                b_text, b_label = current.text, f"{name}@{current.version} (current)"
            else:
                b = store.get(name, new)
                b_text, b_label = b["content"], f"{name}@{b['version']}"
        return unified_diff(a["content"], b_text, f"{name}@{a['version']}", b_label)


def get_prompt(prompt: str | PromptFile) -> PromptFile:
    """A prompt given by name or path (looked up in the default library), or as a PromptFile
    already loaded: the one way the parts that take a ``prompt=`` option resolve it."""
    return prompt if isinstance(prompt, PromptFile) else PromptLibrary().get(prompt)


@dataclass
class Rendered:
    """A prompt as the model receives it: ``text`` is the chat template applied to
    ``messages``, the exact string the backend tokenizes."""

    prompt: PromptFile
    request: Request
    messages: list[Message]
    text: str
    token_count: int
    estimated_cost: float  # USD: the prompt plus max_tokens of output, at the model's price


def render(
    prompt: PromptFile, vars: dict[str, Any], model: Model, *,
    examples: list[Example] | None = None, **param_overrides: Any,
) -> Rendered:
    """Render ``prompt`` for ``model``: the request it would send and the exact final text."""
    request = prompt.request(vars, examples=examples, **param_overrides)
    messages = list(request.messages or [])
    text = model.render_chat(messages)
    tokens = len(model.tokenize(text, special=True))
    usage = Usage(prompt_tokens=tokens, completion_tokens=request.params.max_tokens)
    return Rendered(prompt=prompt, request=request, messages=messages, text=text,
                    token_count=tokens, estimated_cost=cost_of([model.name], usage))
