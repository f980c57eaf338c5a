// edgeswarm's live dashboard for an edge (edgeswarm/node/dashboard.py): polls the node's /status and draws it.
// The helpers (formatting, text-only DOM, polling, charts) are common.js's, shared with the router's page.
// Every string that comes from /status (region names, paths, content ids, URLs) is set with textContent,
// never parsed as HTML, and nothing here evaluates code: the page runs under a strict CSP.
"use strict";

(function () {
  const { COLOURS, TIME_AXIS, CHART_HEIGHT, bytes, rate, percent, plural, duration, sum, show, cell, fillTable, chartWidth, namedChart, start } =
    window.edgeswarmDashboard;
  const KEEP_S = 30 * 60; // history kept in the browser, for the charts
  const ERROR_WINDOW_S = 60; // the error rate is over this much of the history
  const OWN_ENDPOINTS = new Set(["status", "dashboard"]); // what this page causes: left out of the error rate

  const samples = []; // {t, sent, answers, errors, share: {region: fraction|null}, egress: B/s|null, capacity}
  const shareChart = namedChart("share-chart", { label: "P2P share (%)", values: (u, ticks) => ticks.map((v) => v + " %") }, { range: [0, 100] }, (v) =>
    v === null ? "–" : v.toFixed(1) + " %",
  );
  let egressChart = null;

  // -- figures derived from /status ------------------------------------------------------------------------
  function answers(st) {
    let all = 0;
    let errors = 0;
    for (const [endpoint, byStatus] of Object.entries(st.responses_by_endpoint || {})) {
      if (OWN_ENDPOINTS.has(endpoint)) continue;
      for (const [code, n] of Object.entries(byStatus)) {
        all += n;
        if (code.startsWith("5")) errors += n;
      }
    }
    return { all, errors };
  }
  function events(st, name) {
    return sum(Object.entries(st.events || {}).filter(([k]) => k === name || k.startsWith(name + ":")).map(([, n]) => n));
  }
  function regionsOf(st) {
    return st.p2p && st.p2p.regions ? st.p2p.regions : {};
  }

  function record(st) {
    // one worker's own figures while the primary, which adds up every worker's, did not answer: not the edge's; taken,
    // they reset the history and drew a false burst of egress at the next whole answer
    if (st.workers && st.workers.primary === "unanswered") return;
    const now = Date.now() / 1000;
    const sent = sum(Object.values(st.bytes_sent || {}));
    const { all, errors } = answers(st);
    const last = samples[samples.length - 1];
    if (last && (sent < last.sent || st.uptime_s < last.uptime)) samples.length = 0; // the node restarted: a new history
    const prev = samples[samples.length - 1];
    const egress = prev && now > prev.t ? (sent - prev.sent) / (now - prev.t) : null;
    const share = {};
    for (const [name, row] of Object.entries(regionsOf(st))) share[name] = row.p2p_share ?? null;
    samples.push({ t: now, uptime: st.uptime_s, sent, answers: all, errors, share, egress, capacity: st.upload_limit_Bps ?? null });
    while (samples.length && samples[0].t < now - KEEP_S) samples.shift();
  }

  function errorRate() {
    const last = samples[samples.length - 1];
    const first = samples.find((s) => s.t >= last.t - ERROR_WINDOW_S) || last;
    const all = last.answers - first.answers;
    return { rate: all > 0 ? (last.errors - first.errors) / all : null, all };
  }

  // -- panels ----------------------------------------------------------------------------------------------
  function renderHealth(st) {
    show("uptime", duration(st.uptime_s), st.uptime_s);
    const total = sum(Object.values(st.responses || {}));
    const errors = sum(Object.entries(st.responses || {}).filter(([k]) => k.startsWith("5")).map(([, n]) => n));
    show("responses-total", String(total), total);
    show("responses-5xx", String(errors), errors);
    const recent = errorRate();
    show("error-rate", recent.all ? percent(recent.rate) + " of " + recent.all + " answers" : "no answers", recent.rate);
    show("hangups", String(events(st, "client_hangup")), events(st, "client_hangup"));
    show("corrupt", String(events(st, "corrupt_piece")), events(st, "corrupt_piece"));
    show("stale", String(events(st, "stale_manifest")), events(st, "stale_manifest"));
    show("parent", st.parent || "–", st.parent || null);
  }

  function renderEgress(st) {
    const last = samples[samples.length - 1];
    const cap = st.upload_limit_Bps ?? null;
    show("egress-rate", rate(last.egress), last.egress === null ? null : Math.round(last.egress));
    show("capacity", cap ? rate(cap) : "no limit", cap);
    const use = cap && last.egress !== null ? last.egress / cap : null;
    document.getElementById("egress-meter").value = use === null ? 0 : Math.min(use, 1);
    show("egress-use", cap ? percent(use) : "no limit to compare with", use);
    show("sent-client", bytes(st.bytes_sent?.client ?? 0), st.bytes_sent?.client ?? 0);
    show("sent-node", bytes(st.bytes_sent?.node ?? 0), st.bytes_sent?.node ?? 0);
    drawEgress();
  }

  function renderCache(st) {
    const used = st.cache_bytes ?? 0;
    const max = st.cache_max_bytes || null;
    const contents = st.contents || [];
    show("cache-used", bytes(used), used);
    show("cache-max", max ? bytes(max) : "no limit", max);
    document.getElementById("cache-meter").value = max ? Math.min(used / max, 1) : 0;
    show("cache-fill", max ? percent(used / max) : "no quota", max ? used / max : null);
    const count = st.content_count ?? contents.length; // /status lists the first 100 contents by path: count is all of them
    show("cache-entries", String(count), count);
    const held = sum(contents.map((c) => c.held));
    const pieces = sum(contents.map((c) => c.pieces));
    const listed = contents.length < count ? " in the " + contents.length + " files listed" : "";
    show("cache-pieces", held + " of " + pieces + listed, held);
    const lookups = st.cache_lookups || {};
    const looked = (lookups.hit || 0) + (lookups.miss || 0) + (lookups.collapsed || 0);
    show("cache-hits", looked ? percent(lookups.hit / looked) : "no lookups yet", looked ? lookups.hit / looked : null);
    show("cache-evicted", String(st.evicted_pieces ?? 0), st.evicted_pieces ?? 0);
  }

  function renderRegions(st) {
    const regions = regionsOf(st);
    const paths = new Map((st.contents || []).map((c) => [c.id, c.path]));
    const tracker = Boolean(st.p2p);
    const away = st.p2p === null;  // the primary worker, which keeps the tracker, did not answer this time
    const none = away ? "the primary worker, which keeps the tracker, did not answer: no swarm figures this time" : "not a tracker: this node was started without --p2p";
    show("p2p-note", tracker ? plural(st.p2p.peers, "peer") + " in " + plural(st.p2p.contents, "swarm") : none);
    show("share-note", tracker ? "share of the bytes each region's peers report having received that came from peers" : away ? "" : "no P2P share without --p2p");
    const rows = [];
    const swarmRows = [];
    for (const name of Object.keys(regions).sort()) {
      const r = regions[name];
      const swarms = r.swarms || {};
      const row = document.createElement("tr");
      row.setAttribute("data-region", name);
      cell(row, name);
      cell(row, String(r.peers ?? 0), r.peers ?? 0);
      const swarmCount = r.swarm_count ?? Object.keys(swarms).length; // the list holds the largest 100
      cell(row, String(swarmCount), swarmCount);
      cell(row, percent(r.p2p_share), r.p2p_share ?? null);
      cell(row, bytes(r.bytes_from_edge ?? 0), r.bytes_from_edge ?? 0);
      const fromPeers = (r.bytes_from_peers_same_region ?? 0) + (r.bytes_from_peers_other_region ?? 0);
      cell(row, bytes(fromPeers), fromPeers);
      rows.push(row);
      for (const cid of Object.keys(swarms).sort()) {
        const srow = document.createElement("tr");
        srow.setAttribute("data-region", name);
        srow.setAttribute("data-content", cid);
        cell(srow, name);
        cell(srow, paths.get(cid) ?? cid.slice(0, 16) + "…", cid, cid);
        cell(srow, String(swarms[cid]), swarms[cid]);
        swarmRows.push(srow);
      }
    }
    fillTable("regions", rows);
    fillTable("swarms", swarmRows);
    drawShare(Object.keys(regions).sort());
  }

  // -- charts ----------------------------------------------------------------------------------------------
  function drawShare(regions) {
    shareChart.draw(regions, shareData(regions));
  }

  function shareData(regions) {
    const t = samples.map((s) => s.t);
    const lines = regions.map((name) => samples.map((s) => (s.share[name] === null || s.share[name] === undefined ? null : s.share[name] * 100)));
    return [t, ...lines];
  }

  function drawEgress() {
    const t = samples.map((s) => s.t);
    const data = [t, samples.map((s) => s.egress), samples.map((s) => s.capacity)];
    if (egressChart) {
      egressChart.setData(data);
      return;
    }
    const opts = {
      width: chartWidth("egress-chart"),
      height: CHART_HEIGHT,
      series: [
        {},
        { label: "egress", stroke: COLOURS[0], width: 2, value: (u, v) => rate(v) },
        { label: "capacity", stroke: COLOURS[1], width: 1, dash: [6, 4], value: (u, v) => rate(v) },
      ],
      scales: { y: { range: (u, min, max) => [0, Math.max(max || 0, 1)] } },
      axes: [TIME_AXIS, { label: "bytes/s", size: 70, values: (u, ticks) => ticks.map((v) => bytes(v)) }],
    };
    egressChart = new uPlot(opts, data, document.getElementById("egress-chart"));
  }

  function resize() {
    shareChart.resize();
    if (egressChart) egressChart.setSize({ width: chartWidth("egress-chart"), height: CHART_HEIGHT });
  }

  function render(st) {
    record(st);
    show("role", st.role || "node");
    renderHealth(st);
    renderEgress(st);
    renderCache(st);
    renderRegions(st);
  }

  start(render, resize);
})();
