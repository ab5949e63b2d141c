"""``fmstack chat``: an interactive multi-turn conversation, streamed.

Commands inside the chat: ``/system TEXT`` (set the system message), ``/reset`` (forget the
conversation, keep the system message), ``/exit`` (or end of input). It reads lines from stdin,
so it works the same when stdin is a pipe (scripts, tests) as at a terminal; the ``you>`` prompt
is only shown at a terminal so piped output holds just the replies.

A failed turn (say, a conversation that outgrew the context window) prints its error line and
drops that user message, so the conversation can go on; bad flags fail before the model loads.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fmstack.cli import common
from fmstack.cli.common import (
    DEFAULT_MODEL,
    FrequencyPenalty,
    MaxTokens,
    MinP,
    ModelOpt,
    PresencePenalty,
    RepetitionPenalty,
    Seed,
    Stop,
    SystemOpt,
    Temperature,
    TopK,
    TopP,
)
from fmstack.errors import FmstackError

if TYPE_CHECKING:
    from fmstack.models import Message, Model, SamplingParams

HELP = "commands: /system TEXT, /reset, /exit"


def chat(
    model: ModelOpt = DEFAULT_MODEL,
    system: SystemOpt = None,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    min_p: MinP = None,
    repetition_penalty: RepetitionPenalty = None,
    frequency_penalty: FrequencyPenalty = None,
    presence_penalty: PresencePenalty = None,
    seed: Seed = None,
    max_tokens: MaxTokens = None,
    stop: Stop = None,
    guard: Annotated[str | None, typer.Option(
        "--guard", metavar="POLICY", help="Screen every turn and reply with a guard policy: "
        "default, strict, audit or a YAML file. A blocked turn is refused and not kept.")
    ] = None,
) -> None:
    """Chat with a model, turn by turn (/system TEXT, /reset, /exit)."""
    sampling = dict(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, seed=seed, max_tokens=max_tokens, stop=stop,
    )
    with common.user_errors():
        params = common.sampling_params(sampling, common.flag_names())
        policy = None
        if guard is not None:
            from fmstack.guard import load_policy

            policy = load_policy(guard)
        from fmstack.models import load_model

        loaded = load_model(model)
    with loaded:
        m: Any = loaded
        if policy is not None:
            from fmstack.guard import guarded

            m = guarded(loaded, policy)
        _loop(m, params, system)


def _loop(m: Model, params: SamplingParams, system: str | None) -> None:
    from fmstack.models import Message

    interactive = sys.stdin.isatty()
    if interactive:
        common.err().print(f"chatting with {m.name} · {HELP}", style="dim", markup=False)
    history: list[Message] = []
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, arg = text.partition(" ")
            if command == "/exit":
                break
            if command == "/reset":
                history.clear()
                common.err().print("(conversation reset)", style="dim")
            elif command == "/system":
                system = arg.strip() or None
                common.err().print(
                    f"(system message {'set' if system else 'cleared'})", style="dim"
                )
            else:
                common.err().print(f"unknown command {command} ({HELP})", style="yellow",
                                   markup=False)
            continue
        history.append(Message(role="user", content=line))
        reply = _turn(m, params, system, history)
        if reply is None:
            history.pop()
        else:
            history.append(Message(role="assistant", content=reply))


def _turn(
    m: Model, params: SamplingParams, system: str | None, history: list[Message]
) -> str | None:
    """Stream one reply; its text, or None when the turn failed or was interrupted."""
    from fmstack.models import Message, Request

    messages = ([Message(role="system", content=system)] if system else []) + history
    request = Request(messages=messages, params=params)
    pieces: list[str] = []
    stream = m.stream(request)
    try:
        for delta in stream:
            if delta.text:
                pieces.append(delta.text)
                sys.stdout.write(delta.text)
                sys.stdout.flush()
            if delta.completion is not None:
                sys.stdout.write("\n")
                sys.stdout.flush()
                common.print_footer(delta.completion)
                return delta.completion.text
    except FmstackError as e:
        if pieces:
            sys.stdout.write("\n")
        common.print_error(str(e))
        return None
    except KeyboardInterrupt:
        # Ctrl-C stops this reply, not the chat; closing the generator frees the backend now.
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        sys.stdout.write("\n")
        common.err().print("(interrupted)", style="dim")
        return None
    return "".join(pieces)
