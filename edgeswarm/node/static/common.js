// Helpers both dashboards share (edgeswarm/node/dashboard.py): the edge's page (dashboard.js) and the router's (router.js).
// Loaded first; exposes one frozen global, `edgeswarmDashboard`. No build step, no framework: uPlot (vendored,
// global `uPlot`) for charts, the DOM API for the rest. Every string that comes from /status (region names, paths,
// content ids, URLs) is set with textContent, never parsed as HTML, and nothing here evaluates code (strict CSP).
"use strict";

window.edgeswarmDashboard = (function () {
  const POLL_MS = 2000;
  const TIMEOUT_MS = 5000;
  const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600]; // x ticks: whole seconds, never fractions
  const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
  const CHART_HEIGHT = 220;

  // -- the status URL: the page's meta tag, relative to the page; a ?token= on the page goes along ----------
  function statusLocation() {
    const meta = document.querySelector('meta[name="edgeswarm-status"]');
    const url = new URL(meta ? meta.content : "status", document.baseURI);
    const token = new URLSearchParams(window.location.search).get("token");
    if (token) url.searchParams.set("token", token);
    return url;
  }

  // -- formatting ------------------------------------------------------------------------------------------
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let i = 0;
    let v = n;
    while (Math.abs(v) >= 1000 && i < units.length - 1) {
      v /= 1000;
      i += 1;
    }
    return (i === 0 ? String(Math.round(v)) : v.toFixed(2)) + " " + units[i];
  }
  function rate(n) {
    return n === null || n === undefined ? "–" : bytes(n) + "/s";
  }
  function percent(fraction) {
    return fraction === null || fraction === undefined || !isFinite(fraction) ? "–" : (fraction * 100).toFixed(1) + " %";
  }
  function clock(t) {
    const d = new Date(t * 1000);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
  }
  const TIME_AXIS = { space: 70, incrs: TIME_INCRS, values: (u, ticks) => ticks.map(clock) };
  function plural(n, noun) {
    return n + " " + noun + (n === 1 ? "" : "s");
  }
  function duration(s) {
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const parts = d ? [d + " d", h + " h"] : h ? [h + " h", m + " min"] : [m + " min", Math.floor(s % 60) + " s"];
    return parts.join(" ");
  }
  function sum(values) {
    return values.reduce((a, b) => a + b, 0);
  }

  // -- DOM: text only --------------------------------------------------------------------------------------
  // `value` (the raw figure from /status) goes into data-value, so what is shown can be checked against /status.
  function show(id, text, value) {
    const el = document.getElementById(id);
    el.textContent = text;
    if (value === undefined || value === null) el.removeAttribute("data-value");
    else el.setAttribute("data-value", String(value));
  }
  function cell(row, text, value, title) {
    const td = document.createElement("td");
    td.textContent = text;
    if (value !== undefined && value !== null) td.setAttribute("data-value", String(value));
    if (title) td.title = title;
    row.appendChild(td);
    return td;
  }
  function fillTable(id, rows) {
    const body = document.getElementById(id).tBodies[0];
    body.replaceChildren(...rows);
  }
  function health(state, text) {
    const el = document.getElementById("health");
    el.textContent = text;
    el.setAttribute("data-state", state);
    el.className = "badge " + state;
  }

  // -- charts ----------------------------------------------------------------------------------------------
  function chartWidth(id) {
    return Math.max(320, document.getElementById(id).clientWidth - 8);
  }

  // A line chart with one series per name (regions, edges), rebuilt when the names change; `axis` is the y axis.
  function namedChart(id, axis, scale, format) {
    let chart = null;
    let key = "";
    function draw(names, data) {
      const k = JSON.stringify(names);
      if (k !== key) {
        if (chart) chart.destroy();
        chart = null;
        key = k;
        if (!names.length) return;
        const series = [{}].concat(names.map((name, i) => ({ label: name, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true, value: (u, v) => format(v) })));
        chart = new uPlot({ width: chartWidth(id), height: CHART_HEIGHT, series, scales: { y: scale }, axes: [TIME_AXIS, axis] }, data, document.getElementById(id));
      } else if (chart) {
        chart.setData(data);
      }
    }
    function resize() {
      if (chart) chart.setSize({ width: chartWidth(id), height: CHART_HEIGHT });
    }
    return { draw, resize };
  }

  // -- polling ---------------------------------------------------------------------------------------------
  async function fetchStatus(url) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const resp = await fetch(url, { cache: "no-store", signal: abort.signal, headers: { Accept: "application/json" } });
      if (!resp.ok) {
        const why = (await resp.text()).trim().slice(0, 200);
        const hint = resp.status === 401 ? "; add ?token=… to this page's URL" : "";
        health("down", "down: /status answered " + resp.status + (why ? " (" + why + ")" : "") + hint);
        return null;
      }
      return await resp.json();
    } catch (err) {
      const why = err && err.name === "AbortError" ? "no answer from /status within " + TIMEOUT_MS / 1000 + " s" : "cannot reach /status (" + err + ")";
      health("down", "down: " + why);
      return null;
    } finally {
      clearTimeout(timer);
    }
  }

  // Poll /status every POLL_MS and hand each answer to `render`; #polls counts polls once drawn.
  function start(render, onResize) {
    const url = statusLocation();
    let polls = 0;
    async function poll() {
      const st = await fetchStatus(url);
      polls += 1;
      setTimeout(poll, POLL_MS);
      if (st) {
        render(st); // a bug in here is thrown, so it shows on the browser's console; the next poll is already set
        health("up", "up");
        show("updated", clock(Date.now() / 1000));
      }
      show("polls", String(polls), polls); // after the page shows this poll's figures
    }
    show("node", window.location.host);
    show("interval", String(POLL_MS / 1000));
    window.addEventListener("resize", onResize);
    poll();
  }

  return Object.freeze({ COLOURS, TIME_AXIS, CHART_HEIGHT, bytes, rate, percent, clock, plural, duration, sum, show, cell, fillTable, chartWidth, namedChart, start });
})();
