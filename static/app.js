// The dashboard's behaviour: polls /stats/requests every second, fills the
// top bar and tables, keeps the chart history (loaded from the server, so a
// reload keeps it), and drives the start/edit form, stop, reset and clean-up;
// the Runs tab lists the kept runs (/runs.json) and compares two
// (/compare.json: the table, and both runs' charts on seconds since start).
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var history = [];
  var last = null;
  var sort = { stats: null, failures: { key: "occurrences", dir: -1 } };
  var editing = false;

  function num(v, digits) {
    if (v === null || v === undefined || isNaN(v)) return "";
    if (digits === undefined) digits = v >= 100 ? 0 : v >= 10 ? 1 : 2;
    return Number(v).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  function bytes(v) {
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(1) : v) + " " + u[i];
  }
  // Arrivals per second as people read them: 20/s, 30/min, 2/h.
  function rate(r) {
    var t = function (v) { return String(Number(v.toFixed(3))); };
    return r >= 1 ? t(r) + "/s" : r * 60 >= 1 ? t(r * 60) + "/min" : t(r * 3600) + "/h";
  }
  function when(t) { return t ? new Date(t * 1000).toLocaleTimeString() : ""; }
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  // ---- tabs
  function showTab(name) {
    document.querySelectorAll(".tab").forEach(function (a) { a.classList.toggle("active", a.dataset.tab === name); });
    document.querySelectorAll(".tab-body").forEach(function (s) { s.hidden = s.id !== "tab-" + name; });
    if (name === "charts") CloudswarmCharts.drawAll(history);
    if (name === "runs") loadRuns();
    if (name === "runs" && compared) CloudswarmCharts.drawCompare(compared.base, compared.new, "chart-compare-");
  }
  document.querySelectorAll(".tab").forEach(function (a) {
    a.addEventListener("click", function (e) { e.preventDefault(); showTab(a.dataset.tab); history_replace(a.dataset.tab); });
  });
  function history_replace(tab) { try { window.history.replaceState(null, "", "#" + tab); } catch (e) { /* file:// */ } }
  if (location.hash && $("tab-" + location.hash.slice(1))) showTab(location.hash.slice(1));

  // ---- sorting
  function sortable(tableId, which) {
    document.querySelectorAll("#" + tableId + " th[data-key]").forEach(function (th) {
      th.addEventListener("click", function () {
        var s = sort[which];
        sort[which] = { key: th.dataset.key, dir: s && s.key === th.dataset.key ? -s.dir : (th.classList.contains("num") ? -1 : 1) };
        document.querySelectorAll("#" + tableId + " th").forEach(function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(sort[which].dir > 0 ? "asc" : "desc");
        render();
      });
    });
  }
  sortable("stats-table", "stats");
  sortable("failures-table", "failures");
  function sorted(rows, s) {
    if (!s) return rows;
    return rows.slice().sort(function (a, b) {
      var x = a[s.key], y = b[s.key];
      if (typeof x === "string") return s.dir * x.localeCompare(y);
      return s.dir * ((x || 0) - (y || 0));
    });
  }

  // ---- rendering
  var STAT_COLS = [
    ["method"], ["name"], ["num_requests", 0], ["num_failures", 0], ["median_response_time"],
    ["response_time_percentile_0.95"], ["response_time_percentile_0.99"], ["response_time_percentile_0.999"],
    ["avg_response_time"], ["min_response_time"], ["max_response_time"], ["avg_content_length", 0],
    ["current_rps", 2], ["current_fail_per_sec", 2], ["num_throttled", 0]];
  function statRow(r) {
    var tr = document.createElement("tr");
    tr.dataset.name = r.name;
    STAT_COLS.forEach(function (c) {
      var v = r[c[0]];
      var td = cell(tr, typeof v === "number" ? num(v, c[1]) : v, typeof v === "number" ? "num" : "");
      if (c[0] === "num_failures" && v > 0) td.classList.add("bad");
      if (c[0] === "num_throttled" && v > 0) td.classList.add("warn");
    });
    return tr;
  }

  function render() {
    var d = last;
    if (!d) return;
    var st = $("status");
    // `state` is Locust's name (`spawning`), `state_label` cloudswarm's (`hatching`).
    var state = d.state_label || d.state;
    st.textContent = state;
    st.className = "state state-" + state.replace(/ /g, "-");
    $("run-id").textContent = d.run_id || "—";
    $("users").textContent = d.user_count + (d.target_user_count !== d.user_count && d.run_id ? " → " + d.target_user_count : "");
    $("rps").textContent = num(d.total_rps, 1);
    $("fail-ratio").textContent = num(d.fail_ratio * 100, 1) + "%";
    $("fail-ratio").classList.toggle("bad", d.fail_ratio > 0);
    $("live-resources").textContent = d.live_resources;
    $("user-panics").textContent = d.user_panics || 0;
    $("panics-box").hidden = !d.user_panics;
    // Open classes: their arrival rate, and the arrivals that found no free user.
    var open = d.arrival_rate !== null && d.arrival_rate !== undefined;
    var dropped = Object.keys(d.dropped || {}).reduce(function (a, k) { return a + d.dropped[k]; }, 0);
    $("arrivals-box").hidden = !open;
    $("arrival-rate").textContent = open ? rate(d.arrival_rate) : "—";
    $("dropped-box").hidden = !open && !dropped;
    $("dropped").textContent = num(dropped, 0);
    $("dropped").classList.toggle("bad", dropped > 0);
    // The load generator, not the cloud, limits the figures of this second.
    var gen = d.generator || {};
    $("generator-box").hidden = !gen.limited;
    $("generator-limited").textContent = gen.limited ? "GENERATOR-LIMITED: " + (gen.reasons || []).join(", ") : "";
    renderSlas(d);
    renderCapacity(d);
    var running = state === "hatching" || state === "running";
    $("stop-button").hidden = !running;
    $("edit-button").hidden = !running || editing;
    $("new-button").hidden = running || !$("swarm-panel").hidden || state === "stopping" || state === "cleaning up";
    if (!running && editing) closeForm();

    // statistics
    var rows = d.stats.filter(function (r) { return r.name !== "Aggregated"; });
    var total = d.stats.filter(function (r) { return r.name === "Aggregated"; })[0];
    var tb = document.querySelector("#stats-table tbody");
    tb.replaceChildren.apply(tb, sorted(rows, sort.stats).map(statRow));
    var tf = document.querySelector("#stats-table tfoot");
    tf.replaceChildren.apply(tf, total && rows.length ? [statRow(total)] : []);
    $("stats-empty").hidden = rows.length > 0;
    $("classes").textContent = d.user_classes.length
      ? "Users per class: " + d.user_classes.map(function (c) {
        var s = c.name + " " + c.count;
        if (c.arrival_rate !== undefined) s += " (arrivals " + rate(c.arrival_rate) + ", dropped " + num(c.dropped, 0) + ")";
        return s;
      }).join(" · ")
      : "";

    // failures
    var fb = document.querySelector("#failures-table tbody");
    fb.replaceChildren.apply(fb, sorted(d.errors, sort.failures).map(function (e) {
      var tr = document.createElement("tr");
      cell(tr, num(e.occurrences, 0), "num");
      cell(tr, e.name);
      cell(tr, e.code + (e.throttled ? " (throttled)" : ""), e.throttled ? "warn" : "bad");
      cell(tr, e.message, "message");
      cell(tr, when(e.first_seen));
      cell(tr, when(e.last_seen));
      return tr;
    }));
    var nerr = d.errors.reduce(function (a, e) { return a + e.occurrences; }, 0);
    $("failure-count").textContent = nerr ? num(nerr, 0) : "";
    $("failures-empty").hidden = d.errors.length > 0;

    // resources
    var rb = document.querySelector("#resources-table tbody");
    rb.replaceChildren.apply(rb, d.resources.map(function (r) {
      var tr = document.createElement("tr");
      tr.dataset.kind = r.kind;
      cell(tr, r.kind);
      cell(tr, num(r.created, 0), "num");
      cell(tr, r.kind === "objects" && r.bytes !== undefined ? num(r.alive, 0) + " (" + bytes(r.bytes) + ")" : num(r.alive, 0), "num");
      cell(tr, num(r.deleted, 0), "num");
      cell(tr, r.cap === null || r.cap === undefined ? "" : r.cap_unit === "bytes" ? bytes(r.cap) : num(r.cap, 0), "num");
      return tr;
    }));
    var capped = Object.keys(d.capped || {});
    $("capped").textContent = capped.length
      ? "Kept from creating by budget caps: " + capped.map(function (k) { return k + " " + d.capped[k]; }).join(", ")
      : "";
    var c = d.cleanup || {};
    $("cleanup-button").disabled = !d.run_id || state !== "stopped" || c.running;
    var cs = "";
    if (c.running) cs = "cleaning up…";
    else if (c.outcome) {
      var o = c.outcome;
      cs = o.leaked === 0 ? "done: nothing of the run is left in the cloud"
        : o.leaked === null || o.leaked === undefined ? "done, but the cloud could not be listed: " + (o.list_error || "")
        : "done: " + o.leaked + " resources still in the cloud";
    }
    $("cleanup-status").textContent = cs;
    $("cleanup-log").textContent = (c.log || []).join("\n");

    // workers (the dashboard as a master)
    var workers = d.workers || null;
    $("workers-tab").hidden = workers === null;
    if (workers !== null) {
      var live = workers.filter(function (w) { return !w.missing; }).length;
      var missing = workers.length - live;
      $("worker-count").textContent = workers.length ? live + (missing ? " (" + missing + " missing)" : "") : "0";
      var wb = document.querySelector("#workers-table tbody");
      wb.replaceChildren.apply(wb, workers.map(function (w) {
        var tr = document.createElement("tr");
        tr.dataset.worker = w.id;
        if (w.missing) tr.classList.add("missing");
        cell(tr, String(w.index));
        cell(tr, w.id);
        cell(tr, w.missing ? "missing" : w.state);
        cell(tr, num(w.user_count, 0), "num");
        cell(tr, num(w.rps, 1), "num");
        cell(tr, num(w.num_requests, 0), "num");
        cell(tr, num(w.num_failures, 0), "num");
        cell(tr, num(w.cpu_usage, 0), "num");
        cell(tr, bytes(w.memory_usage), "num");
        cell(tr, num(w.last_heartbeat_s, 1) + " s ago", "num");
        return tr;
      }));
      $("workers-empty").hidden = workers.length > 0;
    }

    if (!$("tab-charts").hidden) CloudswarmCharts.drawAll(history);
  }

  // ---- SLAs: each one's state now, since when it is broken, when it first broke
  // The capacity search (find_max): the step under way or the answer, and the steps.
  function renderCapacity(d) {
    var c = d.capacity;
    $("capacity-tab").hidden = !c;
    $("capacity-box").hidden = !c;
    if (!c) return;
    var held = c.max_rate === null || c.max_rate === undefined ? "none held yet" : "max " + rate(c.max_rate);
    $("capacity-summary").textContent = c.searching
      ? "step " + c.step + " at " + rate(c.step_rate) + " (" + held + ")"
      : (c.max_rate === null || c.max_rate === undefined ? "no step held" : "max " + rate(c.max_rate));
    $("capacity-answer").textContent = c.summary || ("searching: step " + c.step + " at " + rate(c.step_rate) + ", " + held);
    var tb = document.querySelector("#capacity-table tbody");
    tb.replaceChildren.apply(tb, (c.steps || []).map(function (s) {
      var tr = document.createElement("tr");
      tr.dataset.step = s.step;
      cell(tr, s.step, "num");
      cell(tr, rate(s.rate), "num");
      cell(tr, rate(s.achieved_rate), "num");
      cell(tr, s.requests, "num");
      cell(tr, num(s.failure_ratio * 100, 2), "num");
      cell(tr, num(s.throttle_ratio * 100, 2), "num");
      cell(tr, num(s.p95_ms, 1), "num");
      cell(tr, s.dropped, "num");
      cell(tr, s.limited_seconds, "num");
      cell(tr, s.held ? "held" : "broke: " + s.broke, s.held ? "good" : "bad");
      return tr;
    }));
  }

  function renderSlas(d) {
    var slas = d.sla || [];
    var broken = slas.filter(function (s) { return s.state === "breached"; }).length;
    var judged = slas.filter(function (s) { return s.state !== "waiting"; }).length;
    $("sla-tab").hidden = !slas.length;
    $("sla-box").hidden = !slas.length;
    $("sla-summary").textContent = broken ? broken + " BREACHED" : (judged - broken) + "/" + slas.length + " holding";
    $("sla-summary").className = broken ? "bad" : "";
    $("sla-broken").textContent = broken || "";
    var ab = d.aborted_by_sla;
    $("sla-aborted").hidden = !ab;
    $("sla-aborted").textContent = ab ? "The run was stopped at the first breach: SLA " + ab.sla + " broke at " + when(ab.first_breach_at) + " (actual " + ab.actual + ")" : "";
    var tb = document.querySelector("#sla-table tbody");
    tb.replaceChildren.apply(tb, slas.map(function (s) {
      var tr = document.createElement("tr");
      tr.dataset.sla = s.sla;
      tr.dataset.state = s.state;
      cell(tr, s.sla);
      cell(tr, s.state === "breached" ? "BREACHED" : s.state === "holding" ? "holding" : "waiting", s.state === "breached" ? "bad" : s.state === "holding" ? "good" : "sla-waiting");
      cell(tr, s.actual || s.note || "", s.actual ? "num" : "sla-waiting").title = s.note || "";
      cell(tr, s.breached_since ? when(s.breached_since) : "");
      cell(tr, s.first_breach_at ? when(s.first_breach_at) : "never");
      cell(tr, num(s.breached_seconds, 0), "num");
      return tr;
    }));
  }

  // ---- kept runs: the list, each run's files, and a comparison of two
  var runs = [];
  var runsTick = 0;
  var compared = null;
  var ticked = {};
  function duration(s) {
    s = Math.round(s || 0);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return (h ? h + "h" : "") + (h || m ? m + "m" : "") + r + "s";
  }
  function link(td, href, text, download) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    if (!download) a.target = "_blank";
    td.appendChild(a);
  }
  var FILE_LINKS = [["report.html", "Report"], ["report.json", "JSON"], ["snapshot.json", "Snapshot"],
    ["stats.csv", "Stats CSV"], ["failures.csv", "Failures CSV"], ["stats_history.csv", "History CSV"], ["sla.csv", "SLA CSV"]];
  function renderRuns() {
    var tb = document.querySelector("#runs-table tbody");
    tb.replaceChildren.apply(tb, runs.map(function (r) {
      var tr = document.createElement("tr");
      tr.dataset.run = r.run_id;
      var box = document.createElement("input");
      box.type = "checkbox";
      box.className = "run-pick";
      box.value = r.run_id;
      box.checked = !!ticked[r.run_id];
      box.disabled = r.state === "journal_only";
      box.addEventListener("change", function () {
        if (box.checked) ticked[r.run_id] = true; else delete ticked[r.run_id];
        pickable();
      });
      var td = document.createElement("td");
      td.appendChild(box);
      tr.appendChild(td);
      cell(tr, r.run_id);
      cell(tr, r.profile);
      cell(tr, r.started_at ? new Date(r.started_at * 1000).toLocaleString() : "");
      var none = r.state === "journal_only";
      cell(tr, none ? "" : duration(r.duration_s), "num");
      cell(tr, none ? "" : num(r.users, 0), "num");
      cell(tr, none ? "" : num(r.requests, 0), "num");
      cell(tr, none ? "" : num(r.failure_pct, 2) + "%", "num" + (r.failure_pct > 0 ? " bad" : ""));
      cell(tr, r.sla === "none" ? "—" : r.sla, r.sla === "FAILED" ? "bad" : r.sla === "held" ? "good" : "");
      var files = cell(tr, "", "files");
      FILE_LINKS.forEach(function (f) {
        if ((r.files || []).indexOf(f[0]) >= 0) link(files, "/runs/" + r.run_id + "/" + f[0], f[1], f[0] !== "report.html");
      });
      var notes = [];
      if (r.run_id === runs.current) notes.push("the current run");
      if (r.state === "snapshot") notes.push("no final report (crashed, or still running)");
      if (r.state === "journal_only") notes.push("journal only (a worker's share, or from before reports were kept)");
      if (r.workers) notes.push("on workers: no journal here");
      cell(tr, notes.join("; "), "hint");
      return tr;
    }));
    $("runs-empty").hidden = runs.length > 0;
    pickable();
  }
  function pickable() {
    var n = Object.keys(ticked).filter(function (id) { return runs.some(function (r) { return r.run_id === id; }); }).length;
    $("compare-button").disabled = n !== 2;
  }
  function loadRuns() {
    fetch("/runs.json", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (d) {
      runs = d.runs || [];
      runs.current = d.current;
      renderRuns();
    });
  }
  $("compare-button").addEventListener("click", function () {
    var picked = runs.filter(function (r) { return ticked[r.run_id]; });
    if (picked.length !== 2) return;
    // The older run is the base.
    picked.sort(function (a, b) { return a.started_at - b.started_at; });
    $("compare-error").textContent = "";
    fetch("/compare.json?base=" + encodeURIComponent(picked[0].run_id) + "&new=" + encodeURIComponent(picked[1].run_id), { cache: "no-store" })
      .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, j: j }; }); })
      .then(function (res) {
        if (!res.ok) { $("compare-error").textContent = res.j.message; return; }
        showCompare(res.j);
      }).catch(function (err) { $("compare-error").textContent = "cannot reach the dashboard: " + err; });
  });
  function showCompare(d) {
    var c = d.comparison;
    compared = d;
    $("compare-view").hidden = false;
    $("compare-title").textContent = "Run " + c.new.run_id + " (" + c.new.profile + ") compared with " + c.base.run_id + " (" + c.base.profile + ")";
    $("compare-limits").textContent = "Regression: " + c.limits.on.join("/") + " more than " + num(c.limits.max_regression * 100, 1) +
      "% worse, or the failure percentage up by more than " + num(c.limits.max_failure_increase * 100, 1) + " points" +
      (c.limits.min_requests ? "; entries with fewer than " + c.limits.min_requests + " requests in a run are not judged." : ".");
    var head = document.querySelector("#compare-table thead tr");
    var th = function (t, cls) { var e = document.createElement("th"); e.textContent = t; if (cls) e.className = cls; return e; };
    head.replaceChildren.apply(head, [th(""), th("Name")].concat(d.headings.map(function (h) { return th(h, "num"); })));
    var tb = document.querySelector("#compare-table tbody");
    tb.replaceChildren.apply(tb, c.rows.map(function (row, i) {
      var tr = document.createElement("tr");
      tr.dataset.name = row.name;
      if (row.regressed) tr.className = "regressed";
      cell(tr, row.regressed ? "!" : "", "bad");
      cell(tr, row.name);
      d.cells[i].forEach(function (v) { cell(tr, v, "num"); });
      return tr;
    }));
    var failed = c.checks.filter(function (k) { return k.failed; });
    $("compare-verdict").textContent = failed.length ? "REGRESSED: " + failed.length + " of " + c.checks.length + " checks" : "No regression (" + c.checks.length + " checks).";
    $("compare-verdict").className = failed.length ? "bad" : "good";
    var ul = $("compare-failed");
    ul.replaceChildren.apply(ul, failed.map(function (k) { var li = document.createElement("li"); li.textContent = k.message; return li; })
      .concat((c.notes || []).map(function (n) { var li = document.createElement("li"); li.className = "hint"; li.textContent = "Note: " + n; return li; })));
    CloudswarmCharts.drawCompare(d.base, d.new, "chart-compare-");
  }

  // ---- polling
  function lastT() { return history.length ? history[history.length - 1].t : 0; }
  function poll() {
    Promise.all([
      fetch("/stats/requests", { cache: "no-store" }).then(function (r) { return r.json(); }),
      fetch("/stats/history?since=" + lastT(), { cache: "no-store" }).then(function (r) { return r.json(); })
    ]).then(function (res) {
      if (last && res[0].run_id !== last.run_id) history = [];
      last = res[0];
      var h = res[1].history || [];
      if (h.length && h[0].t < lastT()) history = h; else history = history.concat(h);
      render();
      // The Runs tab follows runs that end meanwhile.
      if (!$("tab-runs").hidden && ++runsTick % 5 === 0) loadRuns();
    }).catch(function () {
      $("status").textContent = "offline";
      $("status").className = "state state-offline";
    }).finally(function () { setTimeout(poll, 1000); });
  }

  // ---- form
  function openForm(edit) {
    editing = edit;
    $("swarm-panel").hidden = false;
    $("form-title").textContent = edit ? "Edit running swarm" : "Start new swarm";
    $("swarm-submit").textContent = edit ? "Update swarm" : "Start swarm";
    $("profile").disabled = edit;
    $("field-profile").hidden = edit;
    $("field-run-time").hidden = edit;
    // SLAs are set when a swarm starts.
    $("field-sla").hidden = edit;
    // A capacity search is set when a swarm starts.
    $("field-find-max").hidden = edit;
    // An edit shows the arrival rate only for a swarm with open classes.
    var open = last && last.arrival_rate !== null && last.arrival_rate !== undefined;
    $("field-arrival-rate").hidden = edit && !open;
    $("arrival_rate").value = $("arrival_rate").dataset.shown = edit && open ? rate(last.arrival_rate) : "";
    $("form-cancel").hidden = false;
    if (edit && last) {
      $("user_count").value = last.target_user_count;
      $("spawn_rate").value = last.spawn_rate;
      if (last.profile) $("profile").value = last.profile;
    }
    render();
  }
  function closeForm() {
    editing = false;
    $("swarm-panel").hidden = true;
    render();
  }
  function clearErrors() {
    document.querySelectorAll(".field-error").forEach(function (s) { s.textContent = ""; });
    document.querySelectorAll(".field").forEach(function (f) { f.classList.remove("invalid"); });
    $("form-error").textContent = "";
  }
  $("swarm-form").addEventListener("submit", function (e) {
    e.preventDefault();
    clearErrors();
    var body = new URLSearchParams();
    // An edit changes users and rates only (a run time would restart the countdown).
    (editing ? ["user_count", "spawn_rate"] : ["user_count", "spawn_rate", "run_time"])
      .forEach(function (k) { body.append(k, $(k).value); });
    // The arrival rate is sent when given (an edit: when changed from the one shown).
    var ar = $("arrival_rate").value.trim();
    if (!$("field-arrival-rate").hidden && ar && !(editing && ar === $("arrival_rate").dataset.shown)) body.append("arrival_rate", ar);
    if (!editing) {
      body.append("profile", $("profile").value);
      // Sent even when empty: what the form shows is what the run judges.
      body.append("sla", $("sla").value);
      if ($("abort_on_sla_failure").checked) body.append("abort_on_sla_failure", "true");
      var fm = $("find_max").value.trim();
      if (fm) {
        body.append("find_max", fm);
        body.append("find_max_failure_rate", $("find_max_failure_rate").value);
        body.append("find_max_throttle_rate", $("find_max_throttle_rate").value);
      }
    }
    $("swarm-submit").disabled = true;
    $("form-error").textContent = editing ? "" : "preflight: checking the target…";
    fetch("/swarm", { method: "POST", body: body }).then(function (r) {
      return r.json().then(function (j) { return { ok: r.ok, j: j }; });
    }).then(function (res) {
      $("form-error").textContent = "";
      if (res.ok) { closeForm(); return; }
      var span = res.j.field && document.querySelector('.field-error[data-for="' + res.j.field + '"]');
      if (span) { span.textContent = res.j.message; span.parentNode.classList.add("invalid"); }
      else $("form-error").textContent = res.j.message;
    }).catch(function (err) {
      $("form-error").textContent = "cannot reach the dashboard: " + err;
    }).finally(function () { $("swarm-submit").disabled = false; });
  });
  // The SLA box shows the chosen profile's SLAs until someone types in it.
  function prefillSlas() {
    var o = $("profile").selectedOptions[0];
    if (!$("sla").dataset.typed) $("sla").value = o ? o.dataset.sla || "" : "";
  }
  $("profile").addEventListener("change", prefillSlas);
  $("sla").addEventListener("input", function () { $("sla").dataset.typed = "1"; });
  prefillSlas();
  $("edit-button").addEventListener("click", function () { openForm(true); });
  $("new-button").addEventListener("click", function () { openForm(false); });
  $("form-cancel").addEventListener("click", closeForm);
  $("stop-button").addEventListener("click", function () { fetch("/stop", { method: "POST" }); });
  $("reset-button").addEventListener("click", function () { fetch("/stats/reset", { method: "POST" }); });
  $("cleanup-button").addEventListener("click", function () { fetch("/cleanup", { method: "POST" }); });
  window.addEventListener("resize", function () {
    if (!$("tab-charts").hidden) CloudswarmCharts.drawAll(history);
    if (!$("tab-runs").hidden && compared) CloudswarmCharts.drawCompare(compared.base, compared.new, "chart-compare-");
  });

  // First state: the form is open only when nothing runs.
  fetch("/stats/requests").then(function (r) { return r.json(); }).then(function (d) {
    last = d;
    $("swarm-panel").hidden = d.state !== "ready";
    $("form-cancel").hidden = d.state === "ready";
    render();
  }).finally(poll);
})();
