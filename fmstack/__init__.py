"""fmstack: the foundation-model application stack.

``import fmstack`` is kept cheap: submodules load on first use.

    >>> from fmstack.models import load_model, Request
    >>> model = load_model("smollm2")
    >>> model.complete(Request.chat("Name a colour.", temperature=0)).text
"""

__version__ = "0.1.0"
