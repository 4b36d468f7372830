"""Pathology suite: KEP/KEEP zero-shot accuracy on a labelled folder of patches.

Data: an ImageFolder layout, `<root>/<label>/*.png` (also .jpg/.jpeg/.tif/.tiff). Each sub-folder is a
class; its name is the label text the model is asked about (underscores become spaces, so
`adipose_tissue/` asks for "adipose tissue"; a name that a built-in label set knows borrows its
synonyms for the prompt ensemble). Every patch is classified against all the folder labels.

    python -m medagent.evals.pathology DATA_DIR [--checkpoint PATH] [--limit N] [-o report.json]

`--checkpoint` defaults to `[pathology] path` of the config. The report gives accuracy, balanced
accuracy (mean per-class recall), per-class recall, the confusion matrix, the chance and majority-class
baselines beside them, and every item's prediction. Without DATA_DIR, `../shared/data/pathology` is
used when present. The same items run through the agent's tool with `medagent eval run pathology`
(direct mode); `score_run` computes accuracy from such a run's traces.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from medagent.evals.suite import shared_data_dir
from medagent.tools.payloads import PathologyPayload

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def data_root(data_dir: Path | None) -> Path:
    """The patch folder: the given one, or `pathology/` under the shared development data."""
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise FileNotFoundError(f"{data_dir}: pathology patch folder not found")
        return Path(data_dir)
    shared = shared_data_dir(None)
    if shared is not None and (shared / "pathology").is_dir():
        return shared / "pathology"
    raise FileNotFoundError("no pathology data: pass a folder laid out as <root>/<label>/*.png")


def label_text(folder_name: str) -> str:
    return " ".join(folder_name.replace("_", " ").split())


def build_items(data_dir: Path | None, limit: int | None = None) -> list[dict[str, Any]]:
    """One item per patch: id, image (absolute path), label. With `limit`, classes take turns so a
    short run still covers every class."""
    root = data_root(data_dir)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = []
    for folder in classes:
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        per_class.append([(folder, image) for image in images])
    if len([c for c in per_class if c]) < 2:
        raise FileNotFoundError(f"{root}: need at least two class folders holding images (<root>/<label>/*.png)")
    ordered = [pair for turn in _round_robin(per_class) for pair in turn]
    if limit:
        ordered = ordered[:limit]
    items = []
    for index, (folder, image) in enumerate(ordered):
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{folder.name}-{image.stem}").strip("-")
        items.append({"id": f"{index:05d}-{slug}", "image": str(image.resolve()), "label": label_text(folder.name)})
    return items


def _round_robin(groups: list[list[Any]]) -> list[list[Any]]:
    longest = max(len(g) for g in groups)
    return [[g[i] for g in groups if i < len(g)] for i in range(longest)]


def labels_of(data_dir: Path | None) -> list[str]:
    """The labels every patch is classified against: every class folder holding images (whatever a limit kept)."""
    root = data_root(data_dir)
    return [
        label_text(p.name)
        for p in sorted(root.iterdir())
        if p.is_dir() and not p.name.startswith(".") and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir())
    ]


def score(predictions: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall, confusion and baselines from (label, predicted) rows."""
    n = len(predictions)
    truth = Counter(row["label"] for row in predictions)
    confusion = {label: dict.fromkeys(labels, 0) for label in labels}
    for row in predictions:
        confusion[row["label"]][row["predicted"]] += 1
    per_class = {
        label: {
            "n": truth[label],
            "correct": confusion[label][label],
            "recall": round(confusion[label][label] / truth[label], 4) if truth[label] else None,
        }
        for label in labels
    }
    recalls = [c["recall"] for c in per_class.values() if c["recall"] is not None]
    correct = sum(row["predicted"] == row["label"] for row in predictions)
    return {
        "n": n,
        "accuracy": round(correct / n, 4) if n else None,
        "balanced_accuracy": round(sum(recalls) / len(recalls), 4) if recalls else None,
        "per_class": per_class,
        "confusion": confusion,
        "baselines": {
            "chance": round(1 / len(labels), 4),
            "majority_class": round(max(truth.values()) / n, 4) if n else None,
        },
    }


def evaluate(
    data_dir: Path | None, checkpoint: Path, limit: int | None = None, device: str = "cpu", tile_size: int = 512
) -> dict[str, Any]:
    """Classify every patch with the specialist (loader, transform, prompt ensemble, tiling) and score it."""
    from medagent.specialists.pathology import KEPClassifier, TilingOptions, load_kep, resolve

    items = build_items(data_dir, limit)
    labels = labels_of(data_dir)
    label_set = resolve(labels)
    loaded = load_kep(Path(checkpoint), device=device)
    classifier = KEPClassifier(loaded, device)
    tiling = TilingOptions(tile_size=tile_size)
    started = time.perf_counter()
    rows = []
    for item in items:
        result = classifier.classify(Path(item["image"]), label_set, tiling, top_tiles=0)
        predicted, probability = result.ranked()[0]
        rows.append({**item, "predicted": predicted, "probability": round(probability, 4),
                     "correct": predicted == item["label"]})  # fmt: skip
    seconds = time.perf_counter() - started
    return {
        "suite": "pathology",
        "data": str(data_root(data_dir)),
        "checkpoint": str(loaded.weights),
        "model": "KEEP" if loaded.config.variant == "keep" else f"KEP-{loaded.config.variant}",
        "labels": labels,
        **score(rows, labels),
        "seconds": round(seconds, 2),
        "items": rows,
    }


def suite_items(data_dir: Path | None, limit: int | None = None) -> list[dict[str, Any]]:
    """The items as suite items for the runner (direct mode: one `pathology.classify` call per patch).

    Attachment paths are relative to the data root, which must be the suite's base folder (the runner
    refuses attachments outside it).
    """
    root = data_root(data_dir).resolve()
    items = build_items(data_dir, limit)
    labels = labels_of(data_dir)
    return [
        {
            "id": item["id"],
            "mode": "direct",
            "case": {
                "id": item["id"],
                "question": "Which tissue type or diagnosis does this pathology patch show?",
                "attachments": [
                    {
                        "id": "patch",
                        "kind": "pathology",
                        "path": Path(item["image"]).relative_to(root).as_posix(),
                        "modality": "pathology",
                    }
                ],
            },
            "steps": [{"tool": "pathology.classify", "arguments": {"attachment": "patch", "labels": labels}}],
            "expected": {"patch_label": item["label"], "required_tools": ["pathology.classify"]},
            "group": item["label"],
            "meta": {"category": item["label"], "pathology_label": item["label"]},
        }
        for item in items
    ]


def score_run(run_dir: Path, data_dir: Path | None, limit: int | None = None) -> dict[str, Any]:
    """Accuracy of a `medagent eval run pathology` run, from its traces (the tool's top label per item)."""
    from medagent.tools.trace import ToolResultEvent, read_trace

    items = build_items(data_dir, limit)
    labels = labels_of(data_dir)
    rows = []
    for item in items:
        trace = Path(run_dir) / "traces" / f"{item['id']}.jsonl"
        if not trace.is_file():
            continue
        results = [e for e in read_trace(trace) if isinstance(e, ToolResultEvent) and e.tool == "pathology.classify"]
        details = [d for e in results for d in e.details if not d.get("error")]
        predicted = PathologyPayload.model_validate(details[0]["payload"]).top_label if details else None
        if predicted in labels:
            rows.append({**item, "predicted": predicted, "correct": predicted == item["label"]})
        else:  # the tool failed on this patch: counted as wrong, under no label
            rows.append({**item, "predicted": None, "correct": False})
    scored = score([r for r in rows if r["predicted"] is not None], labels)
    failed = sum(r["predicted"] is None for r in rows)
    scored["n"] = len(rows)
    scored["failed"] = failed
    if rows:
        scored["accuracy"] = round(sum(r["correct"] for r in rows) / len(rows), 4)
    return {"suite": "pathology", "run": str(run_dir), "labels": labels, **scored, "items": rows}


def summary_lines(report: dict[str, Any]) -> list[str]:
    base = report["baselines"]
    lines = [
        f"{report.get('model', 'run')} on {report['n']} patches, {len(report['labels'])} labels "
        f"({report.get('seconds', '?')} s): accuracy {report['accuracy']}, balanced accuracy "
        f"{report['balanced_accuracy']} (chance {base['chance']}, majority class {base['majority_class']})"
    ]
    for label, row in report["per_class"].items():
        lines.append(f"  {label}: {row['correct']}/{row['n']} (recall {row['recall']})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medagent.evals.pathology", description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, help="folder laid out as <root>/<label>/*.png")
    parser.add_argument("--checkpoint", type=Path, help="KEP/KEEP folder (default: [pathology] path of the config)")
    parser.add_argument("--limit", type=int, default=None, help="at most N patches (classes take turns)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: [pathology] device)")
    parser.add_argument("-o", "--output", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    from medagent.tools.config import load_settings

    settings = load_settings().pathology
    checkpoint = args.checkpoint or settings.path
    if checkpoint is None:
        print("no checkpoint: pass --checkpoint or set [pathology] path (see `medagent doctor`)", file=sys.stderr)
        return 2
    try:
        report = evaluate(args.data, checkpoint, args.limit, args.device or settings.device, settings.tile_size)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pathology eval: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(report)))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"report written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
