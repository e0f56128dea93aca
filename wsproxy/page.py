"""The live status page the admin endpoint serves at `/`: one self-contained HTML document (its
style and script inline, nothing fetched but `/status`), which redraws itself from `/status`
every second.

Invariants:
- Everything it shows comes from the `/status` document: a server's `share` is the proxy's
  figure (in sessions), the weights, drain and rebalancing figures too.
- Text from the document is set as text (`textContent`, attributes), never as HTML.
- Per pool: a table with a bar per server (its sessions against its share of the pool's
  sessions, a mark at the share), and a chart of each server's sessions over the history the
  proxy keeps (`/status` `history`), ending with the figures of this instant.
"""

from __future__ import annotations

from typing import Final

PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>wsproxy status</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 0.8em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 12px; text-align: left;
  white-space: nowrap; }
td[data-field="note"] { white-space: normal; }
.up { color: #070; } .down, .ejected { color: #b00; } #error { color: #b00; }
.badge { font-size: 13px; font-weight: normal; padding: 2px 8px; border-radius: 8px;
  margin-left: 0.5em; }
.badge.rebalancing { background: #fde9b8; } .badge.draining { background: #d9e5f7; }
td.draining { color: #1a4f9c; }
.bar { position: relative; display: inline-block; vertical-align: middle; width: 180px;
  height: 14px; background: #f2f2f2; margin-right: 8px; }
.bar .fill { position: absolute; left: 0; top: 0; bottom: 0; background: #6a9fd8; }
.bar .over { position: absolute; top: 0; bottom: 0; background: #f0b030; }
.bar[data-state="overloaded"] .over { background: #d04030; }
.bar .mark { position: absolute; top: -3px; bottom: -3px; width: 2px; background: #222; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 6px; }
svg.history { display: block; margin-bottom: 0.4em; }
svg.history text { font: 11px system-ui, sans-serif; fill: #666; }
.legend { font-size: 12px; color: #444; margin-bottom: 2em; }
.legend span { margin-right: 1.2em; }
.unlisted { color: #888; }
</style>
</head>
<body>
<h1>wsproxy <span id="version"></span></h1>
<p>Ready: <b id="ready">?</b> <span id="why"></span> &middot; connections: <b id="connections">?</b>
&middot; sessions: <b id="sessions">?</b> &middot; updated <span id="updated">never</span></p>
<p id="workers"></p>
<p id="error"></p>
<div id="pools"></div>
<script>
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];
const colors = new Map();  // server → its colour, kept while the page lives
function color(server) {
  if (!colors.has(server)) colors.set(server, COLORS[colors.size % COLORS.length]);
  return colors.get(server);
}
function element(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
function cell(row, field, text, cls) {
  const td = row.insertCell(); td.dataset.field = field;
  if (text !== undefined) td.textContent = text;
  if (cls) td.className = cls;
  return td;
}
function seconds(value) {
  return value >= 90 ? `${Math.round(value / 60)} min` : `${Math.ceil(value)}s`;
}
function bar(sessions, expected, tolerance, scale) {
  const node = element("div", "bar");
  const at = (value) => `${Math.min(100 * value / scale, 100)}%`;
  let state = "within";
  if (sessions > expected + 1e-9) {
    state = tolerance !== null && sessions > expected * (1 + tolerance) + 1e-9
      ? "overloaded" : "over";
  }
  node.dataset.state = state;
  node.dataset.sessions = sessions;
  node.dataset.expected = expected.toFixed(2);
  const fill = element("div", "fill"); fill.style.width = at(Math.min(sessions, expected));
  const over = element("div", "over");
  over.style.left = at(expected);
  over.style.width = at(Math.max(sessions - expected, 0));
  const mark = element("div", "mark"); mark.style.left = at(expected);
  node.append(fill, over, mark);
  node.title = `${sessions} sessions; share ${expected.toFixed(1)}` +
    (state === "within" ? "" : ` (${state} share)`);
  return node;
}
function weights(s) {
  let text = `${s.weight}`;
  if (typeof s.effective_weight === "number" && s.effective_weight !== s.weight) {
    text += `, effective ${s.effective_weight}`;
  }
  if (typeof s.agent_weight === "number") text += `, agent ${s.agent_weight}`;
  return text;
}
function table(pool) {
  const node = element("table", "pool");
  node.dataset.pool = pool.pool;
  const head = node.createTHead().insertRow();
  for (const name of ["server", "health", "sessions", "balance (sessions / share)", "weight",
                      "drain", "total", "failures", "note"]) {
    head.appendChild(element("th", "", name));
  }
  const tolerance = typeof pool.tolerance === "number" ? pool.tolerance : null;
  const expected = pool.servers.map((s) => s.share);  // in sessions
  const scale = Math.max(1, ...pool.servers.map((s, i) =>
    Math.max(s.sessions, expected[i] * (1 + (tolerance ?? 0)))));
  pool.servers.forEach((s, i) => {
    const row = node.insertRow();
    row.dataset.server = s.server;
    if (!s.listed) row.className = "unlisted";
    const name = cell(row, "server");
    const swatch = element("span", "swatch"); swatch.style.background = color(s.server);
    name.append(swatch, s.server);
    cell(row, "health", s.health, s.health);
    cell(row, "sessions", s.sessions);
    const balance = cell(row, "balance");
    const percent = pool.sessions ? Math.round(100 * expected[i] / pool.sessions) : 0;
    balance.append(bar(s.sessions, expected[i], tolerance, scale),
      `${s.sessions} / ${expected[i].toFixed(1)} (${percent}%)`);
    cell(row, "weight", weights(s));
    if (s.draining) cell(row, "drain", `draining, ${seconds(s.drain_left ?? 0)} left`, "draining");
    else cell(row, "drain", "");
    cell(row, "total", s.sessions_total); cell(row, "failures", s.failures_total);
    const notes = [];
    if (!s.listed) notes.push("removed; finishing its sessions");
    if (s.check_problem) notes.push(s.check_problem);
    if (s.health === "ejected") notes.push(`ejected for ${seconds(s.ejected_for)}`);
    cell(row, "note", notes.join("; "));
  });
  return node;
}
// Each server's sessions over the history, then now: one polyline per server.
function chart(pool, history) {
  const width = 640, height = 120, left = 36, right = 8, top = 8, bottom = 18;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "history");
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.dataset.pool = pool.pool;
  const now = history.time, start = now - history.span;
  const samples = history.samples
    .filter((x) => x.time >= start && x.time <= now && x.pools[pool.pool] !== undefined)
    .map((x) => ({time: x.time, counts: x.pools[pool.pool]}));
  const current = Object.fromEntries(pool.servers.map((s) => [s.server, s.sessions]));
  const points = [...samples, {time: now, counts: current}];
  svg.dataset.samples = samples.length;
  const servers = new Set(pool.servers.map((s) => s.server));
  for (const x of samples) for (const name of Object.keys(x.counts)) servers.add(name);
  let most = 1;
  for (const x of points) for (const n of Object.values(x.counts)) most = Math.max(most, n);
  const px = (t) => left + (width - left - right) * (t - start) / (now - start || 1);
  const py = (n) => top + (height - top - bottom) * (1 - n / most);
  const line = (x1, y1, x2, y2) => {
    const node = document.createElementNS(SVG, "line");
    for (const [k, v] of Object.entries({x1, y1, x2, y2})) node.setAttribute(k, v);
    node.setAttribute("stroke", "#ccc");
    svg.appendChild(node);
  };
  const label = (x, y, text, anchor) => {
    const node = document.createElementNS(SVG, "text");
    node.setAttribute("x", x); node.setAttribute("y", y);
    node.setAttribute("text-anchor", anchor);
    node.textContent = text;
    svg.appendChild(node);
  };
  line(left, py(0), width - right, py(0)); line(left, py(most), width - right, py(most));
  label(left - 4, py(most) + 4, most, "end"); label(left - 4, py(0) + 4, "0", "end");
  label(left, height - 4, `-${seconds(history.span)}`, "start");
  label(width - right, height - 4, "now", "end");
  for (const name of servers) {
    const node = document.createElementNS(SVG, "polyline");
    node.setAttribute("points",
      points.map((x) => `${px(x.time).toFixed(1)},${py(x.counts[name] ?? 0).toFixed(1)}`)
        .join(" "));
    node.setAttribute("fill", "none");
    node.setAttribute("stroke", color(name));
    node.setAttribute("stroke-width", "2");
    node.dataset.server = name;
    node.dataset.counts = points.map((x) => x.counts[name] ?? 0).join(",");
    const title = document.createElementNS(SVG, "title"); title.textContent = name;
    node.appendChild(title);
    svg.appendChild(node);
  }
  const legend = element("div", "legend");
  for (const name of servers) {
    const item = element("span");
    const swatch = element("span", "swatch"); swatch.style.background = color(name);
    item.append(swatch, name);
    legend.appendChild(item);
  }
  return [svg, legend];
}
function title(pool) {
  const node = element("h2", "",
    `pool ${pool.pool} (${pool.balance}): ${pool.healthy} healthy, ${pool.sessions} sessions`);
  if (pool.rebalancing) {
    const moved = pool.rebalance_closes ?? 0;
    node.appendChild(element("span", "badge rebalancing",
      `rebalancing: ${moved} session${moved === 1 ? "" : "s"} moved`));
  }
  const draining = pool.servers.filter((s) => s.draining);
  if (draining.length) {
    node.appendChild(element("span", "badge draining", "draining: " + draining.map((s) =>
      `${s.server} (${seconds(s.drain_left ?? 0)} left)`).join(", ")));
  }
  return node;
}
async function refresh() {
  try {
    const status = await (await fetch("/status", {cache: "no-store"})).json();
    document.getElementById("version").textContent = status.version;
    document.getElementById("ready").textContent = status.ready ? "yes" : "no";
    document.getElementById("why").textContent = status.not_ready_because;
    document.getElementById("connections").textContent = status.connections;
    document.getElementById("sessions").textContent = status.sessions;
    document.getElementById("workers").textContent = status.workers
      ? `${status.workers.length} workers: ` + status.workers.map((w) =>
          `#${w.index} pid ${w.pid ?? "-"}${w.running ? "" : " (not running)"}, ` +
          `${w.sessions} sessions, ${w.restarts} restarts`).join("; ")
      : "";
    const pools = document.getElementById("pools");
    pools.replaceChildren();
    for (const pool of status.pools) {
      const section = element("section", "pool");
      section.dataset.pool = pool.pool;
      section.append(title(pool), table(pool));
      if (status.history) section.append(...chart(pool, status.history));
      pools.appendChild(section);
    }
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    document.getElementById("error").textContent = "";
  } catch (error) {
    document.getElementById("error").textContent = `cannot reach the proxy: ${error}`;
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""
