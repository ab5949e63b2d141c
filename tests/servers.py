"""Real servers for tests, run as subprocesses on loopback ports.

``llama_cpp_server`` starts llama-cpp-python's own OpenAI-compatible server (not written by
us), waits until ``/v1/models`` answers and stops it afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # a 401 from a keyed server still means it is up
    except OSError:
        return False


@contextmanager
def llama_cpp_server(
    model: Path,
    log: Path,
    *,
    api_key: str | None = None,
    n_ctx: int = 2048,
    startup_timeout: float = 120.0,
    threads: int = 1,
) -> Iterator[str]:
    """Serve ``model`` with ``python -m llama_cpp.server``; yields the base URL (``.../v1``).

    One thread by default: llama.cpp's workers spin while they wait, and on a busy 2-core
    machine a 24-token reply took 6-19 s with two threads against about 1 s with one."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        # Without this, a new request cuts the running one short and reports success.
        "--interrupt_requests", "False",
        "--n_ctx", str(n_ctx),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
    ]  # fmt: skip
    if api_key is not None:
        cmd += ["--api_key", api_key]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    base = f"http://127.0.0.1:{port}/v1"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + startup_timeout
            while not _answers(base + "/models"):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"llama_cpp.server exited with {proc.returncode}: "
                        + log.read_text(errors="replace")[-2000:]
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server not up after {startup_timeout:g} s")
                time.sleep(0.2)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def serving(app: object, startup_timeout: float = 30.0) -> Iterator[str]:
    """Run an ASGI ``app`` (ours) with uvicorn on a loopback port in a thread; yields the
    base URL (``http://127.0.0.1:PORT``, without ``/v1``)."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,  # type: ignore[arg-type]
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
