"""The web UI of ``fmstack serve``: its ``/api`` routes through a real uvicorn server on a
loopback port serving SmolLM2 (llama.cpp) with API keys on, and the page itself in headless
Chromium (Debian's ``chromium``, driven by Playwright), calling that same server."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from servers import free_port  # tests/ is on sys.path under pytest

from fmstack.models.base import Model
from fmstack.models.registry import load_model
from fmstack.models.types import Message
from fmstack.serve.app import create_app
from fmstack.serve.auth import KeyStore


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT
    model: Model
    key: str  # the API key the server requires on /v1 and /api


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import uvicorn

    # Its own trace store: module fixtures of other test files share the session's throwaway
    # home, and their traces would show up in this page's searches.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMSTACK_HOME", str(tmp_path_factory.mktemp("ui-home")))
        model = load_model("smollm2", n_threads=1)
    assert model.tracer is not None
    # A remote model is never called here: it is served so /api/render can refuse it (an
    # OpenAI-compatible backend does not expose its chat template).
    remote = load_model("openai:gpt-4o-mini@http://127.0.0.1:9/v1", trace=False)
    keys = KeyStore(model.tracer.path)
    key = keys.create("ui-test").secret
    app = create_app({"smollm2": model, "remote": remote}, traces=model.tracer, keys=keys)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield Served(f"http://127.0.0.1:{port}", model, key)
    server.should_exit = True
    thread.join(timeout=10)
    model.close()
    keys.close()


def call(served: Served, path: str, body: dict[str, Any] | bytes | None = None, *,
         key: str | None = None) -> tuple[int, Any]:
    """GET (or POST ``body``) and decode the JSON answer, error statuses included. The key
    defaults to the one the server requires; ``key=""`` sends none."""
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    key = served.key if key is None else key
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(served.url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def chat(served: Served, text: str, **options: Any) -> str:
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=served.key, max_retries=0)
    out = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": text}], temperature=0,
        max_tokens=6, **options)
    if options.get("stream"):
        return "".join(c.choices[0].delta.content or "" for c in out if c.choices)
    return out.choices[0].message.content or ""


def traces(served: Served, **query: Any) -> dict[str, Any]:
    status, body = call(served, f"/api/traces?{urllib.parse.urlencode(query)}")
    assert status == 200, body
    return body


def assert_openai_error(status: int, body: Any, expected: int, words: str) -> None:
    assert status == expected and words in body["error"]["message"], body
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_traces_appear_after_chat_calls_and_search_finds_them(served: Served) -> None:
    answer = chat(served, 'Say "hello" to the quokka.')
    streamed = chat(served, "Name one colour of the wombat.", stream=True)
    newest = traces(served, limit=2)
    assert [r["input"] for r in newest["data"]] == ["Name one colour of the wombat.",
                                                     'Say "hello" to the quokka.']
    row = newest["data"][1]
    assert row["model"] == "smollm2" and row["output"] == answer and row["error"] is None
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    assert row["ttft_s"] > 0 and row["total_s"] >= row["ttft_s"]
    assert newest["data"][0]["output"] == streamed and newest["data"][0]["kind"] == "stream"

    # Search looks in prompts, messages and outputs; a quote is found in the stored JSON.
    found = traces(served, q="quokka")["data"]
    assert [r["id"] for r in found] == [row["id"]]
    assert [r["id"] for r in traces(served, q='"hello"')["data"]] == [row["id"]]
    assert traces(served, q="no trace says this")["data"] == []
    assert traces(served, q="%")["data"] == []  # LIKE wildcards are taken literally
    assert traces(served, q="quokka", model="other")["data"] == []
    assert [r["id"] for r in traces(served, q="quokka", model="smollm2")["data"]] == [row["id"]]

    # Paging: newest first, one page at a time.
    first = traces(served, limit=1)
    second = traces(served, limit=1, offset=1)
    assert first["has_more"] and first["data"][0]["id"] == newest["data"][0]["id"]
    assert second["data"][0]["id"] == row["id"]

    status, whole = call(served, f"/api/traces/{row['id']}")
    assert status == 200
    assert whole["messages"] == [{"role": "user", "content": 'Say "hello" to the quokka.'}]
    assert whole["output"] == answer and whole["params"]["temperature"] == 0
    assert "<|im_start|>user" in whole["rendered_prompt"]


def test_trace_and_query_errors_are_openai_shaped(served: Served) -> None:
    status, body = call(served, "/api/traces/999999")
    assert_openai_error(status, body, 404, "no trace with id '999999'")
    status, body = call(served, "/api/traces/abc")
    assert_openai_error(status, body, 400, "id must be a whole number")
    status, body = call(served, "/api/traces?limit=0")
    assert_openai_error(status, body, 400, "limit must be between 1 and 200, got 0")
    status, body = call(served, "/api/traces?offset=-3")
    assert_openai_error(status, body, 400, "offset must be at least 0")


def test_the_api_routes_need_the_key_when_keys_are_on(served: Served) -> None:
    for path, body in (("/api/traces", None), ("/api/traces/1", None),
                       ("/api/render", {"model": "smollm2",
                                        "messages": [{"role": "user", "content": "hi"}]})):
        status, answer = call(served, path, body, key="")
        assert_openai_error(status, answer, 401, "missing Authorization header")
        status, answer = call(served, path, body, key="fms-not-a-key")
        assert_openai_error(status, answer, 401, "unknown or revoked API key")


def test_render_is_the_models_chat_template(served: Served) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2 + 2?"}]
    status, body = call(served, "/api/render", {"model": "smollm2", "messages": messages})
    assert status == 200, body
    expected = served.model.render_chat([Message(**m) for m in messages])
    assert body["prompt"] == expected and "<|im_start|>system\nBe brief." in expected
    assert body["prompt_tokens"] == len(served.model.tokenize(expected, special=True))

    status, body = call(served, "/api/render", {"model": "remote", "messages": messages})
    assert_openai_error(status, body, 400, "does not expose its chat template")
    status, body = call(served, "/api/render", {"model": "gpt-9", "messages": messages})
    assert_openai_error(status, body, 404, "model 'gpt-9' is not served here")
    status, body = call(served, "/api/render", {"model": "smollm2", "messages": []})
    assert_openai_error(status, body, 400, "messages")
    status, body = call(served, "/api/render",
                        {"model": "smollm2", "messages": [{"role": "wizard", "content": "x"}]})
    assert_openai_error(status, body, 400, "messages.0.role")
    status, body = call(served, "/api/render", b"{not json")
    assert_openai_error(status, body, 400, "Invalid JSON")


def test_the_page_and_only_its_own_static_files_are_served(served: Served) -> None:
    with urllib.request.urlopen(served.url + "/", timeout=10) as r:
        page = r.read().decode()
        assert r.headers["content-type"].startswith("text/html")
    # Everything the page loads comes from this server: it works offline.
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert [r for r in refs if not r.startswith("data:")] == ["/static/style.css",
                                                               "/static/app.js"]
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        with urllib.request.urlopen(f"{served.url}/static/{name}", timeout=10) as r:
            assert kind in r.headers["content-type"] and r.read()
    host = served.url.removeprefix("http://")
    for path in ("/static/..%2Fui.py", "/static/%2e%2e%2fapp.py", "/static/../ui.py",
                 "/static/missing.js"):
        conn = http.client.HTTPConnection(host, timeout=10)
        conn.request("GET", path)
        answer = conn.getresponse()
        assert answer.status == 404 and b"import" not in answer.read(), path
        conn.close()
    status, body = call(served, "/static/missing.js")
    assert_openai_error(status, body, 404, "no static file 'missing.js'")


# ----- the page in a browser ----------------------------------------------------------------


def test_playground_streams_colours_tokens_and_the_traces_tab_shows_the_call(
        served: Served) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install 'fmstack[dev]')")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make install runs apt-get install "
                    "chromium where apt is available)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            _drive_the_page(browser.new_page(), served)
        finally:
            browser.close()


def _drive_the_page(page: Any, served: Served) -> None:
    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
    page.set_default_timeout(30_000)
    # The page itself is public; the API behind it says it wants a key, and the page shows it.
    page.goto(served.url + "/")
    error = page.wait_for_selector("#chat-error:not([hidden])")
    assert "Could not list the models: 401" in error.inner_text()
    assert "missing Authorization header" in error.inner_text()

    # The key is kept in localStorage (it survives a reload) and sent as a bearer token.
    page.fill("#api-key", served.key)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#model option[value='smollm2']", state="attached")
    assert page.locator("#chat-error").is_hidden()
    page.reload()
    assert page.input_value("#api-key") == served.key
    page.wait_for_selector("#model option[value='smollm2']", state="attached")
    page.select_option("#model", "smollm2")

    # An API error is shown, and the message is given back to fix and resend.
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "-1")
    page.fill("#user-message", "What is the capital of France?")
    page.click("#send")
    error = page.wait_for_selector("#chat-error:not([hidden])")
    assert "max_tokens" in error.inner_text() and "400" in error.inner_text()
    assert page.input_value("#user-message") == "What is the capital of France?"
    assert page.locator(".turn").count() == 0

    page.fill("#max-tokens", "16")
    page.check("#logprobs")
    page.click("#send")
    answer = page.wait_for_selector(".turn.assistant.done")
    assert page.locator("#chat-error").is_hidden()
    text = answer.query_selector(".content").inner_text()
    assert text.strip()
    tokens = page.locator(".turn.assistant.done .tok")
    assert tokens.count() >= 1
    assert "".join(tokens.all_inner_texts()) == text
    colours = tokens.evaluate_all("spans => spans.map(s => getComputedStyle(s).backgroundColor)")
    assert all(c.startswith("rgb(") for c in colours)
    probabilities = [float(p) for p in tokens.evaluate_all("s => s.map(e => e.dataset.p)")]
    assert all(0 < p <= 1 for p in probabilities)
    meta = answer.query_selector(".meta").inner_text()
    assert "completion tokens" in meta and "TTFT" in meta

    tokens.first.hover()
    tip = page.wait_for_selector("#tok-tip:not([hidden])")
    assert page.locator("#tok-tip tr.alt").count() == 5 and "%" in tip.inner_text()

    final = page.inner_text("#final-prompt")
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in final

    chats = [auth for url, auth in sent if url.endswith("/v1/chat/completions")]
    assert chats and all(a == f"Bearer {served.key}" for a in chats)

    # A follow-up sends the conversation so far.
    page.uncheck("#logprobs")
    page.fill("#user-message", "And of Italy?")
    page.click("#send")
    page.wait_for_selector(".turn.assistant.done >> nth=1")
    latest = traces(served, limit=1)["data"][0]
    status, whole = call(served, f"/api/traces/{latest['id']}")
    assert status == 200
    assert [m["role"] for m in whole["messages"]] == ["user", "assistant", "user"]
    assert whole["messages"][1]["content"] == text
    assert text in page.inner_text("#final-prompt")

    # Stop ends the stream early and keeps what came.
    page.fill("#max-tokens", "400")
    page.fill("#user-message", "Write a long story about a dragon.")
    page.click("#send")
    page.wait_for_function(
        "(document.querySelector('.turn.assistant.streaming .content') || {}).textContent")
    page.click("#stop")
    page.wait_for_selector(".turn.assistant.stopped")
    assert page.is_enabled("#send") and page.is_disabled("#stop")

    # The traces tab lists the first call; search finds it and opens its detail.
    page.click("#tab-traces")
    page.wait_for_selector("#trace-table tbody tr[data-id]")
    page.fill("#trace-search", "no trace says this")
    page.press("#trace-search", "Enter")
    page.wait_for_selector("#trace-table tr.empty:has-text('No trace matches.')")
    page.fill("#trace-search", "capital of France")
    page.press("#trace-search", "Enter")
    # Both rows lists hold the first call's trace: clicking it in either opens the same one.
    page.locator("#trace-table tbody tr[data-id]"
                 ":has(td:text-is('What is the capital of France?'))").click()
    detail = page.wait_for_selector("#trace-detail:not([hidden])")
    shown = detail.inner_text()
    assert "TTFT" in shown and "Rendered prompt" in shown and "<|im_start|>" in shown
    assert text in shown
