"""A two-stage pipeline for examples/suites/pipeline.yaml: look up a fact, then answer with it.

The runner calls ``answer(model, request, case)`` for each sample. Returning the retrieved
ids and the context alongside the final completion lets the suite score retrieval and
generation separately.
"""

from __future__ import annotations

from typing import Any

from fmstack.eval.suite import Case
from fmstack.models.base import Model
from fmstack.models.types import Message, Request

FACTS = {
    "fr": "Paris is the capital and largest city of France.",
    "de": "Berlin is the capital of Germany.",
    "es": "Madrid is the capital of Spain.",
    "th": "Bangkok is the capital of Thailand.",
}


def answer(model: Model, request: Request, case: Case) -> dict[str, Any]:
    country = str(case.vars["country"]).lower()
    retrieved = [k for k, text in FACTS.items() if country in text.lower()]
    context = "\n".join(FACTS[k] for k in retrieved) or "(nothing found)"
    assert request.messages is not None
    question = request.messages[-1].content
    grounded = request.model_copy(update={"messages": [
        *request.messages[:-1],
        Message(role="user", content=f"Context:\n{context}\n\nQuestion: {question}"),
    ]})
    return {"final": model.complete(grounded), "context": context, "retrieved": retrieved}
