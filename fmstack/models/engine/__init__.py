"""The serving engine: many sequences of one GGUF model decoded together on llama.cpp.

``Engine`` (``core.py``) owns a llama.cpp context with one KV stream per slot and a loop thread
that runs **continuous batching**: each step decodes one token for every running sequence plus
prompt chunks of newly admitted ones, samples each sequence with its own sampler chain, and
admits waiting requests as soon as a slot frees. ``SlotPool`` (``slots.py``) is the KV budget
and the **prefix cache**. ``EngineModel`` (``fmstack.models.backends.engine``) puts the Model
contract on top, so everything else (the server, the eval runner) uses it like any backend.
"""

from fmstack.models.engine.core import Engine, EngineStats, SequenceHandle
from fmstack.models.engine.slots import Slot, SlotPool

__all__ = ["Engine", "EngineStats", "SequenceHandle", "Slot", "SlotPool"]
