// llamagate's status page: asks llamagate/status every few seconds and
// renders it. Everything shown is set with textContent (names, ids and
// reasons come from clients and backends); no library, no external URL.
"use strict";

(function () {
  const KEY = "llamagate-admin-key";
  const STATUS = "llamagate/status";
  const params = new URLSearchParams(window.location.search);
  const asked = Number(params.get("interval"));
  // Milliseconds between refreshes: 2 s, or ?interval=MS (250 ms to 1 h).
  const interval = Number.isFinite(asked) && asked > 0 ? Math.min(Math.max(asked, 250), 3600000) : 2000;

  let previous = null; // the last document, for rates
  let refreshes = 0;
  let timer = null;

  const $ = (id) => document.getElementById(id);

  // An element with text or child elements; strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (name === "class") node.className = value;
      else if (name.startsWith("data-")) node.setAttribute(name, String(value));
      else if (name === "title") node.title = String(value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function bytes(n) {
    if (n === undefined || n === null) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = Number(n);
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return (i === 0 ? String(v) : v.toFixed(1)) + " " + units[i];
  }

  function rate(n) {
    if (n === null || !Number.isFinite(n)) return "—";
    return n.toFixed(1);
  }

  function time(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false });
  }

  function setText(id, value) {
    $(id).textContent = String(value);
  }

  function connection(state, text) {
    const p = $("connection");
    p.dataset.state = state;
    p.textContent = text;
  }

  function backendRow(b) {
    const loaded = el("ul", { class: "loaded" });
    for (const m of b.loaded || []) {
      const offload = m.size && m.size_vram < m.size ? " (partly on CPU)" : "";
      loaded.append(
        el(
          "li",
          { "data-model": m.name },
          el("span", { class: "model-name" }, m.name),
          " ",
          el("span", { class: "size-vram" }, bytes(m.size_vram)),
          " GPU" + offload,
          m.context_length ? ", ctx " + m.context_length : ""
        )
      );
    }
    if (!loaded.childElementCount) loaded.append(el("li", { class: "muted" }, "none"));
    const used = (b.loaded || []).reduce((sum, m) => sum + (m.size_vram || 0), 0);
    const vram = b.vram ? bytes(used) + " of " + bytes(b.vram) : bytes(used);
    return el(
      "tr",
      { "data-backend": b.id },
      el("td", {}, el("span", { class: "backend-id" }, b.id), el("br"), el("span", { class: "muted url" }, b.url),
        b.version ? el("span", { class: "muted" }, " · Ollama " + b.version) : null),
      el("td", {}, el("span", { class: "state state-" + b.state }, b.state), b.reason ? el("div", { class: "reason" }, b.reason) : null),
      el("td", { class: "num in-use" }, b.in_use + " / " + b.slots),
      el("td", { class: "num queued" }, b.queued),
      el("td", { class: "num in-flight" }, b.in_flight),
      el("td", { class: "num" }, vram),
      el("td", {}, loaded)
    );
  }

  function modelRow(m, before, seconds) {
    const was = before && before.get(m.model);
    const inRate = was && seconds > 0 ? (m.input_tokens - was.input_tokens) / seconds : null;
    const outRate = was && seconds > 0 ? (m.output_tokens - was.output_tokens) / seconds : null;
    return el(
      "tr",
      { "data-model": m.model },
      el("td", { class: "model-name" }, m.model),
      el("td", { class: "num requests" }, m.requests),
      el("td", { class: "num errors" }, m.errors),
      el("td", { class: "num input" }, m.input_tokens),
      el("td", { class: "num output" }, m.output_tokens),
      el("td", { class: "num input-rate" }, rate(inRate)),
      el("td", { class: "num output-rate" }, rate(outRate))
    );
  }

  function errorRow(e) {
    return el(
      "tr",
      { "data-status": e.status },
      el("td", {}, time(e.at_ms)),
      el("td", { class: "id" }, e.id),
      el("td", {}, e.endpoint),
      el("td", { class: "model-name" }, e.model),
      el("td", {}, e.backend),
      el("td", { class: "num status" }, e.status + (e.cut ? " cut" : "")),
      el("td", { class: "reason" }, e.reason)
    );
  }

  function render(doc) {
    const recent = doc.recent || { requests: 0, errors: 0, models: [], errors_recent: [] };
    const before = previous && new Map(previous.recent.models.map((m) => [m.model, m]));
    const seconds = previous ? (doc.now_ms - previous.now_ms) / 1000 : 0;

    setText("version", doc.version);
    setText("generation", doc.generation);
    setText("in-flight", doc.in_flight);
    setText("queued", doc.queue.depth);
    setText("requests", recent.requests);
    setText("errors", recent.errors);
    let outRate = null;
    if (previous && seconds > 0) {
      const sum = (models) => models.reduce((n, m) => n + m.output_tokens, 0);
      outRate = (sum(recent.models) - sum(previous.recent.models)) / seconds;
    }
    setText("token-rate", rate(outRate));

    $("backends").tBodies[0].replaceChildren(...doc.backends.map(backendRow));
    const models = recent.models.filter((m) => m.model !== "");
    $("models").tBodies[0].replaceChildren(
      ...(models.length ? models.map((m) => modelRow(m, before, seconds)) : [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no requests yet"))])
    );

    $("plugins").replaceChildren(
      ...doc.plugins.map((name, i) => {
        const contract = (doc.contracts || []).find((c) => c.plugin === name);
        return el("li", { "data-plugin": name }, name, contract && contract.contract ? el("span", { class: "muted" }, " (contract " + contract.contract + ")") : null);
      })
    );
    const reload = doc.last_reload;
    const lr = $("last-reload");
    if (!reload) {
      lr.className = "muted";
      lr.textContent = "none since start";
    } else {
      lr.className = reload.ok ? "good" : "bad";
      lr.textContent = (reload.ok ? "ok" : "failed") + " at " + time(reload.at * 1000) + " (" + reload.took_ms + " ms): " + reload.message;
    }
    const shadow = $("shadow");
    shadow.hidden = !doc.shadow;
    if (doc.shadow) {
      shadow.textContent = "Shadow chain " + doc.shadow.plugins.join(" → ") + ": " + doc.shadow.agreed + " agreed, " +
        doc.shadow.differed + " differed, " + doc.shadow.failed + " failed, " + doc.shadow.dropped + " dropped";
    }

    const q = doc.queue;
    setText("queue", q.depth + " waiting of at most " + q.max_queue + "; waits p50 " + q.wait_p50_ms + " ms, p99 " + q.wait_p99_ms +
      " ms; refused " + (q.refused_full + q.refused_timed_out) + " (full " + q.refused_full + ", timed out " + q.refused_timed_out + ")");

    const errors = recent.errors_recent;
    $("recent-errors").tBodies[0].replaceChildren(
      ...(errors.length ? errors.map(errorRow) : [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "none"))])
    );

    previous = doc;
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
    $("status").hidden = false;
    connection("live", "live · updated " + time(doc.now_ms) + " · generation " + doc.generation);
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, interval);
  }

  function askForKey(message) {
    clearTimeout(timer);
    $("login").hidden = false;
    $("status").hidden = true;
    setText("login-message", message);
    connection("key", "admin key needed");
    $("key").focus();
  }

  async function refresh() {
    const key = sessionStorage.getItem(KEY);
    const headers = key ? { Authorization: "Bearer " + key } : {};
    let response;
    try {
      response = await fetch(STATUS, { headers, cache: "no-store", credentials: "omit", redirect: "error" });
    } catch (e) {
      connection("down", "llamagate did not answer (" + e.message + "); trying again");
      return schedule();
    }
    if (response.status === 401) {
      if (key) sessionStorage.removeItem(KEY);
      return askForKey(key ? "That key was refused." : "");
    }
    if (!response.ok) {
      connection("down", "status answered " + response.status + "; trying again");
      return schedule();
    }
    try {
      render(await response.json());
    } catch (e) {
      connection("down", "could not show the status (" + e.message + ")");
    }
    schedule();
  }

  document.addEventListener("DOMContentLoaded", () => {
    setText("interval", interval >= 1000 ? interval / 1000 + " s" : interval + " ms");
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY, key);
      $("key").value = "";
      $("login").hidden = true;
      connection("loading", "loading…");
      refresh();
    });
    refresh();
  });
})();
