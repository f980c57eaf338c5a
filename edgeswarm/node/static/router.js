// The router's live dashboard (edgeswarm/node/dashboard.py, mounted by roles/router.py): polls the router's
// /status and draws its edges per region. The helpers are common.js's, shared with the edge's page.
// Region names and edge URLs come from operators and edges: they reach the DOM as textContent only.
"use strict";

(function () {
  const { bytes, rate, percent, duration, show, cell, fillTable, namedChart, start } = window.edgeswarmDashboard;
  const KEEP_S = 30 * 60; // history kept in the browser, for the charts

  const samples = []; // {t, load: {region: % | null}, share: {region: % | null}}
  const loadChart = namedChart("load-chart", { label: "egress / capacity (%)", size: 60, values: (u, ticks) => ticks.map((v) => v + " %") }, { range: (u, min, max) => [0, Math.max(max || 0, 100)] }, pct);
  const shareChart = namedChart("share-chart", { label: "P2P share (%)", values: (u, ticks) => ticks.map((v) => v + " %") }, { range: [0, 100] }, pct);

  function pct(v) {
    return v === null || v === undefined ? "–" : v.toFixed(1) + " %";
  }
  function hundred(fraction) {
    return fraction === null || fraction === undefined ? null : fraction * 100;
  }

  function record(st) {
    const now = Date.now() / 1000;
    const last = samples[samples.length - 1];
    if (last && st.uptime_s < last.uptime) samples.length = 0; // the router restarted: a new history
    const load = {};
    const share = {};
    for (const [name, r] of Object.entries(st.region_totals || {})) {
      load[name] = hundred(r.load);
      share[name] = hundred(r.p2p_share);
    }
    samples.push({ t: now, uptime: st.uptime_s, load, share });
    while (samples.length && samples[0].t < now - KEEP_S) samples.shift();
  }

  function series(names, field) {
    return [samples.map((s) => s.t), ...names.map((name) => samples.map((s) => (s[field][name] === undefined ? null : s[field][name])))];
  }

  function renderRouter(st) {
    const edges = st.edges || [];
    const up = edges.filter((e) => e.state === "up").length;
    show("uptime", duration(st.uptime_s), st.uptime_s);
    show("edges-up", String(up), up);
    show("edges-known", String(edges.length), edges.length);
    show("poll-interval", "every " + st.poll_interval_s + " s, timeout " + st.poll_timeout_s + " s", st.poll_interval_s);
    const t = st.thresholds || {};
    show("thresholds", t.down_after + " failed / " + t.up_after + " good polls in a row");
  }

  function renderRegions(st) {
    const totals = st.region_totals || {};
    const rows = [];
    for (const name of Object.keys(totals).sort()) {
      const r = totals[name];
      const row = document.createElement("tr");
      row.setAttribute("data-region", name);
      cell(row, name);
      cell(row, r.edges_up + " of " + r.edges, r.edges_up);
      cell(row, rate(r.egress_Bps), r.egress_Bps);
      cell(row, rate(r.capacity_Bps), r.capacity_Bps);
      cell(row, percent(r.load), r.load);
      cell(row, String(r.peers), r.peers);
      cell(row, percent(r.p2p_share), r.p2p_share);
      cell(row, bytes(r.bytes_from_edge), r.bytes_from_edge);
      cell(row, bytes(r.bytes_from_peers), r.bytes_from_peers);
      rows.push(row);
    }
    fillTable("regions", rows);
    const names = Object.keys(totals).sort();
    loadChart.draw(names, series(names, "load"));
    shareChart.draw(names, series(names, "share"));
  }

  function renderEdges(st) {
    const rows = [];
    for (const e of st.edges || []) {
      const p = e.polled || {};
      const row = document.createElement("tr");
      row.setAttribute("data-url", e.url);
      row.setAttribute("data-region", e.region);
      row.className = "edge " + (["up", "down"].includes(e.state) ? e.state : "unknown");
      cell(row, e.region);
      cell(row, e.url);
      cell(row, e.state, e.state);
      cell(row, e.reason, e.reason);
      cell(row, "for " + duration(e.since_s), e.since_s);
      cell(row, rate(e.egress_Bps), e.egress_Bps);
      cell(row, rate(e.capacity_Bps), e.capacity_Bps);
      cell(row, percent(e.load), e.load);
      cell(row, p.peers === null || p.peers === undefined ? (e.polled && !p.regions ? "no tracker" : "–") : String(p.peers), p.peers);
      cell(row, bytes(p.cache_bytes), p.cache_bytes);
      cell(row, p.cache_max_bytes ? bytes(p.cache_max_bytes) : e.polled ? "no quota" : "–", p.cache_max_bytes);
      cell(row, p.at ? Math.max(0, Math.round(Date.now() / 1000 - p.at)) + " s ago" : "never", p.at);
      rows.push(row);
    }
    fillTable("edges", rows);
  }

  function render(st) {
    record(st);
    show("role", st.role || "router");
    renderRouter(st);
    renderRegions(st);
    renderEdges(st);
  }

  start(render, () => {
    loadChart.resize();
    shareChart.resize();
  });
})();
