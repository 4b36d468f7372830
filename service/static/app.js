// The page: start a case or a consultation, watch its tools run from the event stream, read the result.
import { ApiError, followJob, getJSON, postForm, postJSON, request, streamTurn } from "./api.js";
import { citeLink, el, linked, renderDifferential, renderEvidence, renderReport, showEvidence, volumeViewer } from "./render.js";

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const KINDS = ["", "image", "volume", "audio", "pathology"];
const MODALITIES = ["", "CT", "MR", "XR", "US", "PET"];

// ---------------------------------------------------------------- shared bits

function showError(node, err) {
  node.textContent = err ? (err.message || String(err)) : "";
  node.hidden = !err;
}

function setMode(mode) {
  for (const [name, panel] of [["case", "case-panel"], ["chat", "chat-panel"]]) {
    $(`mode-${name}`).setAttribute("aria-pressed", String(name === mode));
    $(panel).hidden = name !== mode;
  }
}

// ---------------------------------------------------------------- the live tool list

const live = {
  reset(title) {
    $("live").hidden = false;
    $("live-title").textContent = title;
    $("calls").replaceChildren();
    $("log").replaceChildren();
    $("draft").replaceChildren();
    $("draft").hidden = true;
    $("status").textContent = "";
  },

  call(data) {
    let item = document.querySelector(`#calls li[data-call="${CSS.escape(data.call_id)}"]`);
    if (!item) {
      item = el("li", { "data-call": data.call_id, "data-tool": data.tool },
        el("span", { class: "state" }), el("span", { class: "tool" }), el("span", { class: "detail" }));
      $("calls").append(item);
    }
    const args = Object.entries(data.arguments || {}).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
    item.querySelector(".tool").textContent = `${data.call_id} ${data.tool}`;
    item.querySelector(".detail").textContent = [args.join(", "), data.reason].filter(Boolean).join(" — ");
    this.state(item, data.rejected ? "rejected" : "running", data.rejected ? data.rejection : null);
  },

  result(data) {
    const item = document.querySelector(`#calls li[data-call="${CSS.escape(data.call_id)}"]`);
    if (!item) return;
    const ids = data.evidence || data.evidence_ids || [];
    // The evidence ids link to their cards once the result is shown (the same links as the report's).
    const note = ids.length ? ["→ ", ...ids.flatMap((id, i) => (i ? [", ", citeLink(id, id)] : [citeLink(id, id)]))] : ["no evidence"];
    if (data.seconds !== undefined) note.push(` in ${Number(data.seconds).toFixed(2)} s`);
    this.state(item, data.error ? "error" : "done", note);
  },

  state(item, state, note) {
    item.className = state;
    item.dataset.state = state;
    item.querySelector(".state").textContent = state;
    let extra = item.querySelector(".note");
    if (note) {
      if (!extra) {
        extra = el("span", { class: "detail note" });
        item.append(extra);
      }
      extra.replaceChildren(...(Array.isArray(note) ? note : [note]));
    }
  },

  log(text) {
    $("log").append(el("li", { text }));
  },

  // One event of a job or turn stream.
  event({ event, data }) {
    switch (event) {
      case "status":
        $("status").textContent = `Status: ${data.status}${data.reason ? ` — ${data.reason}` : ""}`;
        break;
      case "progress":
        this.log(data.text);
        break;
      case "text":
        $("draft").hidden = false;
        $("draft").append(`${data.text} `);
        break;
      case "case_loaded":
        this.log(`case loaded: ${(data.attachments || []).map((a) => `${a.id} (${a.kind})`).join(", ") || "no attachments"}`);
        break;
      case "plan":
        this.log(`plan step ${data.step} (${data.planner}): ${(data.calls || []).join(", ")}`);
        break;
      case "tool_call":
        this.call(data);
        break;
      case "tool_result":
        this.result(data);
        break;
      case "error":
        this.log(`error: ${data.message}`);
        if (data.call_id) {
          const item = document.querySelector(`#calls li[data-call="${CSS.escape(data.call_id)}"]`);
          if (item) this.state(item, "error", data.message);
        }
        break;
      case "llm_turn":
        this.log(`${data.role} turn (${data.model}) in ${Number(data.seconds).toFixed(1)} s`);
        break;
      case "grounding":
        this.log(`grounding: ${data.status}`);
        break;
      case "end":
        $("status").textContent = `Finished: ${data.status}${data.reason ? ` — ${data.reason}` : ""}`;
        break;
      default:
        break;
    }
  },
};

// ---------------------------------------------------------------- the result

async function showResult(result, { fileBase, volumes = [], downloads = [] }) {
  $("result").hidden = false;
  $("downloads").replaceChildren(...downloads.flatMap(([label, href], i) => [i ? " · " : "", el("a", { href, download: "" }, label)]));
  $("report").replaceChildren(...renderReport(result));
  $("differential").replaceChildren(...renderDifferential(result));
  $("evidence").replaceChildren(...renderEvidence(result, (path) => `${fileBase}${path.split("/").map(enc).join("/")}`));
  $("volumes").replaceChildren();
  if (volumes.length) {
    $("volumes").append(el("h2", { text: "Volumes" }));
    for (const v of volumes) {
      try {
        const info = await getJSON(v.info);
        $("volumes").append(volumeViewer(v.id, info.slices, v.slice));
      } catch (err) {
        $("volumes").append(el("p", { class: "error", text: `Volume ${v.id}: ${err.message}` }));
      }
    }
  }
  const wanted = location.hash.slice(1);
  if (/^E\d+$/.test(wanted)) showEvidence(wanted);
}

function clearResult() {
  $("result").hidden = true;
  for (const id of ["report", "differential", "evidence", "volumes", "downloads"]) $(id).replaceChildren();
}

// ---------------------------------------------------------------- case jobs

const chosen = []; // {file, kind, modality}

function guessKind(name) {
  const n = name.toLowerCase();
  if (/\.(nii|nii\.gz|zip|dcm)$/.test(n)) return "volume";
  if (/\.(png|jpe?g)$/.test(n)) return "image";
  if (/\.(tiff?|svs)$/.test(n)) return "pathology";
  if (/\.(wav|flac)$/.test(n)) return "audio";
  return "";
}

function addFiles(files) {
  for (const file of files) {
    if (chosen.some((c) => c.file.name === file.name)) continue;
    chosen.push({ file, kind: "", modality: "" });
  }
  renderFiles();
}

function renderFiles() {
  $("file-list").replaceChildren(...chosen.map((c, i) => {
    const kindId = `kind-${i}`;
    const modId = `modality-${i}`;
    const kind = el("select", { id: kindId, "data-file": c.file.name, "data-role": "kind" },
      KINDS.map((k) => el("option", { value: k, selected: k === c.kind }, k || "detect")));
    kind.addEventListener("change", () => { c.kind = kind.value; });
    const modality = el("select", { id: modId, "data-file": c.file.name, "data-role": "modality" },
      MODALITIES.map((m) => el("option", { value: m, selected: m === c.modality }, m || "from file")));
    modality.addEventListener("change", () => { c.modality = modality.value; });
    const remove = el("button", { type: "button", class: "small", "aria-label": `remove ${c.file.name}` }, "Remove");
    remove.addEventListener("click", () => {
      chosen.splice(i, 1);
      renderFiles();
    });
    return el("li", {}, el("span", { class: "name", text: `${c.file.name} (${(c.file.size / 1024).toFixed(0)} KiB)` }),
      el("label", { for: kindId, text: "kind" }), kind, el("label", { for: modId, text: "modality" }), modality, remove);
  }));
}

// The upload form. Without a modality choice the server sniffs every file; a chosen modality (a NIfTI has none
// in its header) needs a case.json naming each attachment, so the page writes one.
function caseForm() {
  const form = new FormData();
  const history = $("history").value.trim();
  const question = $("question").value.trim();
  for (const c of chosen) form.append("files", c.file, c.file.name);
  if (chosen.some((c) => c.modality)) {
    const attachments = chosen.map((c, i) => {
      const kind = c.kind || guessKind(c.file.name);
      if (!kind) throw new Error(`${c.file.name}: choose its kind (the page sends a case.json once a modality is chosen)`);
      const stored = c.file.name.toLowerCase().endsWith(".zip") ? c.file.name.slice(0, -4) : c.file.name;
      const a = { id: `a${i + 1}`, kind, path: stored };
      if (c.modality) a.modality = c.modality;
      return a;
    });
    const theCase = { id: `web-${Date.now().toString(36)}`, attachments };
    if (history) theCase.history = history;
    if (question) theCase.question = question;
    form.append("case", JSON.stringify(theCase));
  } else {
    if (history) form.append("history", history);
    if (question) form.append("question", question);
    const kinds = Object.fromEntries(chosen.filter((c) => c.kind).map((c) => [c.file.name, c.kind]));
    if (Object.keys(kinds).length) form.append("kinds", JSON.stringify(kinds));
  }
  return form;
}

let following = null; // AbortController of the job stream shown

// keepHash: a link such as ?job=ID#E3 opens the job at that evidence card.
async function openJob(jobId, keepHash = false) {
  if (following) following.abort();
  following = new AbortController();
  const signal = following.signal;
  history.replaceState(null, "", `?job=${enc(jobId)}${keepHash ? location.hash : ""}`);
  live.reset(`Tools — case ${jobId}`);
  clearResult();
  $("cancel").hidden = false;
  $("cancel").onclick = async () => {
    try {
      await postJSON(`/api/jobs/${enc(jobId)}/cancel`);
    } catch (err) {
      live.log(`cancel: ${err.message}`);
    }
  };
  let end;
  try {
    end = await followJob(jobId, (ev) => live.event(ev), signal);
  } catch (err) {
    if (err.name === "AbortError") return;
    $("status").textContent = `Could not follow case ${jobId}: ${err.message}`;
    return;
  }
  $("cancel").hidden = true;
  refreshJobs();
  if (!end || end.status !== "done") return;
  const base = `/api/jobs/${enc(jobId)}`;
  const [result, theCase] = await Promise.all([getJSON(`${base}/result`), getJSON(`${base}/case`).catch(() => null)]);
  if (signal.aborted) return;
  const volumes = ((theCase && theCase.attachments) || []).filter((a) => a.kind === "volume").map((a) => ({
    id: a.id, info: `${base}/volumes/${enc(a.id)}`, slice: (k) => `${base}/volumes/${enc(a.id)}/${k}.png`,
  }));
  await showResult(result, {
    fileBase: `${base}/files/`, volumes,
    downloads: [["report.md", `${base}/report`], ["result.json", `${base}/result`], ["trace.jsonl", `${base}/trace`],
      ["case.json", `${base}/case`]],
  });
}

async function refreshJobs() {
  try {
    const { jobs } = await getJSON("/api/jobs");
    $("jobs").replaceChildren(...jobs.slice(0, 15).map((j) => el("li", {},
      el("button", { type: "button", class: "small", "data-job": j.id, onclick: () => openJob(j.id) },
        `${j.case_id} · ${j.status}${j.created ? ` · ${j.created.slice(0, 16).replace("T", " ")}` : ""}`))));
    if (!jobs.length) $("jobs").append(el("li", { class: "muted", text: "No cases yet." }));
  } catch (err) {
    $("jobs").replaceChildren(el("li", { class: "error", text: err.message }));
  }
}

async function startCase(event) {
  event.preventDefault();
  showError($("case-error"), null);
  $("start").disabled = true;
  try {
    if (!chosen.length && !$("history").value.trim()) throw new Error("Give a history or at least one file.");
    const job = await postForm("/api/jobs", caseForm());
    chosen.length = 0;
    renderFiles();
    $("files").value = "";
    openJob(job.id);
  } catch (err) {
    showError($("case-error"), err);
  } finally {
    $("start").disabled = false;
  }
}

// ---------------------------------------------------------------- consultations

let sessionId = null;

// The assistant's turns cite evidence ([E3]) like the report does; those become links to the cards.
function turnItem(role, text) {
  return el("li", { class: role }, el("span", { class: "who", text: role === "user" ? "You" : "medagent" }),
    role === "user" ? text : linked(text));
}

async function refreshSessions() {
  try {
    const { sessions } = await getJSON("/api/sessions");
    $("sessions").replaceChildren(...sessions.slice(0, 15).map((s) => el("li", { class: "row" },
      el("button", { type: "button", class: "small", "data-session": s.id, onclick: () => openSession(s.id) },
        s.damaged ? `${s.id} (damaged)` : `${s.id} · ${s.turns} turns${s.updated ? ` · ${s.updated.slice(0, 16).replace("T", " ")}` : ""}`),
      el("button", { type: "button", class: "small", "aria-label": `delete consultation ${s.id}`, onclick: () => deleteSession(s.id) }, "Delete"))));
    if (!sessions.length) $("sessions").append(el("li", { class: "muted", text: "No consultations yet." }));
  } catch (err) {
    $("sessions").replaceChildren(el("li", { class: "error", text: err.message }));
  }
}

async function deleteSession(id) {
  if (!window.confirm(`Delete consultation ${id} and its files?`)) return;
  try {
    await request(`/api/sessions/${enc(id)}`, { method: "DELETE" });
    if (id === sessionId) {
      sessionId = null;
      $("chat").hidden = true;
      clearResult();
    }
  } catch (err) {
    showError($("chat-error"), err);
  }
  refreshSessions();
}

async function openSession(id, keepHash = false) {
  sessionId = id;
  history.replaceState(null, "", `?session=${enc(id)}${keepHash ? location.hash : ""}`);
  $("chat").hidden = false;
  $("session-id").textContent = id;
  $("export").href = `/api/sessions/${enc(id)}/export`;
  showError($("chat-error"), null);
  const data = await getJSON(`/api/sessions/${enc(id)}`);
  $("turns").replaceChildren(...(data.turns || []).filter((t) => t.text).map((t) => turnItem(t.role, t.text)));
  if (data.result) await showResult(data.result, { fileBase: `/api/sessions/${enc(id)}/files/` });
  else clearResult();
}

async function newSession() {
  try {
    const meta = await postJSON("/api/sessions");
    await openSession(meta.id);
    refreshSessions();
    $("message").focus();
  } catch (err) {
    showError($("chat-error"), err);
  }
}

// One turn (a message or a file); the reply and the session's updated result are shown when it ends.
async function turn(path, body, said) {
  const id = sessionId;
  showError($("chat-error"), null);
  for (const b of [$("send"), $("attach")]) b.disabled = true;
  $("chat").setAttribute("aria-busy", "true"); // until the reply and the reloaded session are shown
  $("turns").append(turnItem("user", said));
  live.reset(`Tools — consultation ${id}`);
  $("cancel").hidden = true;
  try {
    const end = await streamTurn(path, body, (ev) => {
      live.event(ev);
      if (ev.event === "reply") {
        $("turns").append(turnItem("assistant", [ev.data.text, ev.data.question].filter(Boolean).join("\n\n")));
      }
    });
    if (end && end.status !== "done") showError($("chat-error"), new Error(end.reason || end.status));
  } catch (err) {
    showError($("chat-error"), err instanceof ApiError && err.status === 409
      ? new Error(`${err.message} (another window or 'medagent chat' is using this consultation)`) : err);
  } finally {
    for (const b of [$("send"), $("attach")]) b.disabled = false;
  }
  if (id === sessionId) {
    try {
      await openSession(id); // the stored turns and result are the truth, whatever the stream delivered
    } catch (err) {
      showError($("chat-error"), err);
    }
  }
  $("chat").setAttribute("aria-busy", "false");
  refreshSessions();
}

function sendMessage(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || !sessionId) return;
  $("message").value = "";
  turn(`/api/sessions/${enc(sessionId)}/messages`, JSON.stringify({ text }), text);
}

function attachFile(event) {
  event.preventDefault();
  const file = $("attach-file").files[0];
  if (!file || !sessionId) return;
  const form = new FormData();
  form.append("file", file, file.name);
  if ($("attach-kind").value) form.append("kind", $("attach-kind").value);
  $("attach-file").value = "";
  turn(`/api/sessions/${enc(sessionId)}/files`, form, `Attached ${file.name}`);
}

// ---------------------------------------------------------------- start

async function health() {
  try {
    const h = await getJSON("/api/health");
    if (h.notice) $("notice").textContent = h.notice;
    $("server").textContent = `Server ${h.version} · ${h.jobs_active ?? 0} case(s) running`;
  } catch (err) {
    $("server").textContent = `The API did not answer: ${err.message}`;
  }
}

function wire() {
  $("mode-case").addEventListener("click", () => setMode("case"));
  $("mode-chat").addEventListener("click", () => {
    setMode("chat");
    refreshSessions();
  });
  $("case-form").addEventListener("submit", startCase);
  $("files").addEventListener("change", () => addFiles($("files").files));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles(e.dataTransfer.files);
  });
  $("refresh-jobs").addEventListener("click", refreshJobs);
  $("refresh-sessions").addEventListener("click", refreshSessions);
  $("new-session").addEventListener("click", newSession);
  $("message-form").addEventListener("submit", sendMessage);
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) sendMessage(e);
  });
  $("attach-form").addEventListener("submit", attachFile);
}

wire();
await health();
const params = new URLSearchParams(location.search);
if (params.get("session")) {
  setMode("chat");
  refreshSessions();
  openSession(params.get("session"), true).catch((err) => showError($("chat-error"), err));
} else {
  refreshJobs();
  if (params.get("job")) openJob(params.get("job"), true);
}
