// Fluxgate console: the few things a server-rendered page cannot do on its own.
// Hand-written, no dependencies. Nothing here holds a token: the session is an HttpOnly cookie.
"use strict";

// Keep the session alive while the page is open and visible (the server renews the token).
(function keepalive() {
  const every = Math.max(10, Number(document.body.dataset.keepalive || 0)) * 1000;
  if (!document.body.dataset.keepalive) return;
  setInterval(async () => {
    if (document.visibilityState !== "visible") return;
    try {
      const r = await fetch("/console/session", { credentials: "same-origin" });
      if (r.redirected || r.status === 401) location.assign("/console/login");
    } catch (_) { /* offline for a moment: try again next time */ }
  }, every);
})();

// Live messages of a channel (Server-Sent Events).
(function live() {
  const table = document.getElementById("live");
  if (!table) return;
  const state = document.getElementById("live-state");
  const body = table.querySelector("tbody");
  const source = new EventSource(table.dataset.src);
  const cell = (tr, text) => { const td = document.createElement("td"); td.textContent = text == null ? "" : String(text); tr.appendChild(td); };
  source.addEventListener("open", () => { state.textContent = "live: new messages appear below"; state.className = "hint ok"; });
  source.addEventListener("error", () => { state.textContent = "disconnected; reconnecting…"; state.className = "error"; });
  source.addEventListener("message", (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch (_) { return; }
    const records = Array.isArray(m.senml) && m.senml.length ? m.senml : [{ n: "", v: m.payload != null ? m.payload : (m.payload_bytes + " bytes") }];
    for (const r of records) {
      const tr = document.createElement("tr");
      tr.className = "live-row";
      cell(tr, m.received_at);
      cell(tr, m.publisher);
      cell(tr, m.subtopic);
      cell(tr, m.protocol);
      cell(tr, r.n);
      cell(tr, r.v != null ? r.v : (r.vs != null ? r.vs : (r.vb != null ? r.vb : r.vd)));
      cell(tr, r.u);
      cell(tr, r.t);
      body.insertBefore(tr, body.firstChild);
    }
    while (body.rows.length > 200) body.deleteRow(body.rows.length - 1);
  });
})();

// A chart that could not be drawn says why, in words.
(function chart() {
  const img = document.getElementById("chart");
  if (!img) return;
  img.addEventListener("error", async () => {
    const box = document.getElementById("chart-error");
    try {
      const r = await fetch(img.src, { credentials: "same-origin" });
      const j = await r.json();
      box.textContent = j.message || ("the chart failed: HTTP " + r.status);
    } catch (e) { box.textContent = "the chart failed: " + e; }
    box.hidden = false;
    img.hidden = true;
  });
})();

// A CSV file chosen for bulk creation is read into the text box (the form posts text).
(function csv() {
  const input = document.getElementById("csv-file");
  if (!input) return;
  input.addEventListener("change", () => {
    const f = input.files && input.files[0];
    if (!f) return;
    if (f.size > 512 * 1024) { alert("The file is larger than 512 KiB; split it."); return; }
    const reader = new FileReader();
    reader.onload = () => {
      const box = document.getElementById("csv");
      box.value = reader.result;
      box.dataset.loaded = f.name;
    };
    reader.readAsText(f);
  });
})();
