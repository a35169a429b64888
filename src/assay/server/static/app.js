// assay labelling page: plain JS, no build step. Talks to the REST API under /api (same origin; when the
// server has a token, the browser holds it in an HttpOnly cookie set by /?token=..., so nothing here sees it).
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  concept: null, batch: null, answers: new Map(), undo: [], cursor: 0,
  pending: null, // {id, body}: a submission not yet acknowledged; a retry of the same body reuses its id
  sent: new Map(), // item id -> the answer the server acknowledged (this batch view)
  inflight: false, // a submission is on its way: answers given meanwhile are sent right after it
  view: "label", polling: false,
};

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function unsentAnswers() {
  return [...state.answers].filter(([id, v]) => state.sent.get(id) !== v);
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function status(msg, error = false) {
  const s = $("#status");
  s.textContent = msg;
  s.classList.toggle("error", error);
}

function clearError() {
  if ($("#status").classList.contains("error")) status("");
}

function busy(on, text) {
  $("#busy").hidden = !on;
  if (text) $("#busy-text").textContent = text;
}

async function api(path, opts = {}) {
  const init = { method: opts.method || "GET", headers: {}, credentials: "same-origin" };
  if (opts.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.body);
  }
  const r = await fetch(path, init);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (!r.ok) {
    let detail = data && data.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    if (r.status === 401) detail = "not signed in: open this page once as /?token=YOUR_TOKEN";
    const err = new Error(detail || `HTTP ${r.status}`);
    err.status = r.status;
    throw err;
  }
  return data;
}

function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  const a = new Uint8Array(16);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ------------------------------------------------------------------------------------------ concepts
function leaveConcept(next) {
  // Answers belong to the concept's batch: switching concept drops the unsent ones, so ask first.
  const n = unsentAnswers().length;
  if (n && next !== state.concept &&
      !confirm(`${plural(n, "answer")} for ${state.concept} not sent yet. Drop them and switch to ${next}?`)) return false;
  if (next !== state.concept) { state.answers = new Map(); state.sent = new Map(); state.undo = []; }
  return true;
}

async function loadConcepts(select) {
  const data = await api("/api/concepts");
  const sel = $("#concept");
  sel.replaceChildren();
  for (const c of data.concepts) sel.append(el("option", { value: c.name, text: `${c.name} (${c.labels} labels)` }));
  const saved = select || sessionStorage.getItem("assay.concept");
  const names = data.concepts.map((c) => c.name);
  const next = names.includes(saved) ? saved : names[0] || null;
  if (next !== state.concept) { state.answers = new Map(); state.sent = new Map(); state.undo = []; }
  state.concept = next;
  if (state.concept) sel.value = state.concept;
  if (!state.concept) status("no concepts yet: create one above (a name and, optionally, a text query)");
  await showView(state.view);
}

async function createConcept(ev) {
  ev.preventDefault();
  const name = $("#new-name").value.trim();
  const text = $("#new-text").value.trim();
  if (!name) return status("give the new concept a name", true);
  if (!leaveConcept(name)) return;
  try {
    await api("/api/concepts", { method: "POST", body: text ? { name, text } : { name } });
    $("#new-name").value = ""; $("#new-text").value = "";
    sessionStorage.setItem("assay.concept", name);
    await loadConcepts(name);
    status(`concept ${name} created; propose a first batch`);
  } catch (e) { status(e.message, true); }
}

// ------------------------------------------------------------------------------------------ the batch
async function loadBatch(keep = null) {
  // keep: answers (item id -> value) not yet saved, carried over to the items of the new batch that hold them
  const grid = $("#grid");
  if (!state.concept) { grid.replaceChildren(); return 0; }
  let batch = null;
  try {
    batch = await api(`/api/concepts/${encodeURIComponent(state.concept)}/rounds/latest`);
  } catch (e) {
    if (e.status !== 404) { status(e.message, true); return 0; }
  }
  if (!keep) clearError();
  const prevUndo = state.undo;
  state.batch = batch;
  state.answers = new Map();
  state.sent = new Map();
  state.undo = [];
  state.cursor = 0;
  state.pending = null;
  let kept = 0;
  if (batch && keep) {
    const ids = new Set(batch.items.map((it) => it.id));
    for (const [id, v] of keep) if (ids.has(id)) { state.answers.set(id, v); kept++; }
    state.undo = prevUndo.filter((u) => ids.has(u.id) && state.answers.has(u.id)); // undo still reaches them
  }
  if (!batch) {
    grid.replaceChildren();
    $("#round-info").textContent = "no batch yet";
    $("#propose").hidden = false;
    updateCounts();
    return 0;
  }
  // start on the first item nobody has answered yet (on the server, or on this page and not sent yet)
  const first = batch.items.findIndex((it) => it.label === null && !it.skipped);
  const open = batch.items.findIndex((it) => it.label === null && !it.skipped && !state.answers.has(it.id));
  state.cursor = open >= 0 ? open : first >= 0 ? first : 0;
  $("#round-info").textContent = `round ${batch.round} · ${batch.strategy} · ${batch.items.length} items`;
  $("#propose").hidden = first >= 0;
  renderGrid();
  const p = await api(`/api/concepts/${encodeURIComponent(state.concept)}/proposer`);
  if (p.state === "running") pollProposer();
  return kept;
}

function regionOverlay(region) {
  // An SVG over the thumbnail with the image's own coordinates: "meet" letterboxes exactly like object-fit: contain.
  const NS = "http://www.w3.org/2000/svg";
  const [w, h] = region.image_size, [x0, y0, x1, y1] = region.box;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "region");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  const rect = document.createElementNS(NS, "rect");
  for (const [k, v] of Object.entries({ x: x0, y: y0, width: x1 - x0, height: y1 - y0 })) rect.setAttribute(k, String(v));
  rect.setAttribute("vector-effect", "non-scaling-stroke");
  svg.append(rect);
  return svg;
}

function card(it, idx, { labelling }) {
  let media = it.thumb
    ? el("img", { src: `${it.thumb}${it.thumb.includes("?") ? "&" : "?"}size=160`, alt: it.name, loading: "lazy", onerror: thumbFailed })
    : el("div", { class: "text", text: it.text || "" });
  if (it.thumb && it.region && it.region.box && it.region.image_size) {
    media = el("div", { class: "thumbwrap", title: `region ${it.region.box.join(", ")} triggered this proposal` },
      media, regionOverlay(it.region));
  }
  const pre = it.prelabel == null ? null : Number(it.prelabel);
  const meta = el("div", { class: "meta" },
    (labelling || pre != null) ? el("span", { class: "prelabel", title: "the model's P(yes)",
      text: pre == null ? "p = –" : `p = ${pre.toFixed(2)}` }) : el("span", { text: it.name, class: "name" }),
    labelling ? el("span", { class: "answer" }) : el("span", { text: it.score != null ? `sim ${Number(it.score).toFixed(3)}` : "" }),
    el("button", { class: "more", title: "more like this", text: "more like this",
      onclick: (ev) => { ev.stopPropagation(); moreLikeThis(it.id); } }));
  const c = el("div", { class: "card", "data-id": String(it.id), "data-idx": String(idx), "data-name": it.name },
    media, meta);
  if (labelling) { c.id = `card-${idx}`; c.setAttribute("role", "option"); }
  if (pre != null) {
    const fill = el("div");
    fill.style.width = `${Math.round(pre * 100)}%`;
    c.append(el("div", { class: "bar" }, fill));
  }
  if (it.conflict) {
    const who = it.answers.map((a) => `${a.annotator}: ${a.value ? "yes" : "no"}`).join(", ");
    c.append(el("span", { class: "conflict", title: `annotators disagree (${who})`, text: "conflict" }));
  }
  if (labelling && (it.label !== null || it.skipped)) {
    const by = it.answers.map((a) => `${a.annotator} ${a.value ? "yes" : "no"}`).join(", ");
    const skippers = [...new Set((it.skipped_by || []).map((k) => k.annotator))].join(", ");
    c.append(el("div", { class: "done", text: it.skipped && !by ? `skipped by ${skippers || "someone"}` : `answered: ${by}` }));
  }
  if (labelling) {
    c.addEventListener("click", () => { state.cursor = idx; renderMarks(); });
    const mark = (value, text, title) => el("button", { class: `mark mark-${value}`, text, title, type: "button",
      onclick: (ev) => { ev.stopPropagation(); state.cursor = idx; answer(value, false); } });
    c.append(el("div", { class: "marks" }, mark("yes", "yes", "yes (y)"), mark("no", "no", "no (n)"),
      mark("skip", "skip", "skip (s)")));
  }
  return c;
}

async function thumbFailed(ev) {
  // A thumbnail that cannot be made (a file gone or damaged since ingest): say why on the card.
  const img = ev.target;
  img.onerror = null;
  let why = "the image cannot be shown";
  try {
    const r = await fetch(img.src, { credentials: "same-origin" });
    const d = await r.json();
    if (d && d.detail) why = String(d.detail);
  } catch (_) { /* keep the generic reason */ }
  const card = img.closest(".card");
  if (card && !card.querySelector(".broken")) card.append(el("div", { class: "broken", text: `cannot show: ${why}` }));
}

function renderGrid() {
  const grid = $("#grid");
  grid.replaceChildren(...state.batch.items.map((it, i) => card(it, i, { labelling: true })));
  renderMarks();
}

function renderMarks() {
  const cards = $("#grid").children;
  for (let i = 0; i < cards.length; i++) {
    const c = cards[i];
    const a = state.answers.get(Number(c.dataset.id));
    c.classList.toggle("current", i === state.cursor);
    c.classList.toggle("yes", !!a && a.startsWith("yes"));
    c.classList.toggle("no", !!a && a.startsWith("no"));
    c.classList.toggle("skip", a === "skip");
    c.dataset.answer = a || "";
    c.querySelector(".answer").textContent = a || "";
    c.setAttribute("aria-selected", String(i === state.cursor));
    c.setAttribute("aria-label", `${c.dataset.name}: ${a || "no answer yet"}`);
  }
  $("#grid").setAttribute("aria-activedescendant", `card-${state.cursor}`);
  const cur = cards[state.cursor];
  if (cur && cur.scrollIntoView) cur.scrollIntoView({ block: "nearest" });
  updateCounts();
}

function updateCounts() {
  // Every item counts once: this page's answer where there is one, else what the server holds for it.
  const items = state.batch ? state.batch.items : [];
  let y = 0, no = 0, s = 0;
  for (const it of items) {
    const v = state.answers.get(it.id)
      ?? (it.label === 1 ? "yes" : it.label === 0 ? "no" : it.skipped ? "skip" : null);
    if (v == null) continue;
    if (v.startsWith("yes")) y++; else if (v.startsWith("no")) no++; else s++;
  }
  const unsent = unsentAnswers().length;
  $("#counts").textContent = items.length
    ? `${y} yes · ${no} no · ${s} skipped · ${items.length - y - no - s} to go` + (unsent ? ` · ${unsent} not sent` : "")
    : "";
  $("#submit").disabled = unsent === 0 || state.inflight;
}

function answer(value, advance = true) {
  if (!state.batch || !state.batch.items.length) return;
  const it = state.batch.items[state.cursor];
  state.undo.push({ id: it.id, prev: state.answers.get(it.id), cursor: state.cursor });
  if (value.endsWith("+box") && !(it.region && it.region.slot != null)) value = value.slice(0, -4); // no box: an image answer
  state.answers.set(it.id, value);
  if (advance && state.cursor < state.batch.items.length - 1) state.cursor++;
  renderMarks();
}

function undo() {
  const last = state.undo.pop();
  if (!last) return status("nothing to undo");
  if (last.prev === undefined) state.answers.delete(last.id); else state.answers.set(last.id, last.prev);
  state.cursor = last.cursor;
  renderMarks();
}

function columns() {
  const cards = $("#grid").children;
  if (!cards.length) return 1;
  const top = cards[0].offsetTop;
  let n = 0;
  while (n < cards.length && cards[n].offsetTop === top) n++;
  return Math.max(1, n);
}

function move(delta) {
  if (!state.batch) return;
  const n = state.batch.items.length;
  state.cursor = Math.min(n - 1, Math.max(0, state.cursor + delta));
  renderMarks();
}

async function submit() {
  if (!state.batch) return;
  if (state.inflight) return; // the answers given meanwhile are sent when this one returns
  const unsent = unsentAnswers();
  if (!unsent.length) return;
  const annotator = $("#annotator").value.trim();
  if (!annotator) { $("#annotator").focus(); return status("type your name (annotator) first, then press Enter again", true); }
  const labels = [], skipped = [];
  for (const [id, v] of unsent) {
    if (v === "skip") { skipped.push(id); continue; }
    const lab = { item_id: id, value: v.startsWith("yes") ? 1 : 0 };
    if (v.endsWith("+box")) {
      const it = state.batch.items.find((x) => x.id === id);
      if (it && it.region && it.region.slot != null) lab.region_slot = it.region.slot; // ids exceed JS integers; slots do not
    }
    labels.push(lab);
  }
  const body = { annotator, round: state.batch.round, labels, skipped };
  const key = JSON.stringify(body);
  if (!state.pending || state.pending.body !== key) state.pending = { id: newId().replace(/[^A-Za-z0-9_-]/g, ""), body: key };
  state.inflight = true;
  updateCounts();
  let res;
  try {
    res = await api(`/api/concepts/${encodeURIComponent(state.concept)}/labels`, {
      method: "POST", body: { submission_id: state.pending.id, ...body } });
  } catch (e) {
    state.inflight = false;
    if (e.status === 409 && /stale/.test(e.message)) {
      // The batch moved on: keep every answer whose item is in the latest batch, say what could not be kept.
      const kept = await loadBatch(new Map(unsent));
      const lost = unsent.length - kept;
      return status(`round ${body.round} closed before these answers were sent; ${plural(kept, "answer")} kept for ` +
        `items of the new batch (Enter to send)` + (lost > 0 ? `, ${plural(lost, "answer")} for items no longer ` +
        "in a batch dropped (those items come back in a later round)" : ""), lost > 0);
    }
    updateCounts();
    return status(`not saved: ${e.message}` + (e.status ? "" : " (network; press Enter to retry)"), true);
  }
  state.inflight = false;
  state.pending = null;
  localStorage.setItem("assay.annotator", annotator); // remembered once the server took it
  for (const [id, v] of unsent) state.sent.set(id, v);
  document.body.dataset.submitted = String(Number(document.body.dataset.submitted || 0) + 1);
  if (unsentAnswers().length) {
    // answers given while this one was on its way: send them now, before the batch reloads
    status(`saved ${plural(res.recorded, "answer")}; sending the answers given meanwhile`);
    return submit();
  }
  status(`saved ${plural(res.recorded, "answer")} for round ${res.round}` +
    (res.complete ? "" : ` · ${plural(res.remaining, "item")} of the batch still open`));
  if (res.next && res.next.state === "running") await pollProposer();
  else await loadBatch();
}

async function propose() {
  try {
    await api(`/api/concepts/${encodeURIComponent(state.concept)}/rounds`, { method: "POST", body: {} });
    clearError();
    await pollProposer();
    if (state.batch && !$("#status").classList.contains("error")) {
      status(`round ${state.batch.round} proposed: ${plural(state.batch.items.length, "item")} to label`);
    }
  } catch (e) { status(e.message, true); }
}

async function pollProposer() {
  if (state.polling) return;
  state.polling = true;
  const t0 = Date.now();
  try {
    for (;;) {
      busy(true, `proposing the next batch (retrain + select)… ${Math.round((Date.now() - t0) / 1000)} s`);
      const p = await api(`/api/concepts/${encodeURIComponent(state.concept)}/proposer?wait=2`);
      if (p.state !== "running") {
        if (p.state === "error") status(`proposing failed: ${p.error}`, true);
        else clearError();
        break;
      }
    }
  } catch (e) { status(e.message, true); }
  finally { state.polling = false; busy(false); }
  await loadBatch();
}

// ------------------------------------------------------------------------------------------ search
async function runSearch(params, label) {
  $("#search-info").textContent = "searching…";
  try {
    const data = await api(`/api/search?${new URLSearchParams({ ...params, k: "24" })}`);
    $("#results").replaceChildren(...data.hits.map((h, i) => card(h, i, { labelling: false })));
    const matched = data.matched ? ` (read as: ${data.matched})` : "";
    $("#search-info").textContent = `${data.hits.length} results for ${label}${matched}`;
  } catch (e) { $("#search-info").textContent = ""; status(e.message, true); }
}

function moreLikeThis(id) {
  showView("search");
  runSearch({ item: String(id) }, `more like item ${id}`);
}

// ------------------------------------------------------------------------------------------ progress
function lineChart(series, { title, ylabel }) {
  const W = 360, H = 180, P = 30;
  const pts = series.flatMap((s) => s.points);
  const maxX = Math.max(1, ...pts.map((p) => p[0])), maxY = Math.max(1e-9, ...pts.map((p) => p[1]));
  const sx = (x) => P + (x / maxX) * (W - 2 * P), sy = (y) => H - P - (y / maxY) * (H - 2 * P);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    svg.append(e);
  };
  add("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, class: "axis" });
  add("line", { x1: P, y1: P, x2: P, y2: H - P, class: "axis" });
  add("text", { x: P, y: P - 8 }, `${ylabel} (max ${Number(maxY.toFixed(3))})`);
  add("text", { x: W - P - 60, y: H - 8 }, `${series[0].xlabel} (max ${maxX})`);
  series.forEach((s, k) => {
    if (!s.points.length) return;
    add("polyline", { class: k ? "line2" : "line", points: s.points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" ") });
    for (const p of s.points) add("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, class: k ? "dot2" : "dot" });
  });
  return el("figure", {}, svg, el("figcaption", { text: title }));
}

async function loadProgress() {
  if (!state.concept) return;
  try {
    const [p, c] = await Promise.all([
      api(`/api/concepts/${encodeURIComponent(state.concept)}/progress`),
      api(`/api/concepts/${encodeURIComponent(state.concept)}/conflicts`)]);
    const q = p.quality_estimate;
    const stat = (label, value) => el("div", {}, el("b", { text: String(value) }), el("span", { text: label }));
    $("#stats").replaceChildren(
      stat("labels spent", p.labels_spent), stat("items labelled", p.labelled_items),
      stat("positives found", p.positives_found), stat("rounds", p.rounds.length),
      stat("pre-label accuracy (latest)", q ? `${(q.accuracy * 100).toFixed(0)} %` : "–"),
      stat("annotators", p.annotators.length), stat("conflicts", c.count));
    const hr = p.rounds.filter((r) => r.hit_rate != null).map((r) => [r.round, r.hit_rate]);
    const acc = p.rounds.filter((r) => r.prelabel_quality).map((r) => [r.round, r.prelabel_quality.accuracy]);
    $("#charts").replaceChildren(
      lineChart([{ points: p.curve.map((c) => [c.labels_spent, c.positives_found]), xlabel: "labels" }],
        { title: "positives found vs labels spent", ylabel: "positives" }),
      lineChart([{ points: hr, xlabel: "round" }, { points: acc, xlabel: "round" }],
        { title: "per round: hit rate (blue), pre-label accuracy (green)", ylabel: "rate" }));
    const head = el("tr", {}, ...["round", "strategy", "proposed", "answered", "positives", "pool", "seconds"].map((h) => el("th", { text: h })));
    $("#rounds-table").replaceChildren(head, ...p.rounds.map((r) => el("tr", {},
      ...[r.round, r.strategy, r.proposed, r.answered, r.positives, r.pool_size ?? "", r.seconds ?? ""].map((v) => el("td", { text: String(v) })))));
    $("#conflicts").replaceChildren(...(c.conflicts.length ? c.conflicts.map((x) => el("div", {
      text: `item ${x.item_id}: ` + x.answers.map((a) => `${a.annotator} ${a.value ? "yes" : "no"}`).join(", ") })) : [el("span", { text: "none" })]));
  } catch (e) { status(e.message, true); }
}

// ------------------------------------------------------------------------------------------ wiring
async function showView(view) {
  state.view = view;
  for (const v of ["label", "search", "progress"]) $(`#view-${v}`).hidden = v !== view;
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.view === view));
  if (view === "label" && !state.inflight) {
    // answers not sent yet stay, for the items still in the (possibly newer) batch
    const unsent = unsentAnswers();
    const kept = await loadBatch(unsent.length ? new Map(unsent) : null);
    if (unsent.length && kept < unsent.length) {
      status(`${plural(unsent.length - kept, "unsent answer")} dropped: the batch moved on and those items are no ` +
        "longer in it (they come back in a later round)", true);
    }
  }
  if (view === "progress") await loadProgress();
}

function onKey(ev) {
  const tag = (ev.target && ev.target.tagName) || "";
  if (["INPUT", "SELECT", "TEXTAREA"].includes(tag) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (["BUTTON", "A", "SUMMARY"].includes(tag) && (ev.key === "Enter" || ev.key === " ")) return; // the control's own action
  if (state.view !== "label") return;
  const k = ev.key;
  if (k === "y") answer("yes");
  else if (k === "n") answer("no");
  else if (k === "Y") answer("yes+box");
  else if (k === "N") answer("no+box");
  else if (k === "s") answer("skip");
  else if (k === "u") undo();
  else if (k === "ArrowRight") move(1);
  else if (k === "ArrowLeft") move(-1);
  else if (k === "ArrowDown") move(columns());
  else if (k === "ArrowUp") move(-columns());
  else if (k === "Enter") submit();
  else return;
  ev.preventDefault();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#annotator").value = localStorage.getItem("assay.annotator") || "";
  window.addEventListener("beforeunload", (ev) => {
    // answers given on this page and not yet saved would be lost: ask first
    if (unsentAnswers().length) { ev.preventDefault(); ev.returnValue = ""; }
  });
  $("#annotator").addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.target.blur(); submit(); } });
  $("#concept").addEventListener("change", (ev) => {
    if (!leaveConcept(ev.target.value)) { ev.target.value = state.concept; return; }
    state.concept = ev.target.value;
    sessionStorage.setItem("assay.concept", state.concept);
    showView(state.view);
  });
  $("#new-concept").addEventListener("submit", createConcept);
  document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => showView(b.dataset.view)));
  $("#submit").addEventListener("click", submit);
  $("#undo").addEventListener("click", undo);
  $("#propose").addEventListener("click", propose);
  $("#search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("#search-text").value.trim();
    if (text) runSearch({ text }, `"${text}"`);
  });
  document.addEventListener("keydown", onKey);
  loadConcepts().then(() => { document.body.dataset.ready = "1"; }).catch((e) => status(e.message, true));
});
