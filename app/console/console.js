// zhrag operator console: plain DOM over the server's own API (same origin, no dependencies, no build step).
// Everything shown from the server is set as text, never as HTML.
"use strict";

const KEY = "zhrag.console.key";
const PAGE = 20;
const REASONS = {
  "no law named": "未写明法律名称",
  "unknown law": "未知的法律",
  "law not in index": "索引中没有这部法律",
  "article not in index": "索引中没有这一条",
  "no such article": "该法律没有这一条",
  "the filter excludes this article": "过滤条件排除了这一条",
};
const ROLE_NAMES = { read: "只读", write: "可写", admin: "管理员" };
const state = { bases: [], base: null, offset: 0, total: 0, query: "", timer: null };

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  return node;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const message = body?.error?.message || `${response.status} ${response.statusText}`;
    if (response.status === 401) showLogin("需要访问密钥");
    throw new ApiError(response.status, message);
  }
  return { status: response.status, body };
}

const basePath = (suffix) => `/kbs/${encodeURIComponent(state.base.name)}${suffix}`;
const canWrite = () => state.base && ["write", "admin"].includes(state.base.role);

// ---- login -------------------------------------------------------------------------------------------
function showLogin(message = "") {
  $("login").hidden = false;
  for (const id of ["tabs", "who", "view-bases", "view-search", "view-health"]) $(id).hidden = true;
  $("login-error").textContent = message;
  $("key").focus();
}

async function start() {
  let bases;
  try {
    bases = (await api("/kbs")).body.kbs;
  } catch (error) {
    if (error.status !== 401) showLogin(error.status === 403 ? "密钥无效或无权访问" : `无法连接服务：${error.message}`);
    return;
  }
  state.bases = bases;
  $("login").hidden = true;
  $("tabs").hidden = false;
  $("who").hidden = false;
  const select = $("base");
  select.replaceChildren(...bases.map((b) => el("option", { value: b.name }, b.name)));
  const chosen = bases.find((b) => b.default) || bases[0];
  if (chosen) select.value = chosen.name;
  selectBase(select.value);
  renderBases();
  showTab(location.hash.replace("#", "") || "bases");
}

function selectBase(name) {
  state.base = state.bases.find((b) => b.name === name) || null;
  $("role").textContent = state.base ? ROLE_NAMES[state.base.role] || state.base.role : "";
  // Controls a key may not use are not rendered at all.
  $("upload").hidden = !canWrite();
  for (const cell of document.querySelectorAll(".write-only")) cell.hidden = !canWrite();
  state.offset = 0;
  if (state.base?.ready) loadDocuments();
}

// ---- tabs --------------------------------------------------------------------------------------------
function showTab(name) {
  if (!["bases", "search", "health"].includes(name)) name = "bases";
  for (const tab of ["bases", "search", "health"]) {
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`view-${tab}`).hidden = tab !== name;
  }
  history.replaceState(null, "", `#${name}`);
  clearInterval(state.timer);
  if (name === "health") {
    loadHealth();
    state.timer = setInterval(loadHealth, 5000);
  }
}

// ---- bases and documents -----------------------------------------------------------------------------
function renderBases() {
  $("bases-table").tBodies[0].replaceChildren(
    ...state.bases.map((b) =>
      el("tr", {},
        el("td", {}, b.name + (b.default ? "（默认）" : "")),
        el("td", { class: "wrap wide-only" }, b.ready ? b.model : `未加载：${b.error || ""}`),
        el("td", {}, b.domain ?? ""),
        el("td", {}, b.documents ?? ""),
        el("td", {}, b.chunks ?? ""),
        el("td", {}, b.version ?? ""),
        el("td", { class: "wide-only" }, b.updated_at ? new Date(b.updated_at).toLocaleString("zh-CN") : ""),
        el("td", {}, ROLE_NAMES[b.role] || b.role),
      ),
    ),
  );
}

async function refreshBases() {
  state.bases = (await api("/kbs")).body.kbs;
  state.base = state.bases.find((b) => b.name === state.base?.name) || state.base;
  renderBases();
}

async function loadDocuments() {
  const params = new URLSearchParams({ offset: state.offset, limit: PAGE, q: state.query });
  const page = (await api(basePath(`/documents?${params}`))).body;
  state.total = page.total;
  $("docs-table").tBodies[0].replaceChildren(
    ...page.documents.map((d) =>
      el("tr", {},
        el("td", { class: "wrap" }, d.doc_id),
        el("td", { class: "wrap" }, d.source),
        el("td", {}, d.chunks),
        el("td", {}, d.pages ?? "—"),
        canWrite()
          ? el("td", {}, el("button", { type: "button", class: "danger", "aria-label": `删除 ${d.doc_id}`, onclick: () => removeDocument(d.doc_id) }, "删除"))
          : "",
      ),
    ),
  );
  const pages = Math.max(1, Math.ceil(state.total / PAGE));
  $("page-info").textContent = `第 ${Math.floor(state.offset / PAGE) + 1} / ${pages} 页，共 ${state.total} 个文档`;
  $("prev").disabled = state.offset === 0;
  $("next").disabled = state.offset + PAGE >= state.total;
}

function confirmDialog(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

async function removeDocument(docId) {
  if (!(await confirmDialog(`确认从知识库“${state.base.name}”删除文档“${docId}”？此操作会发布新的索引版本。`))) return;
  const result = $("upload-result");
  try {
    const changed = await finished(await api(basePath(`/documents/${encodeURIComponent(docId)}`), { method: "DELETE" }));
    result.replaceChildren(el("p", { class: "ok" }, `已删除 ${docId}，当前版本 ${changed.version}`));
  } catch (error) {
    result.replaceChildren(el("p", { class: "error" }, `删除失败：${error.message}`));
  }
  await refreshBases();
  await loadDocuments();
}

// A write answers 200 when done within the server's wait, else 202 with a job to follow.
async function finished(answer) {
  let { status, body } = answer;
  while (status === 202) {
    await new Promise((r) => setTimeout(r, 1000));
    ({ status, body } = await api(basePath(`/jobs/${body.id}`)));
    if (body.state === "published") return body.result;
    if (body.state === "failed" || body.state === "cancelled") throw new ApiError(422, body.error || body.state);
    status = 202;
  }
  return body;
}

function upload(files) {
  if (!files.length || !canWrite()) return;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const bar = $("upload-progress");
  const result = $("upload-result");
  bar.hidden = false;
  bar.value = 0;
  result.replaceChildren(el("p", {}, `正在上传 ${files.length} 个文件……`));
  const request = new XMLHttpRequest(); // fetch cannot report upload progress
  request.open("POST", basePath("/documents"));
  for (const [name, value] of Object.entries(headers())) request.setRequestHeader(name, value);
  request.upload.onprogress = (event) => { if (event.lengthComputable) bar.value = (100 * event.loaded) / event.total; };
  request.onload = async () => {
    bar.value = 100;
    let body = null;
    try { body = JSON.parse(request.responseText); } catch { /* not JSON */ }
    try {
      if (request.status >= 400) throw new ApiError(request.status, body?.error?.message || request.statusText);
      showUploadResult(await finished({ status: request.status, body }));
    } catch (error) {
      result.replaceChildren(el("p", { class: "error" }, `上传未入库（没有发布任何变更）：${error.message}`));
    }
    bar.hidden = true;
    $("files").value = "";
    await refreshBases();
    await loadDocuments();
  };
  request.onerror = () => {
    bar.hidden = true;
    result.replaceChildren(el("p", { class: "error" }, "上传失败：网络错误"));
  };
  request.send(form);
}

function showUploadResult(changed) {
  const lines = [
    el("p", { class: "ok" },
      `已入库 ${changed.documents_indexed} 个文档（${changed.chunks} 个分块），未变 ${changed.documents_unchanged} 个；当前版本 ${changed.version}`),
  ];
  if (changed.warnings.length) {
    lines.push(el("p", {}, "提示："), el("ul", {}, ...changed.warnings.map((w) => el("li", {}, w))));
  }
  $("upload-result").replaceChildren(...lines);
}

// ---- try a question -----------------------------------------------------------------------------------
function parseHistory(text) {
  const messages = [];
  for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const match = line.match(/^(用户|助手|user|assistant)\s*[:：]\s*(.*)$/i);
    if (!match) throw new Error(`对话历史的这一行没有以“用户：”或“助手：”开头：${line}`);
    messages.push({ role: /^(用户|user)$/i.test(match[1]) ? "user" : "assistant", content: match[2] });
  }
  return messages;
}

function parseFilters(text) {
  const filters = {};
  for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`过滤条件应写成“字段=值”：${line}`);
    const [name, value] = [line.slice(0, at).trim(), line.slice(at + 1).trim()];
    const number = /^\d+$/.test(value) ? Number(value) : null;
    filters[name] = number ?? value;
  }
  return Object.keys(filters).length ? filters : null;
}

function highlighted(text, terms) {
  const words = terms.filter(Boolean);
  if (!words.length) return [text];
  const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const pattern = new RegExp(`(${escaped.join("|")})`, "g");
  return text.split(pattern).map((part, i) => (i % 2 ? el("mark", {}, part) : part));
}

function card(result, rank, terms) {
  const meta = result.metadata || {};
  const label = [meta.law, meta.article].filter(Boolean).join(" ") || result.title || result.doc_id;
  const pages = Array.isArray(meta.pages) ? (meta.pages[0] === meta.pages[1] ? `第${meta.pages[0]}页` : `第${meta.pages[0]}–${meta.pages[1]}页`) : "";
  const legs = Object.entries(result.ranks || {}).map(([leg, r]) => `${leg === "dense" ? "向量" : leg.toUpperCase()} 第${r}名`);
  return el("li", { class: "card" },
    el("header", {},
      el("span", { class: "rank" }, `#${rank}`),
      el("span", { class: "label" }, label),
      pages ? el("span", { class: "meta" }, pages) : "",
      el("span", { class: "meta" }, `得分 ${result.score.toFixed(4)}`),
      legs.length ? el("span", { class: "meta" }, legs.join(" · ")) : "",
      result.match === "citation" ? el("span", { class: "badge" }, "引用命中") : "",
    ),
    el("p", { class: "text" }, ...highlighted(result.text, terms)),
    el("p", { class: "meta" }, `来源：${result.source}`),
  );
}

function verdictText(c) {
  const law = c.law || c.title || c.law_text || "?";
  if (c.found) return `✓ 已找到：${law} ${c.article}`;
  const known = Object.keys(REASONS).find((r) => (c.reason || "").startsWith(r));
  const why = known ? REASONS[known] + c.reason.slice(known.length) : c.reason || "";
  return `✗ 未找到：${c.law_text || law} ${c.article}（${why}${c.replaced_by ? `，已由${c.replaced_by}取代` : ""}）`;
}

async function search(event) {
  event.preventDefault();
  $("search-error").textContent = "";
  let body;
  try {
    body = {
      query: $("q").value,
      top_k: Number($("top-k").value),
      mode: $("mode").value,
      expand: $("expand").value,
    };
    const messages = parseHistory($("history").value);
    if (messages.length) body.messages = messages;
    const filters = parseFilters($("filters").value);
    if (filters) body.filters = filters;
  } catch (error) {
    $("search-error").textContent = error.message;
    return;
  }
  try {
    const answer = (await api(basePath("/search"), {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    })).body;
    const meta = [el("p", {}, `${answer.mode}，${answer.took_ms} ms，执行的检索语句：`),
      el("ul", { class: "queries" }, ...answer.queries.map((q) => el("li", {}, q)))];
    if (answer.citations.length) {
      meta.push(el("p", {}, "问题中的引用："),
        el("ul", { class: "verdicts" }, ...answer.citations.map((c) => el("li", { class: c.found ? "ok" : "bad" }, verdictText(c)))));
    }
    $("search-meta").replaceChildren(...meta);
    $("results").replaceChildren(...(answer.results.length
      ? answer.results.map((r, i) => card(r, i + 1, answer.terms || []))
      : [el("li", {}, "没有结果")]));
  } catch (error) {
    $("search-error").textContent = `检索失败：${error.message}`;
  }
}

async function verify(event) {
  event.preventDefault();
  $("verify-error").textContent = "";
  try {
    const answer = (await api(basePath("/citations/verify"), {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text: $("answer").value }),
    })).body;
    $("verdicts").replaceChildren(...(answer.citations.length
      ? answer.citations.map((c) => el("li", { class: c.found ? "ok" : "bad" }, verdictText(c)))
      : [el("li", {}, "文本中没有《法律》第N条形式的引用")]));
  } catch (error) {
    $("verify-error").textContent = `核对失败：${error.message}`;
  }
}

// ---- health ------------------------------------------------------------------------------------------
async function loadHealth() {
  let status;
  try {
    status = (await api("/status")).body;
  } catch {
    return;
  }
  $("health-bases").tBodies[0].replaceChildren(...status.kbs.map((b) =>
    el("tr", {}, el("td", {}, b.name), el("td", {}, b.version), el("td", {}, b.store), el("td", {}, b.bm25 === "local" ? "本进程" : b.bm25 ?? "—"),
      el("td", {}, b.chunks), el("td", { class: "wrap wide-only" }, b.model), el("td", {}, b.model_loaded ? "是" : "否"))));
  const m = status.microbatch;
  $("microbatch").replaceChildren(
    el("dt", {}, "微批"), el("dd", {}, m.enabled ? "开启" : "关闭"),
    el("dt", {}, "每批上限"), el("dd", {}, `${m.max_texts} 条`),
    el("dt", {}, "最长等待"), el("dd", {}, `${m.wait_ms} ms`),
    el("dt", {}, "前向次数"), el("dd", {}, m.passes),
    el("dt", {}, "平均每批"), el("dd", {}, `${m.mean_texts} 条`),
  );
  $("latency").tBodies[0].replaceChildren(...(status.latency.length
    ? status.latency.map((r) => el("tr", {}, el("td", {}, r.route), el("td", {}, r.requests), el("td", {}, r.p50_ms ?? "—"), el("td", {}, r.p95_ms ?? "—"), el("td", {}, r.p99_ms ?? "—")))
    : [el("tr", {}, el("td", { colspan: "5" }, "还没有查询"))]));
  $("jobs").replaceChildren(...(status.jobs.length
    ? status.jobs.map((j) => el("li", {}, `${j.kb}：${j.kind === "add" ? "入库" : "删除"}（${j.state === "running" ? "进行中" : "排队中"}）`))
    : [el("li", {}, "没有进行中的写入")]));
}

// ---- wiring ------------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    start();
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(); });
  $("base").addEventListener("change", (event) => selectBase(event.target.value));
  for (const tab of ["bases", "search", "health"]) $(`tab-${tab}`).addEventListener("click", () => showTab(tab));
  $("doc-search").addEventListener("submit", (event) => {
    event.preventDefault();
    state.query = $("doc-q").value.trim();
    state.offset = 0;
    loadDocuments();
  });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadDocuments(); });
  $("next").addEventListener("click", () => { state.offset += PAGE; loadDocuments(); });
  $("files").addEventListener("change", (event) => upload([...event.target.files]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    upload([...event.dataTransfer.files]);
  });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("files").click(); });
  $("search-form").addEventListener("submit", search);
  $("verify-form").addEventListener("submit", verify);
  $("refresh").addEventListener("click", loadHealth);
  start();
});
