// The piton dashboard: a hash-routed page over the JSON API (/api), no framework, no network
// beyond this server. #/ lists runs; #/runs/<id> shows one run.
"use strict";

const STATUSES = ["queued", "running", "parked", "completed", "failed", "cancelled", "timed_out"];
const FINAL = new Set(["completed", "failed", "cancelled", "timed_out"]);
const PAGE = 50; // runs per page
const TIMELINE_PAGE = 100;
const TOKEN_KEY = "piton.token";

// -- small helpers ------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel) => document.querySelector(sel);
const enc = encodeURIComponent;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function when(ts) {
  if (ts === null || ts === undefined) return "-";
  const d = new Date(ts * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function statusBadge(status, testid) {
  return h("span", { class: `status status-${status}`, "data-testid": testid }, status);
}

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

// An example value for a JSON schema (pydantic's): defaults, else an empty value per type.
function example(schema, defs) {
  if (!schema || typeof schema !== "object") return null;
  defs = defs || schema.$defs || {};
  if (schema.$ref) return example(defs[schema.$ref.split("/").pop()], defs);
  if ("default" in schema) return schema.default;
  if (schema.anyOf) {
    const first = schema.anyOf.find((s) => s.type !== "null") || schema.anyOf[0];
    return example(first, defs);
  }
  switch (schema.type) {
    case "object": {
      const out = {};
      for (const [k, v] of Object.entries(schema.properties || {})) out[k] = example(v, defs);
      return out;
    }
    case "array": return [];
    case "string": return schema.enum ? schema.enum[0] : "";
    case "integer": case "number": return schema.minimum ?? (schema.exclusiveMinimum ?? -1) + 1;
    case "boolean": return false;
    default: return null;
  }
}

// -- messages and the token ------------------------------------------------------------------

function showMessage(text, kind) {
  const box = $("#message");
  box.textContent = text;
  box.className = kind;
  box.hidden = false;
}

function clearMessage() {
  const box = $("#message");
  box.hidden = true;
  box.textContent = "";
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function askToken() {
  if (!$("#token-form").hidden) return; // asked already (a live read got 401 again)
  $("#token-form").hidden = false;
  $("#token-input").focus();
  showMessage("This server wants a token: enter it above (kept in this tab only).", "error");
}

function showTokenState() {
  $("#token-forget").hidden = !token();
}

class ApiError extends Error {
  constructor(status, message, detail) {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}

function headers(extra) {
  const out = { Accept: "application/json", ...(extra || {}) };
  if (token()) out.Authorization = `Bearer ${token()}`;
  return out;
}

// A call to the API: the parsed JSON, or an ApiError (shown in the message area).
async function api(path, { method = "GET", body, quiet = false } = {}) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (!quiet) showMessage(`The server cannot be reached: ${err.message}`, "error");
    throw new ApiError(0, err.message);
  }
  let data = {};
  try {
    data = await response.json();
  } catch (err) {
    data = {};
  }
  if (response.status === 401) {
    askToken();
    throw new ApiError(401, data.error || "unauthorized");
  }
  if (!response.ok) {
    let text = data.error || `${response.status} ${response.statusText}`;
    if (data.detail) text += `\n${pretty(data.detail)}`;
    if (!quiet) showMessage(text, "error");
    throw new ApiError(response.status, data.error || text, data.detail);
  }
  return data;
}

// -- the page's lifetime: timers and streams stop when the route changes ------------------------

let page = { alive: true, timers: [], aborts: [] };

function newPage() {
  page.alive = false;
  page.timers.forEach(clearInterval);
  page.aborts.forEach((a) => a.abort());
  page = { alive: true, timers: [], aborts: [] };
  return page;
}

function every(ms, fn) {
  const current = page;
  let busy = false;
  const id = setInterval(async () => {
    if (busy || !current.alive) return;
    busy = true;
    try { await fn(); } catch (err) { /* shown by api() */ } finally { busy = false; }
  }, ms);
  current.timers.push(id);
}

function route() {
  const p = newPage();
  clearMessage();
  const hash = location.hash.replace(/^#/, "") || "/";
  const view = $("#view");
  view.replaceChildren();
  const run = hash.match(/^\/runs\/(.+)$/);
  if (run) runPage(view, decodeURIComponent(run[1]), p);
  else runsPage(view, p);
}

// -- #/ : the runs ---------------------------------------------------------------------------

async function runsPage(view, p) {
  const wfSelect = h("select", { id: "filter-workflow", "data-testid": "filter-workflow" },
    h("option", { value: "" }, "all workflows"));
  const statusSelect = h("select", { id: "filter-status", "data-testid": "filter-status" },
    h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s }, s)));
  const idFilter = h("input", { id: "filter-run", "data-testid": "filter-run",
    placeholder: "part of a run id" });
  const tbody = h("tbody", { id: "runs-body" });
  const more = h("button", { id: "runs-more", class: "secondary", "data-testid": "runs-more",
    hidden: true }, "Load more");
  const count = h("span", { class: "muted", id: "runs-count" });
  const startForm = h("div", { id: "start" }, h("p", { class: "muted" }, "Loading workflows…"));

  view.append(
    h("section", { class: "card" }, h("h2", {}, "Start a run"), startForm),
    h("section", { class: "card" },
      h("h2", {}, "Runs ", count),
      h("div", { class: "row" },
        h("label", {}, "Workflow", wfSelect), h("label", {}, "Status", statusSelect),
        h("label", {}, "Run id", idFilter)),
      h("table", { id: "runs-table", "data-testid": "runs-table" },
        h("thead", {}, h("tr", {}, ["Run", "Workflow", "Status", "Created", "Updated"]
          .map((t) => h("th", {}, t)))),
        tbody),
      more));

  let runs = [];
  let want = PAGE; // how many runs the live refresh reads
  let next = null; // the API's cursor after the runs shown, when it gives one

  function query(extra) {
    const q = new URLSearchParams();
    if (wfSelect.value) q.set("workflow", wfSelect.value);
    if (statusSelect.value) q.set("status", statusSelect.value);
    for (const [k, v] of Object.entries(extra)) q.set(k, v);
    return `/api/runs?${q}`;
  }

  function draw() {
    const part = idFilter.value.trim();
    const shown = part ? runs.filter((r) => r.run_id.includes(part)) : runs;
    tbody.replaceChildren(...shown.map((r) =>
      h("tr", { "data-run-id": r.run_id, "data-testid": "run-row" },
        h("td", { class: "mono" }, h("a", { href: `#/runs/${enc(r.run_id)}` }, r.run_id)),
        h("td", {}, r.workflow),
        h("td", {}, statusBadge(r.status)),
        h("td", {}, when(r.created_at)),
        h("td", {}, when(r.updated_at)))));
    if (!shown.length) {
      tbody.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No runs.")));
    }
    count.textContent = `(${shown.length}${part ? ` of ${runs.length}` : ""})`;
    more.hidden = !(next || runs.length >= want);
  }

  async function refresh() {
    const data = await api(query({ limit: Math.min(want, 1000) }), { quiet: !p.alive });
    if (!p.alive) return;
    runs = data.runs;
    next = data.next ?? null;
    draw();
  }

  async function loadMore() {
    if (next) {
      const data = await api(query({ limit: PAGE, after: next }));
      if (!p.alive) return;
      const have = new Set(runs.map((r) => r.run_id));
      runs = runs.concat(data.runs.filter((r) => !have.has(r.run_id)));
      next = data.next ?? null;
      want = Math.min(runs.length + (next ? 0 : PAGE), 1000);
      draw();
    } else {
      want = Math.min(want + PAGE, 1000);
      await refresh();
    }
  }

  wfSelect.addEventListener("change", () => { want = PAGE; refresh(); });
  statusSelect.addEventListener("change", () => { want = PAGE; refresh(); });
  idFilter.addEventListener("input", draw);
  more.addEventListener("click", () => loadMore().catch(() => {}));

  try {
    const { workflows } = await api("/api/workflows");
    if (!p.alive) return;
    for (const w of workflows) wfSelect.append(h("option", { value: w.name }, w.name));
    startForm.replaceChildren(startRunForm(workflows));
  } catch (err) {
    startForm.replaceChildren(h("p", { class: "muted" }, "The workflows could not be read."));
  }
  try { await refresh(); } catch (err) { /* shown */ }
  every(1500, refresh);
}

function startRunForm(workflows) {
  if (!workflows.length) return h("p", { class: "muted" }, "This server serves no workflow.");
  const select = h("select", { id: "start-workflow", "data-testid": "start-workflow" },
    workflows.map((w) => h("option", { value: w.name }, w.name)));
  const input = h("textarea", { id: "start-input", "data-testid": "start-input", rows: 6,
    spellcheck: "false" });
  const runId = h("input", { id: "start-run-id", "data-testid": "start-run-id",
    placeholder: "optional: a new id is made" });
  const about = h("p", { class: "muted", id: "start-about" });
  const button = h("button", { id: "start-submit", "data-testid": "start-submit",
    type: "submit" }, "Start run");

  function fill() {
    const w = workflows.find((x) => x.name === select.value);
    input.value = pretty(example(w.input_schema));
    const accepts = w.accepts.length ? `; it takes ${w.accepts.join(", ")} from outside` : "";
    about.textContent = `Starts with ${w.start_event}${accepts}.`;
  }
  select.addEventListener("change", fill);
  fill();

  return h("form", {
    id: "start-form", "data-testid": "start-form",
    onsubmit: async (e) => {
      e.preventDefault();
      let body;
      try {
        body = { input: JSON.parse(input.value || "{}") };
      } catch (err) {
        showMessage(`The input is not JSON: ${err.message}`, "error");
        return;
      }
      if (runId.value.trim()) body.run_id = runId.value.trim();
      button.disabled = true;
      try {
        const run = await api(`/api/workflows/${enc(select.value)}/runs`,
          { method: "POST", body });
        location.hash = `#/runs/${enc(run.run_id)}`;
      } catch (err) { /* shown */ } finally { button.disabled = false; }
    },
  },
  h("div", { class: "row" }, h("label", {}, "Workflow", select), h("label", {}, "Run id", runId)),
  about, h("label", {}, "Input (JSON)", input), h("div", { class: "row" }, button));
}

// -- #/runs/<id> : one run -----------------------------------------------------------------

async function runPage(view, runId, p) {
  const status = h("span", { id: "run-status-box" });
  const cancel = h("button", { id: "cancel-run", class: "danger", "data-testid": "cancel-run",
    hidden: true }, "Cancel run");
  const record = h("dl", { id: "run-record", "data-testid": "run-record" });
  const outcome = h("div", { id: "run-outcome" });
  const waiting = h("div", { id: "run-waiting", "data-testid": "run-waiting" });
  const answer = h("div", { id: "answer" });
  const stateBox = h("pre", { id: "run-state", "data-testid": "run-state" }, "…");
  const graphBox = h("div", { id: "run-graph", "data-testid": "run-graph" });
  const folded = h("tr", { hidden: true, "data-testid": "timeline-folded" },
    h("td", { colspan: 7, class: "muted" }));
  const timelineBody = h("tbody", { id: "timeline-body" }, folded);
  const timelineMore = h("button", { id: "timeline-more", class: "secondary",
    "data-testid": "timeline-more", hidden: true }, "Load more");
  const events = h("ul", { id: "events", class: "events", "data-testid": "events" });
  const eventsStatus = h("span", { id: "events-status", "data-testid": "events-status" });

  view.append(
    h("p", {}, h("a", { href: "#/" }, "← all runs")),
    h("h2", {}, "Run ", h("span", { class: "mono", id: "run-id" }, runId), " ", status, " ",
      cancel),
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h3", {}, "Record"), record, outcome),
      h("section", { class: "card" }, h("h3", {}, "Waiting for"), waiting, answer),
      h("section", { class: "card" }, h("h3", {}, "State"), stateBox),
      h("section", { class: "card" }, h("h3", {}, "Step graph"), graphBox,
        h("p", { class: "legend" }, "Boxes are steps, rounded nodes event types (green: start, " +
          "red: stop, yellow: sent from outside); an orange border marks a step that waits.")),
      h("section", { class: "card" }, h("h3", {}, "Event stream ", eventsStatus), events)),
    h("section", { class: "card spaced" }, h("h3", {}, "Timeline"),
      h("table", { id: "timeline", "data-testid": "timeline" },
        h("thead", {}, h("tr", {}, ["Seq", "At (UTC)", "+", "Kind", "Step", "Took", "What"]
          .map((t) => h("th", {}, t)))),
        timelineBody),
      timelineMore));

  let run = null;
  let graph = null;
  let answerTypes = "";

  // the record, state, waits and answer form, read again every second until the run ends
  async function refresh() {
    const fresh = await api(`/api/runs/${enc(runId)}`, { quiet: run !== null });
    if (!p.alive) return;
    const moved = !run || run.seq !== fresh.seq || run.status !== fresh.status;
    run = fresh;
    status.replaceChildren(statusBadge(run.status, "run-status"));
    cancel.hidden = FINAL.has(run.status);
    record.replaceChildren(...[
      ["Workflow", run.workflow], ["Status", run.status], ["Owner", run.owner || "-"],
      ["Created", when(run.created_at)], ["Updated", when(run.updated_at)],
      ["Finished", when(run.finished_at)], ["Journal entries", run.seq],
      ["Running steps", (run.running_steps || []).join(", ") || "-"],
    ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
    outcome.replaceChildren();
    if (run.status === "completed") {
      outcome.append(h("h3", {}, "Result"),
        h("pre", { id: "run-result", "data-testid": "run-result" }, pretty(run.result)));
    }
    if (run.error) {
      outcome.append(h("h3", {}, "Error"),
        h("pre", { id: "run-error", "data-testid": "run-error" }, run.error));
    }
    stateBox.textContent = pretty(run.state ?? null);
    drawWaiting();
    drawAnswer();
    if (graph) drawGraph(graphBox, graph, run);
    if (moved || !FINAL.has(run.status)) await timelineTail();
    if (FINAL.has(run.status)) p.timers.forEach(clearInterval);
  }

  function drawWaiting() {
    const items = (run.waiting_for || []).map((w) =>
      h("li", { "data-testid": "waiting-item" }, "step ", h("b", {}, w.step), " ",
        w.event_type ? ["waits for ", h("b", {}, w.event_type)] : "sleeps",
        w.deadline ? ` until ${w.deadline.replace("T", " ").replace(/\.\d+/, "")}` : ""));
    if (items.length) waiting.replaceChildren(h("ul", {}, items));
    else {
      waiting.replaceChildren(h("p", { class: "muted" },
        FINAL.has(run.status) ? "Nothing: the run has finished." : "Nothing at the moment."));
    }
  }

  function drawAnswer() {
    const sendable = FINAL.has(run.status) ? {} : (run.sendable || {});
    const names = Object.keys(sendable);
    const key = names.join(",");
    if (key === answerTypes) return; // keep what the user is typing
    answerTypes = key;
    if (!names.length) {
      answer.replaceChildren();
      return;
    }
    const waited = (run.waiting_for || []).map((w) => w.event_type).filter(Boolean);
    const select = h("select", { id: "answer-type", "data-testid": "answer-type" },
      names.map((n) => h("option", { value: n, selected: n === waited[0] }, n)));
    const data = h("textarea", { id: "answer-data", "data-testid": "answer-data", rows: 5,
      spellcheck: "false" });
    const send = h("button", { id: "answer-send", "data-testid": "answer-send", type: "submit" },
      "Send");
    const fill = () => { data.value = pretty(example(sendable[select.value])); };
    select.addEventListener("change", fill);
    fill();
    answer.replaceChildren(h("form", {
      id: "answer-form", "data-testid": "answer-form",
      onsubmit: async (e) => {
        e.preventDefault();
        let body;
        try {
          body = { type: select.value, data: JSON.parse(data.value || "{}") };
        } catch (err) {
          showMessage(`The data is not JSON: ${err.message}`, "error");
          return;
        }
        send.disabled = true;
        try {
          await api(`/api/runs/${enc(runId)}/events`, { method: "POST", body });
          showMessage(`Sent ${body.type} to ${runId}.`, "info");
          await refresh();
        } catch (err) { /* shown */ } finally { send.disabled = false; }
      },
    }, h("h3", {}, "Answer"), h("div", { class: "row" }, h("label", {}, "Event type", select)),
    h("label", {}, "Data (JSON)", data), h("div", { class: "row" }, send)));
  }

  // the timeline: pages on "Load more"; once all is read, new entries as the run moves on
  let lastSeq = 0;
  let nextAfter = null;
  let reading = false;

  async function readTimeline(after) {
    if (reading) return;
    reading = true;
    try {
      const page = await api(
        `/api/runs/${enc(runId)}/timeline?after=${after}&limit=${TIMELINE_PAGE}`, { quiet: true });
      if (!p.alive) return;
      const first = page.rows.length ? page.rows[0].seq : (run ? run.seq + 1 : 1);
      if (lastSeq === 0 && first > 1) { // a snapshot replaced the entries before
        folded.hidden = false;
        folded.firstChild.textContent =
          `Entries 1 to ${first - 1} were folded into a snapshot: the store keeps the rest.`;
      }
      for (const row of page.rows) {
        if (row.seq <= lastSeq) continue;
        lastSeq = row.seq;
        timelineBody.append(h("tr", { "data-testid": "timeline-row", "data-seq": row.seq },
          h("td", { class: "mono" }, row.seq),
          h("td", { class: "mono" }, (row.at || "-").replace("T", " ").replace("+00:00", "")),
          h("td", { class: "mono" }, row.after === null || row.after === undefined ? "" :
            `${row.after.toFixed(3)}s`),
          h("td", {}, row.kind),
          h("td", { class: "mono" }, [row.step, row.exec_id].filter(Boolean).join(" ")),
          h("td", { class: "mono" }, typeof row.took === "number" ? `${row.took.toFixed(3)}s` : ""),
          h("td", {}, row.what)));
      }
      nextAfter = page.next_after;
      timelineMore.hidden = nextAfter === null;
    } finally {
      reading = false;
    }
  }

  async function timelineTail() {
    if (nextAfter === null) await readTimeline(lastSeq);
  }

  timelineMore.addEventListener("click", () => {
    if (nextAfter !== null) readTimeline(nextAfter).catch(() => {});
  });

  cancel.addEventListener("click", async () => {
    if (!confirm(`Cancel run ${runId}? It stops and ends cancelled.`)) return;
    try {
      await api(`/api/runs/${enc(runId)}/cancel`, { method: "POST" });
      showMessage(`Asked ${runId} to stop.`, "info");
      await refresh();
    } catch (err) { /* shown */ }
  });

  try {
    await refresh();
  } catch (err) {
    if (err.status === 404) view.append(h("p", {}, "No such run."));
    return;
  }
  try {
    graph = await api(`/api/workflows/${enc(run.workflow)}/graph`, { quiet: true });
    if (p.alive) {
      drawGraph(graphBox, graph, run);
      graphBox.after(h("details", {}, h("summary", { class: "muted" }, "As Mermaid text"),
        h("pre", { "data-testid": "graph-mermaid" }, graph.mermaid)));
    }
  } catch (err) {
    graphBox.replaceChildren(h("p", { class: "muted" }, "No graph: the workflow is not served."));
  }
  follow(runId, events, eventsStatus, p);
  if (!FINAL.has(run.status)) every(1000, refresh);
}

// -- the event stream: fetch() streaming (the token goes in a header, not the URL) -----------

async function follow(runId, list, label, p) {
  const abort = new AbortController();
  p.aborts.push(abort);
  let lastId = null;
  let stopped = false;
  let failures = 0;
  const say = (text, cls) => { label.textContent = text; label.className = cls || "muted"; };
  while (p.alive) {
    try {
      const hs = headers({ Accept: "text/event-stream" });
      if (lastId !== null) hs["Last-Event-ID"] = lastId; // resume after the last one seen
      const response = await fetch(`/api/runs/${enc(runId)}/events`,
        { headers: hs, signal: abort.signal });
      if (response.status === 401) { askToken(); return; }
      if (!response.ok) { say(`(error ${response.status})`); return; }
      say("● live", "live");
      failures = 0;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const ev = parseEvent(block);
          if (!ev) continue;
          lastId = ev.id;
          stopped = ev.event === "StopEvent";
          list.append(h("li", { "data-testid": "event", "data-event-id": ev.id },
            h("span", { class: "id" }, `#${ev.id}`), h("b", {}, ev.event), " ",
            h("span", { class: "mono" }, JSON.stringify(ev.data.data ?? ev.data))));
          list.scrollTop = list.scrollHeight;
        }
      }
      // the server ends a stream with its run; a proxy may cut it sooner: then resume
      const run = stopped ? null : await api(`/api/runs/${enc(runId)}`, { quiet: true });
      if (stopped || FINAL.has(run.status)) {
        say("(ended: the run has finished)");
        return;
      }
      throw new Error("the stream ended before the run");
    } catch (err) {
      if (!p.alive) return;
      if (err instanceof ApiError && err.status === 401) return; // asked for the token
      failures += 1;
      say("(reconnecting…)", "reconnecting");
      await sleep(Math.min(250 * 2 ** failures, 10000)); // 0.5 s, 1 s, 2 s … 10 s
    }
  }
}

function parseEvent(block) {
  const ev = { id: null, event: "message", data: "" };
  let any = false;
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a keep-alive comment
    const at = line.indexOf(":");
    const key = at < 0 ? line : line.slice(0, at);
    const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
    if (key === "id") ev.id = value;
    else if (key === "event") ev.event = value;
    else if (key === "data") ev.data += (ev.data ? "\n" : "") + value;
    else continue;
    any = true;
  }
  if (!any || ev.id === null) return null;
  try { ev.data = JSON.parse(ev.data); } catch (err) { /* keep the text */ }
  return ev;
}

// -- the step graph as SVG, laid out in the layers the API gives --------------------------------

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

function drawGraph(box, graph, run) {
  const W = 160, H = 34, GX = 24, GY = 46;
  const kinds = Object.fromEntries(graph.events.map((e) => [`event:${e.name}`, e.kind]));
  const waitingSteps = new Set((run.waiting_for || []).map((w) => w.step));
  const runningSteps = new Set(run.running_steps || []);
  const widest = Math.max(1, ...graph.layers.map((l) => l.length));
  const width = widest * (W + GX) + GX;
  const height = graph.layers.length * (H + GY) + GY / 2;
  const pos = {};
  graph.layers.forEach((layer, row) => {
    const offset = (width - layer.length * (W + GX) + GX) / 2;
    layer.forEach((ref, col) => { pos[ref] = [offset + col * (W + GX), GY / 2 + row * (H + GY)]; });
  });
  const fill = { start: "#d7f5dd", stop: "#f9d9d9", outside: "#fff3c4", internal: "#eef" };
  const svg = s("svg", { class: "graph", viewBox: `0 0 ${width} ${height}`, width, height,
    "data-testid": "graph-svg" },
  s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" },
  s("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#555" }))));
  for (const edge of graph.edges) {
    const a = pos[edge.source], b = pos[edge.target];
    if (!a || !b) continue;
    const down = b[1] > a[1];
    svg.append(s("line", { x1: a[0] + W / 2, y1: down ? a[1] + H : a[1], x2: b[0] + W / 2,
      y2: down ? b[1] : b[1] + H, stroke: "#555", "marker-end": "url(#arrow)" }));
  }
  for (const [ref, [x, y]] of Object.entries(pos)) {
    const [kind, ...rest] = ref.split(":");
    const name = rest.join(":");
    let cls = `node ${kind}`;
    if (kind === "step" && waitingSteps.has(name)) cls += " waiting";
    if (kind === "step" && runningSteps.has(name)) cls += " running";
    const label = name.length > 22 ? `${name.slice(0, 21)}…` : name;
    svg.append(s("g", { class: cls, "data-ref": ref },
      s("title", {}, `${kind === "step" ? "step" : `${kinds[ref]} event`} ${name}`),
      s("rect", { x, y, width: W, height: H, rx: kind === "step" ? 4 : 17,
        fill: kind === "step" ? "#dde8ff" : fill[kinds[ref]] || "#eee" }),
      s("text", { x: x + W / 2, y: y + H / 2 + 5, "text-anchor": "middle" }, label)));
  }
  box.replaceChildren(svg);
}

// -- start ---------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("#token-input").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("#token-input").value = "";
    $("#token-form").hidden = true;
    showTokenState();
    route();
  });
  $("#token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenState();
    route();
  });
  showTokenState();
  window.addEventListener("hashchange", route);
  route();
});
