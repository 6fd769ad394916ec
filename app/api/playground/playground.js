// The playground: a multi-turn chat that streams from /v1/chat/completions with fetch (SSE over a
// ReadableStream), shows each answer's time to first token, tokens/s, finish reason and usage, and
// stops a generation for real (it asks the server to cancel it, then closes the connection), and picks
// a stream up where it broke off when the connection drops (X-Stream-Resume with Last-Event-ID).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const chat = $("chat"), form = $("composer"), promptBox = $("prompt"), sendButton = $("send");
  const stopButton = $("stop"), statusLine = $("status"), keyInput = $("api-key"), remember = $("remember-key");
  const KEY_NAME = "tokenwire-api-key";
  const history = [];  // {role, content} of finished turns
  let model = null, running = null;  // running: the AbortController of the answer in flight
  let resumeUrl = null;  // the answer in flight's stream, from its X-Stream-Resume header
  const RESUME_TRIES = 3;
  // One id per chat: behind a balancer, every turn reaches the replica that holds its prefix cache.
  const newSessionId = () => (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());
  let sessionId = newSessionId();

  // ---- the API key: this tab's session only, unless the user asks to remember it ------------------
  keyInput.value = sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME) || "";
  remember.checked = localStorage.getItem(KEY_NAME) !== null;
  function saveKey() {
    const key = keyInput.value.trim();
    sessionStorage.setItem(KEY_NAME, key);
    if (remember.checked && key) localStorage.setItem(KEY_NAME, key); else localStorage.removeItem(KEY_NAME);
  }
  keyInput.addEventListener("change", () => { saveKey(); loadModel(); });
  remember.addEventListener("change", saveKey);

  function headers() {
    const h = { "Content-Type": "application/json", "X-Session-Id": sessionId };
    const key = keyInput.value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  // ---- errors in OpenAI's shape, as sentences a person can act on ------------------------------
  async function describeFailure(response) {
    let message = "", code = null;
    try { ({ message, code } = (await response.json()).error); } catch (_) { /* not our JSON */ }
    if (response.status === 401) return "This server needs an API key: enter it under Settings.";
    if (response.status === 429) {
      const wait = response.headers.get("Retry-After");
      const when = wait ? "in " + wait + " s" : "shortly";
      if (code === "rate_limit_exceeded") return `This key has reached its limit (${message}); retry ${when}.`;
      return `The server is busy; retry ${when}.`;
    }
    if (response.status === 503) return "The server is not ready (loading or shutting down): " + message;
    return `Error ${response.status}: ${message || response.statusText}`;
  }

  // ---- the models: a picker when the server offers several (loaded or not: a request loads one) ----
  const picker = $("model-picker");
  let models = [];
  function describeModel() {
    const chosen = models.find((m) => m.id === model);
    if (!chosen) { $("model").textContent = "no model served"; return; }
    const context = chosen.max_model_len ? ` · context ${chosen.max_model_len} tokens` : "";
    const status = chosen.status && chosen.status !== "loaded" ? ` · ${chosen.status} (the first message loads it)` : "";
    $("model").textContent = `${chosen.id}${context}${status}`;
  }
  async function loadModel() {
    try {
      const response = await fetch("/v1/models", { headers: headers() });
      if (!response.ok) { $("model").textContent = await describeFailure(response); return; }
      models = (await response.json()).data;
      if (!models.some((m) => m.id === model)) model = models.length ? models[0].id : null;
      picker.replaceChildren(...models.map((m) => {
        const option = document.createElement("option");
        option.value = m.id;
        option.textContent = m.status && m.status !== "loaded" ? `${m.id} (${m.status})` : m.id;
        return option;
      }));
      picker.value = model || "";
      picker.hidden = models.length < 2;
      describeModel();
    } catch (error) {
      $("model").textContent = "cannot reach the server: " + error.message;
    }
  }
  picker.addEventListener("change", () => { model = picker.value; describeModel(); });

  // ---- the chat log --------------------------------------------------------------------------
  function bubble(role, text) {
    const div = document.createElement("div");
    div.className = "message " + role;
    // A reasoning model's thinking (reasoning_content deltas), folded away, as plain text.
    const thinking = document.createElement("details");
    thinking.className = "thinking";
    thinking.hidden = true;
    const summary = document.createElement("summary");
    summary.textContent = "Thinking";
    const thought = document.createElement("div");
    thinking.append(summary, thought);
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = text;
    const meta = document.createElement("div");
    meta.className = "meta";
    div.append(thinking, body, meta);
    chat.appendChild(div);
    chat.scrollTop = chat.scrollHeight;
    return { div, body, meta, thinking, thought };
  }

  function renderAnswer(view, text) {
    view.body.replaceChildren(TokenwireMarkdown.render(text));
    chat.scrollTop = chat.scrollHeight;
  }

  function request(messages) {
    const body = { model, messages, stream: true, stream_options: { include_usage: true } };
    const temperature = parseFloat($("temperature").value);
    if (!Number.isNaN(temperature)) body.temperature = temperature;
    const maxTokens = parseInt($("max-tokens").value, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;
    const seed = parseInt($("seed").value, 10);
    if (!Number.isNaN(seed)) body.seed = seed;
    return body;
  }

  // Yields the JSON of each `data:` event of a server-sent event stream, until [DONE].
  // The JSON events of a stream; a dropped connection is picked up again from the last event seen.
  async function* sseEvents(response, signal) {
    let lastId = null;
    for (let tries = 0; ; tries++) {
      try {
        for await (const { id, data } of sseBlocks(response)) {
          if (id !== null) lastId = id;
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
        return;
      } catch (error) {
        if (error.name === "AbortError" || !resumeUrl || tries >= RESUME_TRIES) throw error;
        statusLine.textContent = "connection lost: resuming…";
        const resumeHeaders = headers();
        if (lastId !== null) resumeHeaders["Last-Event-ID"] = lastId;
        response = await fetch(resumeUrl, { headers: resumeHeaders, signal });
        if (!response.ok) throw new Error(await describeFailure(response));
        statusLine.textContent = "generating…";
      }
    }
  }

  async function* sseBlocks(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let id = null, data = null;
        for (const line of block.split("\n")) {  // ": ping" keep-alives carry neither
          if (line.startsWith("id:")) id = line.slice(3).trim();
          if (line.startsWith("data:")) data = line.slice(5).trim();
        }
        if (data !== null) yield { id, data };
      }
    }
  }

  function stats(sent, first, last, usage, finish) {
    const parts = [];
    if (first) parts.push(`first token ${Math.round(first - sent)} ms`);
    if (usage && first && last > first && usage.completion_tokens > 1) {
      parts.push(`${((usage.completion_tokens - 1) / ((last - first) / 1000)).toFixed(1)} tokens/s`);
    }
    if (finish) parts.push(`finish: ${finish}`);
    if (usage) {
      const cached = usage.prompt_tokens_details ? usage.prompt_tokens_details.cached_tokens : 0;
      parts.push(`prompt ${usage.prompt_tokens} tokens (${cached} cached), completion ${usage.completion_tokens}`);
    }
    return parts.join(" · ");
  }

  async function send(text) {
    const system = $("system").value.trim();
    const messages = [...(system ? [{ role: "system", content: system }] : []), ...history,
                      { role: "user", content: text }];
    bubble("user", text);
    const view = bubble("assistant", "");
    running = new AbortController();
    setRunning(true);
    const sent = performance.now();
    let answer = "", first = null, last = null, usage = null, finish = null;
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(request(messages)), signal: running.signal,
      });
      if (!response.ok) throw new Error(await describeFailure(response));
      showLimits(response.headers);
      resumeUrl = response.headers.get("X-Stream-Resume");
      for await (const event of sseEvents(response, running.signal)) {
        if (event.error) throw new Error(event.error.message);
        if (event.usage) usage = event.usage;
        for (const choice of event.choices || []) {
          const reasoning = (choice.delta && (choice.delta.reasoning_content || choice.delta.reasoning)) || "";
          if (reasoning) {
            last = performance.now();
            first = first || last;
            view.thinking.hidden = false;
            view.thought.textContent += reasoning;
          }
          const delta = (choice.delta && choice.delta.content) || "";
          if (delta) {
            last = performance.now();
            first = first || last;
            answer += delta;
            renderAnswer(view, answer);
          }
          finish = choice.finish_reason || finish;
        }
      }
      history.push({ role: "user", content: text }, { role: "assistant", content: answer });
      view.meta.textContent = stats(sent, first, last, usage, finish);
    } catch (error) {
      if (error.name === "AbortError") {
        view.meta.textContent = stats(sent, first, last, null, "stopped");
        if (answer) history.push({ role: "user", content: text }, { role: "assistant", content: answer });
      } else {
        view.div.classList.add("error");
        view.meta.textContent = error.message;
      }
    } finally {
      running = null;
      resumeUrl = null;
      setRunning(false);
      loadModel();  // the model's status may have changed (loaded by this message)
    }
  }

  // ---- the key's own limits, from OpenAI's x-ratelimit-* headers (only keys with limits get them) -----
  function showLimits(h) {
    const parts = ["requests", "tokens"].filter((kind) => h.get("x-ratelimit-limit-" + kind)).map((kind) =>
      `${h.get("x-ratelimit-remaining-" + kind)} of ${h.get("x-ratelimit-limit-" + kind)} ${kind} left ` +
      `(full in ${h.get("x-ratelimit-reset-" + kind)})`);
    $("limits").textContent = parts.length ? "This key: " + parts.join(", ") + "." : "";
  }

  function setRunning(on) {
    sendButton.disabled = on;
    stopButton.disabled = !on;
    statusLine.textContent = on ? "generating…" : "";
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = promptBox.value.trim();
    if (!text || running) return;
    promptBox.value = "";
    send(text);
  });
  promptBox.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });
  stopButton.addEventListener("click", () => {
    if (!running) return;
    // The server would keep generating a while for a client that may come back: tell it to stop.
    if (resumeUrl) fetch(resumeUrl + "/cancel", { method: "POST", headers: headers() }).catch(() => {});
    running.abort();
  });
  $("clear").addEventListener("click", () => {
    if (!running) { history.length = 0; chat.replaceChildren(); sessionId = newSessionId(); }
  });

  loadModel();
})();
