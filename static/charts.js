// cloudswarm's charts: small line charts on <canvas>, no library, so the
// dashboard and the HTML report work offline. CloudswarmCharts.drawAll(history)
// draws the three standard charts from /stats/history points
// ({t, users, rps, fails, p50, p95, limited?}); the seconds the load generator
// limited (`limited` says why) are shaded, since their figures describe
// cloudswarm rather than the cloud. CloudswarmCharts.drawCompare(base, new,
// prefix) overlays two runs ({label, start, history}) on one axis of seconds
// since each run's start.
(function (root) {
  "use strict";
  var COLORS = { rps: "#3fb68b", fails: "#ff6b6b", p50: "#f2c94c", p95: "#a78bfa", users: "#58a6ff" };
  // A comparison's runs: the baseline muted (and dashed), the new run bright.
  var COMPARE = { base: "#9fb0c0", next: "#f778ba" };
  // The shade of a generator-limited second.
  var LIMITED = "rgba(255,138,61,0.22)";

  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }

  function fmt(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (v >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1);
    return v.toFixed(2).replace(/\.?0+$/, "") || "0";
  }

  function clock(t) {
    var d = new Date(t * 1000);
    return d.toTimeString().slice(0, 8);
  }

  // Draws series [{label, color, values}] against times (unix seconds);
  // `limited[i]` true shades the second ending at times[i].
  function line(canvas, times, series, limited) {
    var dpr = root.devicePixelRatio || 1;
    var w = canvas.clientWidth || 400, h = canvas.clientHeight || 220;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    var ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var css = root.getComputedStyle ? root.getComputedStyle(canvas) : null;
    var fg = (css && css.color) || "#9fb0c0";
    var m = { l: 48, r: 12, t: 22, b: 22 };
    var pw = w - m.l - m.r, ph = h - m.t - m.b;
    var max = 0;
    series.forEach(function (s) { s.values.forEach(function (v) { if (v > max) max = v; }); });
    max = niceMax(max);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = fg;
    ctx.strokeStyle = "rgba(127,140,155,0.25)";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (var g = 0; g <= 4; g++) {
      var y = m.t + ph - (ph * g) / 4;
      ctx.beginPath(); ctx.moveTo(m.l, y + 0.5); ctx.lineTo(m.l + pw, y + 0.5); ctx.stroke();
      ctx.fillText(fmt((max * g) / 4), m.l - 6, y);
    }
    var n = times.length;
    if (n === 0) {
      ctx.textAlign = "center";
      ctx.fillText("no data yet", m.l + pw / 2, m.t + ph / 2);
      return;
    }
    var t0 = times[0], t1 = times[n - 1], span = Math.max(t1 - t0, 1);
    var x = function (t) { return m.l + (pw * (t - t0)) / span; };
    var shaded = 0;
    if (limited) {
      ctx.fillStyle = LIMITED;
      for (var j = 0; j < n; j++) {
        if (!limited[j]) continue;
        var from = j > 0 ? x(times[j - 1]) : m.l, to = n === 1 ? m.l + pw : x(times[j]);
        ctx.fillRect(from, m.t, Math.max(to - from, 2), ph);
        shaded++;
      }
      ctx.fillStyle = fg;
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (var k = 0; k <= 3; k++) {
      var tt = t0 + (span * k) / 3;
      ctx.fillText(clock(tt), Math.min(Math.max(x(tt), m.l + 24), m.l + pw - 24), m.t + ph + 6);
    }
    series.forEach(function (s) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.8;
      ctx.beginPath();
      for (var i = 0; i < n; i++) {
        var px = n === 1 ? m.l + pw : x(times[i]);
        var py = m.t + ph - (ph * (s.values[i] || 0)) / max;
        if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
      }
      if (n === 1) ctx.lineTo(m.l, m.t + ph - (ph * (s.values[0] || 0)) / max);
      ctx.stroke();
    });
    // Legend, with each series' latest value.
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    var lx = m.l;
    series.forEach(function (s) {
      var label = s.label + " " + fmt(s.values[n - 1] || 0);
      ctx.fillStyle = s.color;
      ctx.fillRect(lx, 6, 10, 10);
      ctx.fillStyle = fg;
      ctx.fillText(label, lx + 14, 11);
      lx += ctx.measureText(label).width + 30;
    });
    if (shaded) {
      ctx.fillStyle = LIMITED;
      ctx.fillRect(lx, 6, 10, 10);
      ctx.fillStyle = fg;
      ctx.fillText("generator-limited " + shaded + " s", lx + 14, 11);
    }
  }

  // `90` as `1m30s`.
  function since(s) {
    s = Math.round(s);
    if (s < 60) return s + "s";
    var m = Math.floor(s / 60), r = s % 60;
    if (m < 60) return m + "m" + (r ? r + "s" : "");
    return Math.floor(m / 60) + "h" + (m % 60 ? (m % 60) + "m" : "");
  }

  // Draws series [{label, color, xs, ys}] (xs: seconds since a run's
  // start, each series its own) on one axis from 0 to the longest.
  function overlay(canvas, series) {
    var dpr = root.devicePixelRatio || 1;
    var w = canvas.clientWidth || 400, h = canvas.clientHeight || 220;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    var ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var css = root.getComputedStyle ? root.getComputedStyle(canvas) : null;
    var fg = (css && css.color) || "#9fb0c0";
    var m = { l: 48, r: 12, t: 22, b: 22 };
    var pw = w - m.l - m.r, ph = h - m.t - m.b;
    var max = 0, span = 1;
    series.forEach(function (s) {
      s.ys.forEach(function (v) { if (v > max) max = v; });
      s.xs.forEach(function (x) { if (x > span) span = x; });
    });
    max = niceMax(max);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = fg;
    ctx.strokeStyle = "rgba(127,140,155,0.25)";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (var g = 0; g <= 4; g++) {
      var y = m.t + ph - (ph * g) / 4;
      ctx.beginPath(); ctx.moveTo(m.l, y + 0.5); ctx.lineTo(m.l + pw, y + 0.5); ctx.stroke();
      ctx.fillText(fmt((max * g) / 4), m.l - 6, y);
    }
    if (!series.some(function (s) { return s.xs.length; })) {
      ctx.textAlign = "center";
      ctx.fillText("no data", m.l + pw / 2, m.t + ph / 2);
      return;
    }
    var x = function (t) { return m.l + (pw * t) / span; };
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (var k = 0; k <= 3; k++) {
      var tt = (span * k) / 3;
      ctx.fillText(since(tt), Math.min(Math.max(x(tt), m.l + 24), m.l + pw - 24), m.t + ph + 6);
    }
    series.forEach(function (s) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.8;
      if (s.dash) ctx.setLineDash(s.dash);
      ctx.beginPath();
      for (var i = 0; i < s.xs.length; i++) {
        var px = x(s.xs[i]), py = m.t + ph - (ph * (s.ys[i] || 0)) / max;
        if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
      }
      ctx.stroke();
      ctx.setLineDash([]);
    });
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    var lx = m.l;
    series.forEach(function (s) {
      ctx.fillStyle = s.color;
      ctx.fillRect(lx, 6, 10, 10);
      ctx.fillStyle = fg;
      ctx.fillText(s.label, lx + 14, 11);
      lx += ctx.measureText(s.label).width + 30;
    });
  }

  // Two runs ({label, start, history}) overlaid: RPS, p95 and users in the
  // canvases `<prefix>rps`, `<prefix>p95`, `<prefix>users`.
  function drawCompare(base, next, prefix) {
    var doc = root.document;
    var runs = [[base, COMPARE.base, [5, 4]], [next, COMPARE.next, null]];
    [["rps", "rps"], ["p95", "p95"], ["users", "users"]].forEach(function (k) {
      var c = doc.getElementById(prefix + k[0]);
      if (!c) return;
      overlay(c, runs.map(function (r) {
        var h = r[0].history || [];
        return {
          label: r[0].label, color: r[1], dash: r[2],
          xs: h.map(function (p) { return p.t - r[0].start; }),
          ys: h.map(function (p) { return p[k[1]]; })
        };
      }));
    });
  }

  function drawAll(history) {
    var doc = root.document;
    var times = history.map(function (p) { return p.t; });
    var col = function (k) { return history.map(function (p) { return p[k]; }); };
    var limited = history.map(function (p) { return !!p.limited; });
    var c;
    if ((c = doc.getElementById("chart-rps"))) line(c, times, [
      { label: "RPS", color: COLORS.rps, values: col("rps") },
      { label: "Failures/s", color: COLORS.fails, values: col("fails") }], limited);
    if ((c = doc.getElementById("chart-times"))) line(c, times, [
      { label: "Median", color: COLORS.p50, values: col("p50") },
      { label: "95%ile", color: COLORS.p95, values: col("p95") }], limited);
    if ((c = doc.getElementById("chart-users"))) line(c, times, [
      { label: "Users", color: COLORS.users, values: col("users") }], limited);
  }

  root.CloudswarmCharts = { line: line, drawAll: drawAll, overlay: overlay, drawCompare: drawCompare };
})(window);
