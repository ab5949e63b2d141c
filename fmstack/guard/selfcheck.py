"""LLM self-check: ask a model whether a text is a prompt-injection or jailbreak attempt.

``SelfCheckScanner`` (registry name ``self_check``) renders a prompt file (by default the
packaged ``fmstack/guard/prompts/self_check.prompt``) with the text wrapped as data
(``fmstack.guard.spotlight.delimit``: random-boundary tags the text cannot close), asks the
model, and constrains its answer with a ``choice`` response format (``yes`` / ``no``), so the
reply always parses. It reports ``injection.self_check`` over the whole text with score
P(yes): read from the first answer token's top log-probabilities when the backend returns them
(the probability mass on the allowed tokens starting "yes" against those starting "no"), else
1.0 for "yes" and 0.0 for "no". Findings scored below ``min_score`` (0.5) are not
reported.

Be honest about the judge: the default model is SmolLM2-135M, which is a weak judge. On 20
attacks and 20 benign texts written while building this (none from an evaluation set) it said
"yes" to 15-16 attacks and to 16-17 benign texts (two runs of the same greedy requests gave
slightly different answers): no better than always answering "yes". The layer
is here for larger models: any model URI works (``openai:gpt-4o-mini``, a local
``llamacpp:/path/model.gguf``, ``openai:name@http://host:port/v1``), as long as its backend can
enforce a ``choice`` format. It costs one model call per scanned text.

Blind spots: whatever the judge model misses; a text crafted to persuade the judge itself
(spotlighting makes that harder, not impossible); texts over ``max_chars`` are refused (the
policy fails closed) rather than judged in part.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fmstack.errors import CapabilityError, ConfigError, FmstackError
from fmstack.guard.core import Finding
from fmstack.guard.perplexity import _check_model, shared_model
from fmstack.guard.spotlight import Spotlight

if TYPE_CHECKING:
    from fmstack.models.base import Model
    from fmstack.models.types import Completion
    from fmstack.prompts.files import PromptFile

DEFAULT_PROMPT = Path(__file__).parent / "prompts" / "self_check.prompt"
CHOICES = ("yes", "no")


class SelfCheckScanner:
    """Asks a model whether the text is an injection or jailbreak attempt (see module docs).

    Options: ``model`` (URI or Model; ``smollm2``), ``prompt`` (path to a prompt file that
    declares a ``data`` input and optionally ``instructions``; default the packaged one),
    ``min_score`` (0.5), ``max_chars`` (8,000), ``model_options`` (passed to ``load_model``)."""

    name: ClassVar[str] = "self_check"

    def __init__(self, *, model: str | Model = "smollm2", prompt: str | Path | None = None,
                 min_score: float = 0.5, max_chars: int = 8000,
                 model_options: dict[str, Any] | None = None) -> None:
        from fmstack.prompts.files import load_prompt

        _check_model(model, self.name)
        if not 0.0 <= min_score <= 1.0:
            raise ConfigError(f"self_check scanner: min_score must be in [0, 1], got {min_score}")
        if not isinstance(max_chars, int) or max_chars < 1:
            raise ConfigError(f"self_check scanner: max_chars must be a positive integer, "
                              f"got {max_chars!r}")
        path = Path(prompt) if prompt is not None else DEFAULT_PROMPT
        self.prompt: PromptFile = load_prompt(
            path, source="builtin" if prompt is None else "user")
        if "data" not in self.prompt.inputs:
            declared = ", ".join(self.prompt.inputs) or "none"
            raise ConfigError(f"self_check scanner: prompt {path} must declare a 'data' input "
                              f"(it declares: {declared})")
        self._model = model
        self.min_score, self.max_chars = float(min_score), max_chars
        self.model_options = dict(model_options or {})

    @property
    def model(self) -> Model:
        return shared_model(self._model, self.model_options)

    def scan(self, text: str) -> list[Finding]:
        if not text.strip():
            return []
        if len(text) > self.max_chars:
            raise FmstackError(f"self_check scanner: text of {len(text):,} characters is over "
                               f"its limit of {self.max_chars:,} (set max_chars)")
        score, answer = self.judge(text)
        if score < self.min_score:
            return []
        return [Finding(self.name, "injection.self_check", 0, len(text), round(score, 3),
                        f"the judge model answered {answer!r} to whether this is an injection "
                        f"or jailbreak attempt (p(yes) = {score:.2f})")]

    def judge(self, text: str) -> tuple[float, str]:
        """(P(yes), the constrained answer) for ``text``."""
        from fmstack.models.types import ChoiceFormat

        model = self.model
        caps = model.capabilities
        if "choice" not in caps.response_formats:
            raise CapabilityError(f"self_check scanner: backend {model.backend} cannot enforce "
                                  "a choice of answers; use a model whose backend can")
        spot = Spotlight("delimit", source="data")
        values: dict[str, Any] = {"data": spot.apply(text)}
        if "instructions" in self.prompt.inputs:
            values["instructions"] = spot.instructions()
        top = min(20, caps.max_top_logprobs) if caps.logprobs else 0
        request = self.prompt.request(
            values, record=False, response_format=ChoiceFormat(choices=list(CHOICES)),
            logprobs=bool(top), top_logprobs=top)
        request = request.model_copy(update={"tags": {**request.tags, "guard": self.name}})
        completion = model.complete(request)
        answer = str(completion.parsed)
        return _p_yes(completion, answer), answer


def _p_yes(completion: Completion, answer: str) -> float:
    """P(yes) from the first answer token's alternatives; the answer itself when they say
    nothing about yes or no."""
    verdict = 1.0 if answer == "yes" else 0.0
    if not completion.logprobs:
        return verdict
    first = completion.logprobs[0]
    alternatives = [(a.token, a.logprob) for a in first.top] or [(first.token, first.logprob)]
    mass = {"yes": 0.0, "no": 0.0}
    # Only the tokens the choice grammar allows (prefixes of "yes" and "no" as written), so
    # that P(yes) > 0.5 exactly when greedy decoding answers "yes".
    for token, logprob in alternatives:
        for word in mass:
            if token and word.startswith(token):
                mass[word] += math.exp(logprob)
    total = mass["yes"] + mass["no"]
    return mass["yes"] / total if total > 0 else verdict
