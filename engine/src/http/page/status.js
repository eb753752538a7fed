// The live status page: polls /api/v1/status every second and updates the
// tables and plots in place. No libraries; canvas drawing by hand.
"use strict";

const POLL_MS = 1000;
const HISTORY_POINTS = 300;
const COLORS = { received: "#2f6fde", delivered: "#1c9b4a", failed: "#d33" };
const history = [];

function fmt(n, digits) {
  return Number(n).toFixed(digits === undefined ? 1 : digits);
}

function ms(x) {
  return x >= 1000 ? fmt(x / 1000, 2) + " s" : fmt(x, 2) + " ms";
}

function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? d + "d " : "") + h + "h " + m + "m " + (s % 60) + "s";
}

function fillRows(tbody, rows) {
  while (tbody.rows.length > rows.length) tbody.deleteRow(-1);
  rows.forEach((cells, i) => {
    const row = tbody.rows[i] || tbody.insertRow();
    while (row.cells.length > cells.length) row.deleteCell(-1);
    cells.forEach((text, j) => {
      const cell = row.cells[j] || row.insertCell();
      if (cell.textContent !== String(text)) cell.textContent = text;
    });
  });
}

function drawRates(canvas) {
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 30;
  g.clearRect(0, 0, w, h);
  let max = 1;
  for (const p of history) max = Math.max(max, p.received, p.delivered, p.failed);
  g.strokeStyle = "#ccd";
  g.fillStyle = "#555";
  g.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = h - pad - (h - 2 * pad) * i / 4;
    g.beginPath(); g.moveTo(pad, y); g.lineTo(w - 5, y); g.stroke();
    g.fillText(fmt(max * i / 4, max < 8 ? 1 : 0), 2, y + 4);
  }
  for (const key of ["received", "delivered", "failed"]) {
    g.strokeStyle = COLORS[key];
    g.lineWidth = 2;
    g.beginPath();
    history.forEach((p, i) => {
      const x = pad + (w - pad - 5) * i / (HISTORY_POINTS - 1);
      const y = h - pad - (h - 2 * pad) * p[key] / max;
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  }
  g.lineWidth = 1;
}

function drawHistogram(canvas, latency) {
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 22;
  g.clearRect(0, 0, w, h);
  const buckets = latency.buckets;
  let prev = 0, max = 1;
  const counts = buckets.map(b => { const c = b.count - prev; prev = b.count; return c; });
  counts.push(latency.count - prev);
  for (const c of counts) max = Math.max(max, c);
  const bw = (w - 10) / counts.length;
  g.font = "9px sans-serif";
  counts.forEach((c, i) => {
    const bh = (h - 2 * pad) * c / max;
    g.fillStyle = "#2f6fde";
    g.fillRect(5 + i * bw + 1, h - pad - bh, bw - 2, bh);
    g.fillStyle = "#555";
    const le = i < buckets.length ? buckets[i].le : Infinity;
    const label = le === Infinity ? "+Inf" : le < 1 ? (le * 1000) + "ms" : le + "s";
    if (i % 2 === 0) g.fillText(label, 5 + i * bw, h - 8);
    if (c > 0) g.fillText(String(c), 5 + i * bw + 2, h - pad - bh - 2);
  });
}

function plots(container, shards, key) {
  shards.forEach((s, i) => {
    let plot = container.children[i];
    if (!plot) {
      plot = document.createElement("div");
      plot.className = "plot";
      const canvas = document.createElement("canvas");
      canvas.width = 420; canvas.height = 150;
      const caption = document.createElement("span");
      plot.appendChild(canvas);
      plot.appendChild(caption);
      container.appendChild(plot);
    }
    const l = s[key];
    plot.children[1].textContent = "shard " + s.shard + ": " + l.count + " samples, p50 " + ms(l.p50_ms) +
      ", p99 " + ms(l.p99_ms) + ", max " + ms(l.max_ms);
    drawHistogram(plot.children[0], l);
  });
  while (container.children.length > shards.length) container.removeChild(container.lastChild);
}

function render(doc) {
  document.getElementById("version").textContent = "version " + doc.version;
  document.getElementById("uptime").textContent = "up " + duration(doc.uptime_seconds);
  const t = doc.total, c = t.counters;
  fillRows(document.querySelector("#totals tbody"), [
    ["Shards", doc.shard_count],
    ["Received messages", c.messages_received],
    ["Delivered recipients", c.delivered],
    ["Failed recipients", c.failed],
    ["Transient failures", c.transient_failures],
    ["Received per second", fmt(t.rates.received_per_second)],
    ["Delivered per second", fmt(t.rates.delivered_per_second)],
    ["Active queue", t.queues.active],
    ["Delayed queue", t.queues.delayed],
    ["Inbound connections", c.inbound_connections],
    ["Outbound connections", c.outbound_connections],
  ]);
  fillRows(document.querySelector("#shards tbody"), doc.shards.map(s => [
    s.shard, s.counters.messages_received, s.counters.delivered,
    fmt(s.rates.received_per_second), fmt(s.rates.delivered_per_second),
    s.queues.active, s.queues.delayed, s.counters.inbound_connections, s.counters.outbound_connections,
    ms(s.accept_latency.p50_ms), ms(s.accept_latency.p99_ms),
    ms(s.delivery_latency.p50_ms), ms(s.delivery_latency.p99_ms),
  ]));
  fillRows(document.querySelector("#queues tbody"), doc.queues.map(q => [
    q.binding_group, q.binding, q.domain, q.active, q.delayed, q.suspended ? "suspended" : "",
  ]));
  history.push({
    received: t.rates.received_per_second,
    delivered: t.rates.delivered_per_second,
    failed: t.rates.failed_per_second,
  });
  while (history.length > HISTORY_POINTS) history.shift();
  drawRates(document.getElementById("rates"));
  plots(document.getElementById("accept"), doc.shards, "accept_latency");
  plots(document.getElementById("delivery"), doc.shards, "delivery_latency");
}

async function poll() {
  const state = document.getElementById("state");
  try {
    const response = await fetch("/api/v1/status", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    state.textContent = "live, updated " + new Date().toLocaleTimeString();
    state.className = "state ok";
  } catch (e) {
    state.textContent = "no answer (" + e.message + "), retrying";
    state.className = "state error";
  }
  setTimeout(poll, POLL_MS);
}

poll();
