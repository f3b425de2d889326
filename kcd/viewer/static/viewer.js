// kcd run viewer: follows a live run's events (Server-Sent Events) and refreshes the page's
// sections from their server-rendered fragments. No framework, no build step.
"use strict";

(function () {
  const main = document.getElementById("run");
  if (!main || main.dataset.live !== "true") return;
  const base = "/ui/runs/" + encodeURIComponent(main.dataset.runId);
  const list = document.getElementById("events");
  // the timeline's time scale the page was opened with, kept by every refresh
  const axis = new URLSearchParams(window.location.search).get("axis");
  const query = axis ? "?axis=" + encodeURIComponent(axis) : "";
  const refreshOn = new Set(["turn.start", "llm.attempt", "llm.response", "tool.call", "tool.result", "policy"]);
  let timer = null;

  function refresh(names) {
    for (const name of names.filter((n) => document.getElementById(n))) {
      fetch(base + "/fragment/" + name + query, { credentials: "same-origin" })
        .then((r) => (r.ok ? r.text() : null))
        .then((html) => {
          const section = document.getElementById(name);
          if (html === null || !section) return;
          section.innerHTML = html; // server-rendered and escaped
          const state = section.querySelector(":scope > .replay-report");
          if (state) Object.assign(section.dataset, state.dataset); // data-divergences once written
        })
        .catch(() => {});
    }
  }

  function soon() {
    if (timer === null) {
      timer = setTimeout(() => { timer = null; refresh(["timeline", "tools", "conversation"]); }, 250);
    }
  }

  // The fields a line shows come from the page (pages.EVENT_KEYS), as do the server's lines.
  const keys = (list.dataset.keys || "").split(" ").filter((k) => k);

  function span(cls, text) {
    const s = document.createElement("span");
    s.className = cls;
    s.textContent = text; // event data is the model's and the tools': text, never markup
    return s;
  }

  function append(ev) {
    if (list.querySelector('li[data-seq="' + ev.seq + '"]')) return;
    const li = document.createElement("li");
    li.dataset.seq = String(ev.seq);
    li.dataset.type = ev.type;
    const d = ev.data || {};
    const brief = keys.filter((k) => d[k] !== undefined && d[k] !== null)
      .map((k) => k + "=" + (typeof d[k] === "string" ? d[k] : JSON.stringify(d[k]))).join(" ");
    li.append(span("seq", String(ev.seq)), " ", span("type", ev.type), " ", span("brief", brief));
    list.appendChild(li);
  }

  function ended(status) {
    main.dataset.live = "false";
    if (status) {
      main.dataset.status = status;
      const span = document.getElementById("run-status");
      if (span) { span.textContent = status; span.className = "status status-" + status; }
    }
    refresh(["summary", "timeline", "tools", "conversation", "diff", "files", "replay"]);
  }

  const source = new EventSource(base + "/events?since=" + (main.dataset.lastSeq || "0"));
  source.onmessage = (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch (e) { return; }
    append(ev);
    if (ev.type === "run.end") { source.close(); ended((ev.data || {}).status); }
    else if (refreshOn.has(ev.type)) soon();
  };
  source.addEventListener("end", () => { source.close(); if (main.dataset.live === "true") ended(null); });
})();
