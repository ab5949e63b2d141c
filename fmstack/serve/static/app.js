// The fmstack web UI: a playground over the OpenAI routes and a browser of the trace store.
// Plain JavaScript, no build step and no third-party code, so the page works offline.
// Untrusted text (prompts, outputs, errors) only ever reaches the page through textContent.
"use strict";

const $ = (selector) => document.querySelector(selector);
const KEY_STORAGE = "fmstack.apiKey";
const MODEL_STORAGE = "fmstack.model";
const TOP_LOGPROBS = 5;

const state = {
  conversation: [],   // finished turns: {role, content, tokens?}
  controller: null,   // AbortController of the answer being streamed
  renderSeq: 0,       // newest /api/render call; older answers are dropped
  renderTimer: null,
  traceSeq: 0,
  traceOffset: 0,
};

// ---------------------------------------------------------------- DOM and HTTP helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function showError(box, message) {
  box.textContent = message;
  box.hidden = false;
}

function clearError(box) {
  box.textContent = "";
  box.hidden = true;
}

function authHeaders(extra = {}) {
  const headers = { ...extra };
  const key = localStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

// The server's own words for a failed call: OpenAI's {"error": {"message"}} when it is that.
async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) return `${response.status}: ${body.error.message}`;
    if (body && body.detail) return `${response.status}: ${JSON.stringify(body.detail)}`;
  } catch (_) {
    // not JSON: fall through to the raw text
  }
  const tail = text ? `: ${text.slice(0, 300)}` : "";
  return `${response.status} ${response.statusText}${tail}`;
}

async function fetchJSON(url, options = {}) {
  const response = await fetch(url, { ...options, headers: authHeaders(options.headers) });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  return value < 1 ? `${(value * 1000).toFixed(0)} ms` : `${value.toFixed(2)} s`;
}

function money(value) {
  if (!value) return "–";
  return `$${value < 0.01 ? value.toExponential(2) : value.toFixed(4)}`;
}

// ---------------------------------------------------------------- tabs, key, models

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.classList.toggle("active", tab.dataset.tab === name);
  }
  for (const panel of document.querySelectorAll(".panel")) {
    panel.classList.toggle("active", panel.id === name);
  }
  history.replaceState(null, "", `#${name}`);
  if (name === "traces") loadTraces(true);
}

async function loadModels() {
  const error = $("#chat-error");
  let ids;
  try {
    ids = (await fetchJSON("/v1/models")).data.map((m) => m.id);
  } catch (e) {
    showError(error, `Could not list the models: ${e.message}`);
    return;
  }
  clearError(error);
  const picker = $("#model");
  const filter = $("#trace-model");
  const saved = localStorage.getItem(MODEL_STORAGE);
  picker.replaceChildren(...ids.map((id) => el("option", { value: id, text: id })));
  filter.replaceChildren(el("option", { value: "", text: "all models" }),
    ...ids.map((id) => el("option", { value: id, text: id })));
  if (saved && ids.includes(saved)) picker.value = saved;
  if (ids.length === 0) showError(error, "The server serves no models.");
  renderPrompt(messagesFor($("#user-message").value));
}

// ---------------------------------------------------------------- playground

function messagesFor(userText) {
  const messages = [];
  const system = $("#system-prompt").value;
  if (system.trim()) messages.push({ role: "system", content: system });
  for (const turn of state.conversation) messages.push({ role: turn.role, content: turn.content });
  if (userText.trim()) messages.push({ role: "user", content: userText });
  return messages;
}

function samplingParams() {
  const fields = [["temperature", "#temperature"], ["top_p", "#top-p"],
    ["max_tokens", "#max-tokens"], ["seed", "#seed"]];
  const params = {};
  for (const [name, selector] of fields) {
    const input = $(selector);
    // A number field holds "" for text that is not a number: say so rather than drop it.
    if (input.validity.badInput) throw new Error(`${name} must be a number`);
    if (input.value.trim() === "") continue;
    params[name] = Number(input.value);
  }
  return params;
}

function setBusy(busy) {
  $("#send").disabled = busy;
  $("#stop").disabled = !busy;
  document.body.dataset.busy = busy ? "true" : "false";
}

function appendTurn(turn) {
  const body = el("div", { class: "content" });
  const node = el("div", { class: `turn ${turn.role}` }, el("div", { class: "role", text: turn.role }), body);
  $("#conversation").append(node);
  drawTurn(node, turn);
  return node;
}

function probabilityColor(p) {
  const hue = Math.round(120 * Math.min(1, Math.max(0, p)));  // red (0) to green (120)
  return `hsl(${hue}, 75%, 80%)`;
}

function drawTurn(node, turn) {
  const body = node.querySelector(".content");
  if (!turn.tokens || turn.tokens.length === 0) {
    body.textContent = turn.content;
    return;
  }
  node.tokens = turn.tokens;
  // Streaming appends tokens: draw only the new ones.
  if (body.querySelector(".tok") === null) body.textContent = "";
  for (let i = body.querySelectorAll(".tok").length; i < turn.tokens.length; i++) {
    const p = Math.exp(turn.tokens[i].logprob);
    const span = el("span", { class: "tok", "data-index": String(i), "data-p": p.toFixed(4),
      text: turn.tokens[i].token });
    span.style.backgroundColor = probabilityColor(p);
    body.append(span);
  }
}

function visibleToken(token) {
  return token.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
}

function showTip(span) {
  const turn = span.closest(".turn");
  const token = turn && turn.tokens ? turn.tokens[Number(span.dataset.index)] : null;
  if (!token) return;
  const tip = $("#tok-tip");
  const p = Math.exp(token.logprob);
  const rows = (token.top_logprobs || []).map((alt) => {
    const q = Math.exp(alt.logprob);
    const bar = el("span", { class: "bar" });
    bar.style.width = `${Math.max(1, q * 100)}%`;
    bar.style.backgroundColor = probabilityColor(q);
    return el("tr", { class: alt.token === token.token ? "alt chosen" : "alt" },
      el("td", { class: "alt-token", text: visibleToken(alt.token) }),
      el("td", { class: "alt-p", text: `${(q * 100).toFixed(1)}%` }),
      el("td", { class: "alt-bar" }, bar));
  });
  tip.replaceChildren(
    el("div", { class: "tip-head",
      text: `${visibleToken(token.token)}  p=${(p * 100).toFixed(1)}%  logprob=${token.logprob.toFixed(3)}` }),
    rows.length ? el("table", {}, el("tbody", {}, ...rows))
      : el("div", { class: "muted", text: "no alternatives were returned" }));
  tip.hidden = false;
  const box = span.getBoundingClientRect();
  const width = tip.offsetWidth;
  tip.style.left = `${Math.max(4, Math.min(box.left, window.innerWidth - width - 4))}px`;
  tip.style.top = `${box.bottom + 6}px`;
}

// Server-sent events from a fetch body: yields each event's data (the text after "data:").
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const dataOf = (block) => block.split("\n").filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const data = dataOf(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (data) yield data;
    }
  }
  const rest = dataOf(buffer.trim());
  if (rest) yield rest;
}

function usageLine(usage, started, firstAt, ended, finish) {
  const parts = [];
  if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
  if (firstAt !== null) parts.push(`TTFT ${seconds((firstAt - started) / 1000)}`);
  const n = usage ? usage.completion_tokens : 0;
  // Decode speed after the first token, which is what TTFT already covers.
  if (firstAt !== null && n > 1 && ended > firstAt) {
    parts.push(`${((n - 1) / ((ended - firstAt) / 1000)).toFixed(1)} tok/s`);
  }
  parts.push(`total ${seconds((ended - started) / 1000)}`);
  if (finish) parts.push(`finish: ${finish}`);
  return parts.join(" · ");
}

async function send(event) {
  event.preventDefault();
  if (state.controller) return;
  const error = $("#chat-error");
  clearError(error);
  const input = $("#user-message");
  const text = input.value;
  const model = $("#model").value;
  if (!model) return showError(error, "Pick a model first (none is listed).");
  if (!text.trim()) return showError(error, "Type a message first.");
  let params;
  try {
    params = samplingParams();
  } catch (e) {
    return showError(error, e.message);
  }
  const wantLogprobs = $("#logprobs").checked;
  const messages = messagesFor(text);
  const body = { model, messages, stream: true, stream_options: { include_usage: true }, ...params };
  if (wantLogprobs) Object.assign(body, { logprobs: true, top_logprobs: TOP_LOGPROBS });
  clearTimeout(state.renderTimer);  // a render pending from typing would show the box emptied
  renderPrompt(messages);

  const userTurn = { role: "user", content: text };
  const answer = { role: "assistant", content: "", tokens: wantLogprobs ? [] : null };
  const userNode = appendTurn(userTurn);
  const answerNode = appendTurn(answer);
  answerNode.classList.add("streaming");
  input.value = "";
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);

  const started = performance.now();
  let firstAt = null;
  let usage = null;
  let finish = null;
  let failure = null;
  let stopped = false;
  let sawDone = false;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", body: JSON.stringify(body), signal: controller.signal,
      headers: authHeaders({ "Content-Type": "application/json" }),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const data of sseEvents(response)) {
      if (data === "[DONE]") {
        sawDone = true;
        break;
      }
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch (_) {
        throw new Error(`the server sent an unreadable event: ${data.slice(0, 200)}`);
      }
      if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = (choice.delta && choice.delta.content) || "";
        if (piece && firstAt === null) firstAt = performance.now();
        answer.content += piece;
        const logprobs = choice.logprobs && choice.logprobs.content;
        if (answer.tokens && logprobs) answer.tokens.push(...logprobs);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      drawTurn(answerNode, answer);
    }
    if (!sawDone) throw new Error("the stream ended before the answer was finished");
  } catch (e) {
    if (e.name === "AbortError") stopped = true;
    else failure = e.message;
  } finally {
    state.controller = null;
    setBusy(false);
  }
  const ended = performance.now();
  answerNode.classList.remove("streaming");

  if ((failure || stopped) && !answer.content) {
    // Nothing came back: undo the turn and give the message back to edit and resend.
    userNode.remove();
    answerNode.remove();
    input.value = text;
    showError(error, failure || "Stopped before the first token.");
    return;
  }
  drawTurn(answerNode, answer);
  state.conversation.push(userTurn, answer);
  const meta = usageLine(usage, started, firstAt, ended, stopped ? "stopped" : finish);
  answerNode.append(el("div", { class: "meta", text: meta }));
  answerNode.classList.add(stopped ? "stopped" : "done");
  if (failure) showError(error, `The answer broke off: ${failure}`);
  else if (answer.tokens && answer.tokens.length === 0 && answer.content) {
    showError(error, "Logprobs were asked for, but the server sent none with the stream.");
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

function newChat() {
  stop();
  state.conversation = [];
  $("#conversation").replaceChildren();
  clearError($("#chat-error"));
  renderPrompt(messagesFor($("#user-message").value));
}

function scheduleRender() {
  clearTimeout(state.renderTimer);
  state.renderTimer = setTimeout(() => renderPrompt(messagesFor($("#user-message").value)), 250);
}

// The exact text the model will see, from the server's chat template.
async function renderPrompt(messages) {
  const pre = $("#final-prompt");
  const count = $("#final-prompt-tokens");
  const model = $("#model").value;
  const seq = ++state.renderSeq;
  if (!model || messages.length === 0) {
    pre.textContent = "Type a message to see the prompt after the chat template.";
    pre.className = "muted";
    count.textContent = "";
    return;
  }
  try {
    const body = await fetchJSON("/api/render", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, messages }),
    });
    if (seq !== state.renderSeq) return;
    pre.textContent = body.prompt;
    pre.className = "";
    count.textContent = `(${body.prompt_tokens} tokens)`;
  } catch (e) {
    if (seq !== state.renderSeq) return;
    pre.textContent = e.message;
    pre.className = "error-text";
    count.textContent = "";
  }
}

// ---------------------------------------------------------------- traces

function traceRow(row) {
  const tokens = row.prompt_tokens === null ? "–" : `${row.prompt_tokens} → ${row.completion_tokens}`;
  const output = row.error
    ? el("td", { class: "clip error-text", text: row.error })
    : el("td", { class: "clip", text: row.output ?? "" });
  const tr = el("tr", { "data-id": String(row.id), class: row.error ? "failed" : "" },
    el("td", { text: String(row.id) }),
    el("td", { text: new Date(row.created_at).toLocaleString(), title: row.created_at }),
    el("td", { text: row.model }),
    el("td", { text: row.kind }),
    el("td", { class: "clip", text: row.input ?? "" }),
    output,
    el("td", { text: tokens }),
    el("td", { text: seconds(row.ttft_s) }),
    el("td", { text: seconds(row.total_s) }),
    el("td", { text: money(row.cost) }));
  tr.addEventListener("click", () => openTrace(row.id));
  return tr;
}

async function loadTraces(reset) {
  const seq = ++state.traceSeq;
  const error = $("#traces-error");
  const tbody = $("#trace-table tbody");
  const offset = reset ? 0 : state.traceOffset;
  const query = new URLSearchParams({ limit: "50", offset: String(offset) });
  const q = $("#trace-search").value.trim();
  const model = $("#trace-model").value;
  if (q) query.set("q", q);
  if (model) query.set("model", model);
  let body;
  try {
    body = await fetchJSON(`/api/traces?${query}`);
  } catch (e) {
    if (seq === state.traceSeq) showError(error, `Could not load traces: ${e.message}`);
    return;
  }
  if (seq !== state.traceSeq) return;
  clearError(error);
  if (reset) tbody.replaceChildren();
  tbody.append(...body.data.map(traceRow));
  state.traceOffset = offset + body.data.length;
  $("#trace-more").hidden = !body.has_more;
  if (tbody.children.length === 0) {
    const none = q || model ? "No trace matches." : "No traces yet: send something in the playground.";
    tbody.append(el("tr", { class: "empty" }, el("td", { colspan: "10", text: none })));
  }
}

function section(title, ...content) {
  return el("section", { class: "detail-section" }, el("h3", { text: title }), ...content);
}

function pre(text) {
  return el("pre", { text: text ?? "" });
}

async function openTrace(id) {
  const detail = $("#trace-detail");
  for (const tr of document.querySelectorAll("#trace-table tr.selected")) tr.classList.remove("selected");
  const row = document.querySelector(`#trace-table tr[data-id="${id}"]`);
  if (row) row.classList.add("selected");
  let t;
  try {
    t = await fetchJSON(`/api/traces/${encodeURIComponent(id)}`);
  } catch (e) {
    showError($("#traces-error"), `Could not open trace ${id}: ${e.message}`);
    return;
  }
  clearError($("#traces-error"));
  const stat = (name, value) => el("div", { class: "stat" },
    el("span", { class: "label", text: name }), el("span", { class: "value", text: value }));
  const input = t.messages
    ? t.messages.map((m) => el("div", { class: `msg ${m.role}` },
      el("div", { class: "role", text: m.role }), pre(m.content)))
    : [pre(t.prompt)];
  const close = el("button", { type: "button", class: "close", text: "Close" });
  close.addEventListener("click", () => { detail.hidden = true; });
  // replaceChildren would write a null as the text "null": leave the absent sections out.
  detail.replaceChildren(...[
    el("div", { class: "detail-head" },
      el("h2", { text: `Trace ${t.id}` }),
      el("span", { class: "muted",
        text: `${t.model} (${t.backend}) · ${t.kind} · ${t.created_at}` }), close),
    el("div", { class: "stats" },
      stat("queue", seconds(t.queue_s)), stat("TTFT", seconds(t.ttft_s)),
      stat("TPOT", seconds(t.tpot_s)), stat("total", seconds(t.total_s)),
      stat("prompt tokens", String(t.prompt_tokens ?? "–")),
      stat("completion tokens", String(t.completion_tokens ?? "–")),
      stat("cost", money(t.cost)), stat("finish", t.finish_reason ?? "–")),
    t.error ? section("Error", el("pre", { class: "error-text", text: t.error })) : null,
    section(t.messages ? "Input messages" : "Input prompt", ...input),
    t.rendered_prompt ? section("Rendered prompt", pre(t.rendered_prompt)) : null,
    section("Output", pre(t.output ?? "")),
    section("Parameters", pre(JSON.stringify(t.params, null, 2))),
    t.tags && Object.keys(t.tags).length ? section("Tags", pre(JSON.stringify(t.tags, null, 2))) : null,
  ].filter((node) => node !== null));
  detail.hidden = false;
  detail.scrollIntoView({ block: "nearest" });
}

// ---------------------------------------------------------------- wiring

function init() {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => showTab(tab.dataset.tab));
  }
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    $("#api-key").blur();  // fires "change", which saves the key
  });
  const key = $("#api-key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => {
    if (key.value.trim()) localStorage.setItem(KEY_STORAGE, key.value.trim());
    else localStorage.removeItem(KEY_STORAGE);
    loadModels();
  });

  $("#composer").addEventListener("submit", send);
  $("#user-message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) send(e);
  });
  $("#user-message").addEventListener("input", scheduleRender);
  $("#system-prompt").addEventListener("input", scheduleRender);
  $("#model").addEventListener("change", () => {
    localStorage.setItem(MODEL_STORAGE, $("#model").value);
    scheduleRender();
  });
  $("#stop").addEventListener("click", stop);
  $("#clear").addEventListener("click", newChat);

  const conversation = $("#conversation");
  conversation.addEventListener("mouseover", (e) => {
    const span = e.target.closest(".tok");
    if (span) showTip(span);
  });
  conversation.addEventListener("mouseout", (e) => {
    if (e.target.closest(".tok") && !(e.relatedTarget && e.relatedTarget.closest && e.relatedTarget.closest(".tok"))) {
      $("#tok-tip").hidden = true;
    }
  });

  $("#trace-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    loadTraces(true);
  });
  $("#trace-model").addEventListener("change", () => loadTraces(true));
  $("#trace-more").addEventListener("click", () => loadTraces(false));

  setBusy(false);
  loadModels();
  if (location.hash === "#traces") showTab("traces");
}

document.addEventListener("DOMContentLoaded", init);
