"""``fmstack serve``: an OpenAI-compatible API over fmstack models (see ``app``)."""
