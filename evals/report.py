"""Eval reports: Markdown and one self-contained HTML page (plots embedded as base64 PNG).

A report is a list of blocks (headings, paragraphs, tables, plots) rendered twice: report.md
(plots written to plots/*.png beside it) and report.html (the same plots inline, no other file
needed). `compare_runs` renders side-by-side deltas of two or more run folders the same way.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, median
from typing import Any

from medagent.evals.scoring import aggregate, failure_reasons
from medagent.tools.contracts import RESEARCH_NOTICE
from medagent.tools.errors import MedagentError

MAX_GROUP_ROWS = 40
MAX_ITEM_ROWS = 300
# The metrics shown per category/group, with the names the tables use.
BREAKDOWN = (("top1", "top-1"), ("top3", "top-3"), ("mc_correct", "MC acc."), ("patch_correct", "patch acc."),
             ("required_recall", "tool recall"),
             ("tool_f1", "tool F1"), ("plan_unchanged", "plan unchanged"), ("findings_recall", "findings used"))


@dataclass
class Page:
    """Blocks of one report: ("h", level, text) | ("p", text) | ("table", headers, rows) | ("plot", name, png)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", headers, [[_cell(v) for v in row] for row in rows]))

    def plot(self, name: str, png: bytes | None) -> None:
        if png is not None:
            self.blocks.append(("plot", name, png))


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value and abs(value) < 0.001:
            return f"{value:.2g}"
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def render_markdown(page: Page, plots_dir: Path) -> str:
    lines = [f"# {page.title}", ""]
    for block in page.blocks:
        if block[0] == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif block[0] == "p":
            lines += [block[1], ""]
        elif block[0] == "table":
            headers, rows = block[1], block[2]
            lines.append("| " + " | ".join(headers) + " |")
            lines.append("|" + "---|" * len(headers))
            lines += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
            lines.append("")
        elif block[0] == "plot":
            plots_dir.mkdir(parents=True, exist_ok=True)
            (plots_dir / f"{block[1]}.png").write_bytes(block[2])
            lines += [f"![{block[1]}]({plots_dir.name}/{block[1]}.png)", ""]
    return "\n".join(lines)


def render_html(page: Page) -> str:
    body = [f"<h1>{html.escape(page.title)}</h1>"]
    for block in page.blocks:
        if block[0] == "h":
            body.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif block[0] == "p":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif block[0] == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif block[0] == "plot":
            data = base64.b64encode(block[2]).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(block[1])}" src="data:image/png;base64,{data}"></figure>')
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}"
        "th{background:#f0f0f0}img{max-width:100%}p{line-height:1.4}"
    )
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(page.title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _figure(width: float = 7.0, height: float = 3.2):
    # The object API (no pyplot): no global state, safe beside other threads.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    return figure, figure.add_subplot(111)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def bar_plot(labels: list[str], values: list[float], title: str, xlabel: str, limit_one: bool = False) -> bytes | None:
    if not labels:
        return None
    figure, axes = _figure(7.0, max(1.6, 0.32 * len(labels) + 1.0))
    positions = list(range(len(labels)))[::-1]
    axes.barh(positions, values, color="#4472c4")
    axes.set_yticks(positions)
    axes.set_yticklabels([label[:40] for label in labels], fontsize=8)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    if limit_one:
        axes.set_xlim(0, 1)
    for position, value in zip(positions, values, strict=True):
        axes.text(value, position, f" {value:.2f}" if limit_one else f" {value:g}", va="center", fontsize=7)
    return _png(figure)


def grouped_bar_plot(labels: list[str], series: dict[str, list[float]], title: str) -> bytes | None:
    if not labels or not series:
        return None
    figure, axes = _figure(7.5, 3.4)
    width = 0.8 / len(series)
    for index, (name, values) in enumerate(series.items()):
        axes.bar([x + index * width for x in range(len(labels))], values, width=width, label=name)
    axes.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))])
    axes.set_xticklabels([label[:24] for label in labels], rotation=30, ha="right", fontsize=8)
    axes.set_ylim(0, 1)
    axes.set_title(title)
    axes.legend(fontsize=7)
    return _png(figure)


def histogram_plot(values: list[float], title: str, xlabel: str) -> bytes | None:
    if not values:
        return None
    figure, axes = _figure()
    axes.hist(values, bins=min(30, max(5, len(values) // 2)), color="#70ad47")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("items")
    axes.set_title(title)
    return _png(figure)


def _rate(scores: list[dict[str, Any]], key: str) -> float | None:
    values = [float(s[key]) for s in scores if s.get(key) is not None and key in s]
    return round(mean(values), 4) if values else None


def _breakdown_rows(buckets: dict[str, list[dict[str, Any]]], keys: list[tuple[str, str]]) -> list[list[Any]]:
    rows = []
    for name, members in buckets.items():
        passed = sum(1 for s in members if not failure_reasons(s))
        walls = [float(s.get("wall_s", 0.0) or 0.0) for s in members]
        rows.append([name, len(members), round(passed / len(members), 4), *[_rate(members, k) for k, _ in keys],
                     round(median(walls), 2) if walls else None])
    return rows


def _peer_rows(scores: list[dict[str, Any]]) -> list[list[Any]]:
    """medagent's ranks beside the peer method's, per category and overall (items with a rank only)."""
    def stats(ranks: list[int | None], k: int | None) -> float:
        if k is None:
            return round(mean(1.0 / r if r else 0.0 for r in ranks), 4)
        return round(mean(1.0 if r is not None and r <= k else 0.0 for r in ranks), 4)

    buckets: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in scores:  # an item that did not complete counts as a miss for medagent
        buckets[str(s.get("category") or "all")].append(s)
    rows = []
    for name, members in sorted(buckets.items()):
        ours, peer = [s.get("rank") for s in members], [s.get("peer_rank") for s in members]
        rows.append([len(members), name, stats(ours, 1), stats(peer, 1), stats(ours, 10), stats(peer, 10),
                     stats(ours, None), stats(peer, None)])
    return rows


def _present(scores: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(key, label) for key, label in BREAKDOWN if any(key in s for s in scores)]


def build_page(title: str, scores: list[dict[str, Any]], run: dict[str, Any] | None = None) -> Page:
    page = Page(f"medagent eval — {title}")
    run = run or {}
    summary = aggregate(scores)
    page.p(RESEARCH_NOTICE)
    if run:
        versions = run.get("versions", {})
        page.p(
            f"Suite {run.get('suite')}: {run.get('items')} of {run.get('suite_size', run.get('items'))} items "
            f"(limit {run.get('limit')}), {run.get('workers')} worker(s), started {run.get('started')} UTC; "
            f"machine {versions.get('machine', '?')}, Python {versions.get('python', '?')}, "
            f"LLM preset {run.get('settings', {}).get('llm', {}).get('preset', '?')}."
        )
        if run.get("description"):
            page.p(run["description"])
        if run.get("tools_unavailable"):
            page.p("Tools unavailable in this run: " + "; ".join(f"{k} ({v})" for k, v in run["tools_unavailable"].items()))

    page.h("Summary")
    page.table(["metric", "value"], [[k, v] for k, v in summary.items()])
    page.p("Metric definitions: see medagent.evals.scoring (module docstring). 'passed' = no entry in the failure taxonomy.")

    subsets = sorted({name for s in scores for name in s.get("subset", [])})
    if subsets:
        page.h("Subsets")
        keys = _present(scores)
        buckets = {"all items": scores, **{name: [s for s in scores if name in s.get("subset", [])] for name in subsets}}
        page.table(["subset", "items", "pass rate", *[label for _, label in keys], "median s"], _breakdown_rows(buckets, keys))

    keys = _present(scores)
    for attribute, heading in (("category", "By category"), ("group", "By group")):
        buckets: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for s in scores:
            if s.get(attribute):
                buckets[str(s[attribute])].append(s)
        if not buckets:
            continue
        page.h(heading)
        ordered = dict(sorted(buckets.items(), key=lambda kv: (-len(kv[1]), kv[0])))
        rows = _breakdown_rows(ordered, keys)
        if len(rows) > MAX_GROUP_ROWS:
            page.p(f"{len(rows)} {attribute}s; the {MAX_GROUP_ROWS} largest are shown (all are in scores.jsonl).")
        page.table([attribute, "items", "pass rate", *[label for _, label in keys], "median s"], rows[:MAX_GROUP_ROWS])
        if attribute == "group" and len(rows) > 1:
            # Macro-average: each group (e.g. a PMID) counts once, however many items it holds.
            macro = [f"{label} {mean(r[3 + i] for r in rows if r[3 + i] is not None):.3f}"
                     for i, (_, label) in enumerate(keys) if any(r[3 + i] is not None for r in rows)]
            page.p(f"Macro-average over {len(rows)} groups: pass rate {mean(r[2] for r in rows):.3f}" + "".join(f", {m}" for m in macro) + ".")
        shown = rows[:20]
        series = {"pass rate": [r[2] or 0.0 for r in shown]}
        for index, (key, label) in enumerate(keys):
            if key in ("top1", "mc_correct", "patch_correct", "required_recall", "plan_unchanged"):
                series[label] = [r[3 + index] or 0.0 for r in shown]
        page.plot(f"accuracy_by_{attribute}", grouped_bar_plot([str(r[0]) for r in shown], series, f"Accuracy by {attribute}"))

    peers = [s for s in scores if "peer_rank" in s]
    if peers:
        page.h("Peer baseline")
        page.p(f"{peers[0].get('peer')}, on the same cases as each row; ranks of the expected diagnosis.")
        page.table(["items", "category", "medagent top-1", "peer top-1", "medagent top-10", "peer top-10", "medagent MRR", "peer MRR"],
                   _peer_rows(peers))

    page.h("Latency")
    walls = [float(s.get("wall_s", 0.0) or 0.0) for s in scores]
    if walls:
        page.p(f"Per item: median {median(walls):.2f} s, mean {mean(walls):.2f} s, max {max(walls):.2f} s, total {sum(walls):.1f} s.")
    page.plot("latency", histogram_plot(walls, "Time per item", "seconds"))
    per_tool: dict[str, list[float]] = defaultdict(list)
    per_node: dict[str, list[float]] = defaultdict(list)
    for s in scores:
        for tool, seconds in (s.get("tool_seconds") or {}).items():
            per_tool[tool].append(float(seconds))
        for node, seconds in (s.get("node_seconds") or {}).items():
            per_node[node].append(float(seconds))
    if per_tool:
        page.table(["tool", "items", "total s", "mean s/item", "max s"],
                   [[t, len(v), round(sum(v), 2), round(mean(v), 3), round(max(v), 3)] for t, v in sorted(per_tool.items())])
    if per_node:
        page.table(["graph node", "mean s", "max s"], [[n, round(mean(v), 3), round(max(v), 3)] for n, v in per_node.items()])
    tokens = [s.get("llm_tokens", 0) or 0 for s in scores]
    if any(tokens):
        page.p(f"LLM tokens: {sum(tokens)} in all, {mean(tokens):.0f} per item.")

    page.h("Tool usage")
    usage = Counter(tool for s in scores for tool in s.get("tools_called", []))
    if usage:
        page.table(["tool", "items calling it", "share of items"], [[t, n, round(n / len(scores), 3)] for t, n in usage.most_common()])
        page.plot("tool_usage", bar_plot([t for t, _ in usage.most_common()], [n for _, n in usage.most_common()], "Items calling each tool", "items"))
    else:
        page.p("No tool was called in this run.")

    page.h("Failure taxonomy")
    reasons = {s["id"]: failure_reasons(s) for s in scores}
    taxonomy = Counter(r for rs in reasons.values() for r in rs)
    if taxonomy:
        page.table(["reason", "items"], [[r, n] for r, n in taxonomy.most_common()])
        page.plot("failures", bar_plot([r for r, _ in taxonomy.most_common()], [n for _, n in taxonomy.most_common()], "Failure taxonomy", "items"))
    else:
        page.p("Every item passed every check.")

    page.h("Items")
    rows = []
    for s in scores[:MAX_ITEM_ROWS]:
        answer = (s.get("rank") or "absent") if "rank" in s else (s.get("mc_correct") if "mc_correct" in s else None)
        rows.append([s["id"], s.get("category") or s.get("group"), "pass" if not reasons[s["id"]] else "; ".join(reasons[s["id"]]),
                     answer, s.get("tools_called", []), s.get("wall_s"), (s.get("failure") or "")[:200]])
    page.table(["item", "category/group", "verdict", "rank / MC correct", "tools called", "s", "failure"], rows)
    if len(scores) > MAX_ITEM_ROWS:
        page.p(f"{len(scores) - MAX_ITEM_ROWS} more items are in scores.jsonl.")
    return page


def write_page(page: Page, folder: Path, stem: str = "report") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    md_path, html_path = folder / f"{stem}.md", folder / f"{stem}.html"
    md_path.write_text(render_markdown(page, folder / "plots"), encoding="utf-8")
    html_path.write_text(render_html(page), encoding="utf-8")
    return md_path, html_path


def write_report(folder: Path, title: str, scores: list[dict[str, Any]]) -> tuple[Path, Path]:
    """report.md + report.html (+ plots/) for one run folder."""
    run_file = folder / "run.json"
    run = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else None
    return write_page(build_page(title, scores, run), folder)


def _load_run(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from medagent.evals.runner import read_scores
    from medagent.evals.scoring import compare_to_baselines

    scores_path = folder / "scores.jsonl"
    if not scores_path.is_file():
        raise MedagentError(f"{folder}: not a run folder (no scores.jsonl); give the folder `medagent eval run` wrote")
    run_file = folder / "run.json"
    run = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {"suite": folder.name}
    scores = read_scores(scores_path)
    compare_to_baselines(scores)
    return run, scores


def compare_runs(folders: list[Path], out: Path | None = None) -> tuple[str, Path, Path]:
    """Side-by-side metrics of two or more runs, deltas against the first, and items whose verdict changed."""
    if len(folders) < 2:
        raise MedagentError("compare needs at least two run folders")
    runs = [_load_run(folder) for folder in folders]
    names = [f"{run.get('suite', folder.name)} ({folder.name})" for folder, (run, _) in zip(folders, runs, strict=True)]
    summaries = [aggregate(scores) for _, scores in runs]
    page = Page("medagent eval — comparison")
    page.p(RESEARCH_NOTICE)
    page.p("Runs: " + "; ".join(f"{chr(65 + i)} = {name}" for i, name in enumerate(names)) + ". Δ = run minus run A.")
    metrics = list(dict.fromkeys(key for summary in summaries for key in summary))
    headers = ["metric", *[chr(65 + i) for i in range(len(runs))], *[f"Δ {chr(65 + i)}−A" for i in range(1, len(runs))]]
    rows = []
    for key in metrics:
        values = [summary.get(key) for summary in summaries]
        deltas = []
        for value in values[1:]:
            numeric = isinstance(value, (int, float)) and isinstance(values[0], (int, float))
            deltas.append(round(value - values[0], 4) if numeric else None)
        rows.append([key, *values, *deltas])
    page.h("Metrics")
    page.table(headers, rows)
    accuracy_keys = [k for k in ("top1", "mc_accuracy", "required_recall", "plan_unchanged", "tool_f1") if any(k in s for s in summaries)]
    series = {name: [float(summary.get(k) or 0.0) for k in accuracy_keys] for name, summary in zip([chr(65 + i) for i in range(len(runs))], summaries, strict=True)}
    pass_rates = {chr(65 + i): summary["passed"] / summary["items"] if summary["items"] else 0.0 for i, summary in enumerate(summaries)}
    page.plot("accuracy_by_run", grouped_bar_plot(["pass rate", *accuracy_keys],
                                                  {k: [pass_rates[k], *v] for k, v in series.items()}, "Accuracy by suite/run"))
    shared = set.intersection(*[{s["id"] for s in scores} for _, scores in runs])
    if shared:
        verdicts = [{s["id"]: failure_reasons(s) for s in scores} for _, scores in runs]
        changed = [[item, *["pass" if not v[item] else "; ".join(v[item]) for v in verdicts]]
                   for item in sorted(shared) if len({not v[item] for v in verdicts}) > 1]
        page.h("Items whose verdict changed")
        page.p(f"{len(shared)} items appear in every run; {len(changed)} changed between pass and fail.")
        if changed:
            page.table(["item", *[chr(65 + i) for i in range(len(runs))]], changed[:MAX_ITEM_ROWS])
        walls = [[s.get("wall_s", 0.0) for s in scores if s["id"] in shared] for _, scores in runs]
        page.p("Median seconds per shared item: " + ", ".join(f"{chr(65 + i)} {median(w):.2f}" for i, w in enumerate(walls) if w) + ".")
    else:
        page.p("The runs share no item ids, so only aggregate metrics are compared.")
    folder = out or folders[-1]
    md_path, html_path = write_page(page, folder, "compare")
    text = render_markdown(page, folder / "plots")
    return text, md_path, html_path
