"""The live status page the admin endpoint serves at `/`: one self-contained HTML document (its
style and script inline, nothing fetched but `/status`), which redraws itself from `/status`
every second.
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
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 12px; text-align: left; }
.up { color: #070; } .down, .ejected { color: #b00; } #error { color: #b00; }
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
function cell(row, text, cls) {
  const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls;
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
      const title = document.createElement("h2");
      title.textContent =
        `pool ${pool.pool} (${pool.balance}): ${pool.healthy} healthy, ${pool.sessions} sessions`;
      const table = document.createElement("table");
      table.className = "pool";
      table.dataset.pool = pool.pool;
      const head = table.createTHead().insertRow();
      for (const name of ["server", "health", "sessions", "total", "failures", "note"]) {
        const th = document.createElement("th"); th.textContent = name; head.appendChild(th);
      }
      for (const s of pool.servers) {
        const row = table.insertRow();
        row.dataset.server = s.server;
        cell(row, s.server); cell(row, s.health, s.health); cell(row, s.sessions);
        cell(row, s.sessions_total); cell(row, s.failures_total);
        cell(row, s.listed ? s.check_problem : "removed; finishing its sessions");
      }
      pools.append(title, table);
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
