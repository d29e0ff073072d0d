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

// Times: ISO 8601 in the browser's zone, e.g. 2026-12-07T11:15:30.562+01:00.
function localIso(unixSeconds) {
  if (unixSeconds == null || unixSeconds === "" || isNaN(Number(unixSeconds))) return "";
  const d = new Date(Number(unixSeconds) * 1000);
  const pad = (n, w) => String(Math.abs(n)).padStart(w || 2, "0");
  const off = -d.getTimezoneOffset();
  const zone = off === 0 ? "Z" : (off > 0 ? "+" : "-") + pad(Math.trunc(off / 60)) + ":" + pad(off % 60);
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + "T" + pad(d.getHours()) + ":" +
    pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3) + zone;
}
(function times() {
  for (const t of document.querySelectorAll("time[data-local]")) {
    const ms = Date.parse(t.getAttribute("datetime"));
    if (!isNaN(ms)) { t.textContent = localIso(ms / 1000); t.title = t.getAttribute("datetime"); }
  }
  // Date-time pickers hold local time: the server converts with the browser's offset.
  for (const f of document.querySelectorAll("form.search")) {
    if (!f.querySelector('input[type="datetime-local"]') || f.querySelector('input[name="tz"]')) continue;
    const tz = document.createElement("input");
    tz.type = "hidden"; tz.name = "tz"; tz.value = String(new Date().getTimezoneOffset());
    f.appendChild(tz);
  }
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
    let payload = m.payload == null ? (m.payload_bytes + " bytes") : m.payload;
    if (typeof payload === "string") {
      try { const j = JSON.parse(payload); if (j !== null && typeof j === "object") payload = JSON.stringify(j, null, 2); } catch (_) { /* raw text */ }
    }
    const records = Array.isArray(m.senml) && m.senml.length ? m.senml : [{ n: "", v: payload }];
    for (const r of records) {
      const tr = document.createElement("tr");
      tr.className = "live-row";
      cell(tr, localIso(m.received_at));
      cell(tr, m.publisher);
      cell(tr, m.subtopic);
      cell(tr, m.protocol);
      cell(tr, r.n);
      cell(tr, r.v != null ? r.v : (r.vs != null ? r.vs : (r.vb != null ? r.vb : r.vd)));
      cell(tr, r.u);
      cell(tr, localIso(r.t));
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
