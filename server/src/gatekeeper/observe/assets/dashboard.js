// The mexec dashboard: one snapshot of the farm per server-sent event,
// rendered into the tables and the chart. No libraries, no network but
// the gatekeeper's own.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const withToken = (path) => token ? `${path}?token=${encodeURIComponent(token)}` : path;

function text(value) {
  const span = document.createElement("span");
  span.textContent = value;
  return span.innerHTML;
}

function secs(ms) {
  const s = ms / 1000;
  if (s < 10) return s.toFixed(2) + " s";
  if (s < 120) return s.toFixed(0) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function fill(id, rows) {
  document.querySelector(`#${id} tbody`).innerHTML = rows.join("");
}

function cells(values, cls) {
  return `<tr${cls ? ` class="${cls}"` : ""}>` + values.map(([v, c]) => `<td${c ? ` class="${c}"` : ""}>${v}</td>`).join("") + "</tr>";
}

function exitText(job) {
  if (job.outcome === "exit_zero") return "0";
  if (job.outcome === "signal") return `signal ${job.status - 128}`;
  if (job.outcome === "limit") return `limit (${job.status})`;
  if (job.outcome === "lost") return "lost";
  return String(job.status);
}

function render(s) {
  const slots = s.nodes.reduce((a, n) => a + n.offered, 0);
  const running = s.nodes.reduce((a, n) => a + n.running, 0);
  document.getElementById("summary").textContent =
    `${s.nodes.length} nodes · ${running}/${slots} slots in use · ${s.queued} queued · gatekeeper ${s.version}`;
  fill("nodes", s.nodes.map((n) => cells([
    [text(n.name)],
    [n.offered === n.slots ? n.slots : `${n.offered} of ${n.slots}`],
    [n.running], [n.queued],
    [n.load.toFixed(2)], [n.foreign_load.toFixed(2)],
    [`${(n.mem_available_mib / 1024).toFixed(1)} GiB free`],
    [n.draining ? "draining" : (n.desktop ? text(n.offer_reason || "desktop") : "up"), n.draining ? "draining" : ""],
    [text(n.version)],
  ])));
  const usage = Object.fromEntries(s.usage.map((u) => [u.user, u]));
  fill("users", s.users.map((u) => {
    const h = usage[u.user] || { jobs: 0, slot_seconds: 0, cpu_seconds: 0, queue_wait_seconds: 0 };
    return cells([[text(u.user)], [u.running], [u.queued], [(u.share * 100).toFixed(0) + " %"],
      [h.jobs], [h.slot_seconds.toFixed(1)], [h.cpu_seconds.toFixed(1)], [h.queue_wait_seconds.toFixed(1)]]);
  }));
  document.getElementById("running-count").textContent = `(${s.running.length})`;
  fill("running", s.running.map((j) => cells([
    [text(j.user)], [text(j.node)], [text(`${j.program} ${j.args}`), "cmd"],
    [secs(s.now_unix_ms - j.started_unix_ms)], [secs(j.queue_wait_ms)],
  ])));
  document.getElementById("finished-count").textContent = `(last ${s.finished.length})`;
  fill("finished", s.finished.map((j) => cells([
    [text(j.user)], [text(j.node)], [text(`${j.program} ${j.args}`), "cmd"],
    [exitText(j), "exit"], [secs(j.duration_ms)], [secs(j.queue_wait_ms)],
    [new Date(j.ended_unix_ms).toLocaleTimeString()],
  ], j.outcome === "exit_zero" ? "" : "bad")));
  chart(s.history, s.now_unix_ms);
}

function chart(points, now) {
  const svg = document.getElementById("chart");
  const W = 900, H = 180, span = 15 * 60 * 1000;
  const top = Math.max(1, ...points.map((p) => Math.max(p.slots, p.in_use, p.queued)));
  const x = (t) => W - ((now - t) / span) * W;
  const y = (v) => H - 4 - (v / top) * (H - 12);
  const line = (key, color, fill) => {
    if (points.length === 0) return "";
    const d = points.map((p, i) => `${i ? "L" : "M"}${x(p.at_unix_ms).toFixed(1)},${y(p[key]).toFixed(1)}`).join("");
    const area = fill ? `<path d="${d}L${x(points[points.length - 1].at_unix_ms)},${H}L${x(points[0].at_unix_ms)},${H}Z" fill="${color}" opacity=".25"/>` : "";
    return `${area}<path d="${d}" fill="none" stroke="${color}" stroke-width="2" vector-effect="non-scaling-stroke"/>`;
  };
  const css = getComputedStyle(document.documentElement);
  svg.innerHTML =
    `<text x="4" y="14" fill="${css.getPropertyValue("--dim")}" font-size="12">${top}</text>` +
    line("slots", css.getPropertyValue("--slots"), false) +
    line("in_use", css.getPropertyValue("--used"), true) +
    line("queued", css.getPropertyValue("--queued"), false);
}

function connect() {
  const badge = document.getElementById("live");
  const source = new EventSource(withToken("events"));
  source.addEventListener("snapshot", (e) => {
    badge.textContent = "live";
    badge.className = "badge on";
    render(JSON.parse(e.data));
  });
  // EventSource reconnects on its own; the badge says when it is down.
  source.onerror = () => { badge.textContent = "offline"; badge.className = "badge"; };
}

connect();
