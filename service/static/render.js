// Renders a result.json (tools/contracts.py `Result`) as DOM. Server text only ever becomes text nodes or
// attribute values set through the DOM, never HTML, so nothing the server (or a model) writes can run as markup.

const FINE = new Set(["supported", "not_checked"]);
const CITATION = /\[(E\d+(?:\s*,\s*E\d+)*)\]/g;

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Scrolls to evidence card `id`, highlights it (and only it) and moves keyboard focus there.
export function showEvidence(id) {
  const card = document.querySelector(`.card[data-evidence="${CSS.escape(id)}"]`);
  if (!card) return false;
  for (const other of document.querySelectorAll(".card.highlight")) other.classList.remove("highlight");
  card.classList.add("highlight");
  card.scrollIntoView({ block: "center" });
  card.focus({ preventScroll: true });
  history.replaceState(history.state, "", `#${id}`);
  return true;
}

export function citeLink(id, label = `[${id}]`) {
  return el("a", {
    class: "cite", href: `#${id}`, "data-cite": id, "aria-label": `evidence ${id}`,
    onclick: (event) => {
      if (showEvidence(id)) event.preventDefault();
    },
  }, label);
}

// Text with its inline citations ([E3], [E1, E3]) turned into links.
export function linked(text) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(CITATION)) {
    if (match.index > last) parts.push(text.slice(last, match.index));
    const ids = match[1].split(/\s*,\s*/);
    parts.push("[");
    ids.forEach((id, i) => {
      if (i) parts.push(", ");
      parts.push(citeLink(id, id));
    });
    parts.push("]");
    last = match.index + match[0].length;
  }
  if (last < text.length) parts.push(text.slice(last));
  return parts;
}

function citations(ids) {
  if (!ids || !ids.length) return [];
  const parts = [" ["];
  ids.forEach((id, i) => {
    if (i) parts.push(", ");
    parts.push(citeLink(id, id));
  });
  parts.push("]");
  return parts;
}

function sentence(s) {
  const flagged = !FINE.has(s.verdict || "not_checked");
  const inline = new Set([...(s.text || "").matchAll(CITATION)].flatMap((m) => m[1].split(/\s*,\s*/)));
  const rest = (s.citations || []).filter((id) => !inline.has(id));
  return el("p", { class: flagged ? "sentence flagged" : "sentence", "data-verdict": s.verdict },
    linked(s.text || ""), citations(rest),
    flagged ? el("span", { class: "flag", text: `⚠ ${s.verdict.replace(/_/g, " ")}${s.reason ? `: ${s.reason}` : ""}` }) : null);
}

export function renderReport(result) {
  const report = result.report || {};
  const g = result.grounding || {};
  const parts = [el("p", { class: "muted" }, `Case ${result.case_id} · ${result.question || ""}`)];
  const sentences = report.sentences || [];
  parts.push(el("div", { class: "report" }, sentences.length ? sentences.map(sentence) : el("p", { text: "The report is empty." })));
  const flagged = sentences.filter((s) => !FINE.has(s.verdict || "not_checked")).length;
  const groundingText = g.status === "checked"
    ? `Grounding checked${g.checker ? ` by ${g.checker}` : ""}: ${g.supported} of ${g.sentences} sentences supported, ${flagged} flagged.`
    : `Grounding not run.`;
  parts.push(el("p", { class: flagged ? "flag" : "muted" }, groundingText, g.note ? ` ${g.note}` : ""));
  if ((report.conflicts || []).length) {
    parts.push(el("h3", { text: "Conflicts" }), el("ul", {}, report.conflicts.map((c) => el("li", {}, linked(c)))));
  }
  if ((report.limitations || []).length) {
    parts.push(el("h3", { text: "Limitations" }), el("ul", {}, report.limitations.map((c) => el("li", {}, linked(c)))));
  }
  if ((result.findings || []).length) {
    // Collapsed: a template report restates the same findings sentence by sentence.
    parts.push(el("details", { class: "findings" }, el("summary", { text: `Findings (${result.findings.length})` }),
      el("ul", {}, result.findings.map((f) => el("li", {}, linked(f.statement), citations(f.evidence))))));
  }
  if (result.notice) parts.push(el("p", { class: "notice", role: "note", text: result.notice }));
  return parts;
}

export function renderDifferential(result) {
  const rows = result.differential || [];
  if (!rows.length) return [el("p", { class: "muted", text: result.differential_note || "No differential." })];
  const table = el("table", {},
    el("caption", { class: "muted", text: result.differential_note || "Candidates, most likely first" }),
    el("thead", {}, el("tr", {}, ["#", "Diagnosis", "Codes", "Score", "Why", "Evidence"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows.map((c) => el("tr", {},
      el("td", { text: c.rank }),
      el("th", { scope: "row" }, c.name, ...(c.proposed_by === "llm" ? [" ", el("span", { class: "muted", "data-llm": "", text: "(LLM, unverified)" })] : [])),
      el("td", {}, (c.codes || []).map((code) => code.id).join(", ")),
      el("td", { text: c.score === null || c.score === undefined ? "" : Number(c.score).toFixed(2) }),
      el("td", { text: c.rationale || "" }),
      el("td", {}, (c.evidence || []).flatMap((id, i) => (i ? [", ", citeLink(id, id)] : [citeLink(id, id)])))))));
  return [table];
}

function payloadBlock(e) {
  const p = e.payload || {};
  const out = [];
  if (e.tool === "speech.transcribe" && typeof p.transcript === "string") {
    out.push(el("blockquote", { class: "transcript", "data-transcript": "" }, p.transcript || "(no speech)"));
    const meta = [p.language && `language ${p.language}`, p.duration_s !== undefined && `${p.duration_s} s`,
      p.model && `model ${p.model}`].filter(Boolean).join(" · ");
    if (meta) out.push(el("p", { class: "meta", text: meta }));
    if ((p.segments || []).length > 1) {
      out.push(el("details", {}, el("summary", { text: "Segments" }),
        el("ol", {}, p.segments.map((s) => el("li", {}, `${s.start}–${s.end} s: ${s.text}`)))));
    }
  } else if (e.tool === "pathology.classify" && Array.isArray(p.ranked)) {
    out.push(el("ol", {}, p.ranked.slice(0, 5).map((r) => el("li", {}, `${r.label}: ${(100 * r.probability).toFixed(1)} %`))));
  }
  return out;
}

export function renderEvidence(result, fileUrl) {
  return (result.evidence || []).map((e) => {
    const images = (e.artifacts || []).filter((a) => /\.(png|jpe?g)$/i.test(a));
    const others = (e.artifacts || []).filter((a) => !images.includes(a));
    return el("article", { class: e.error ? "card has-error" : "card", id: e.id, "data-evidence": e.id, tabindex: "-1",
      "aria-labelledby": `${e.id}-title` },
    el("h3", { id: `${e.id}-title` }, `${e.id} · ${e.tool}`,
      e.error ? el("span", { class: "badge bad", text: "tool error" }) : null,
      e.derived ? el("span", { class: "badge info", text: "derived" }) : null),
    el("p", { class: "meta" }, [e.attachment && `attachment ${e.attachment}`, `call ${e.call_id}`,
      e.confidence !== null && e.confidence !== undefined && `confidence ${Number(e.confidence).toFixed(2)}`].filter(Boolean).join(" · ")),
    el("p", { class: "summary" }, linked(e.summary || "")),
    payloadBlock(e),
    images.map((a) => el("img", { src: fileUrl(a), alt: `${e.tool} image for ${e.attachment || e.id} (${a})`, loading: "eager" })),
    others.length ? el("p", { class: "meta" }, "Files: ",
      others.flatMap((a, i) => [i ? ", " : "", el("a", { href: fileUrl(a), download: "" }, a.split("/").pop())])) : null,
    Object.keys(e.payload || {}).length ? el("details", {}, el("summary", { text: "Payload" }),
      el("pre", { text: JSON.stringify(e.payload, null, 2) })) : null);
  });
}

// A slice scroller for one volume attachment: a range input over the axial slices served as PNGs.
export function volumeViewer(attachmentId, slices, sliceUrl) {
  const inputId = `slice-${attachmentId}`;
  const start = Math.floor(slices / 2);
  const img = el("img", { src: sliceUrl(start), alt: `axial slice ${start + 1} of ${slices} of ${attachmentId}`, width: 384 });
  const label = el("label", { for: inputId }, `Volume ${attachmentId}: axial slice `, el("output", { for: inputId, text: `${start + 1} / ${slices}` }));
  const range = el("input", { type: "range", id: inputId, min: 0, max: slices - 1, step: 1, value: start, "data-volume": attachmentId });
  range.addEventListener("input", () => {
    const k = Number(range.value);
    img.src = sliceUrl(k);
    img.alt = `axial slice ${k + 1} of ${slices} of ${attachmentId}`;
    label.querySelector("output").textContent = `${k + 1} / ${slices}`;
  });
  return el("figure", { class: "viewer", "data-viewer": attachmentId }, label, range, img);
}
