"""Built-in backends. Each registers through the ``fmstack.backends`` entry point group."""
