"""RadDiag suite: top-k hit rate and AUC of `imaging.diagnose`'s model on labelled scans a user points to.

Data: a JSONL file, one case per line, `{"id": ..., "scans": [{"path": ..., "modality": "CT"}, ...], "labels":
[...]}`; paths are relative to the file; a label is a disorder name of RadDiag's vocabulary or a 3-character
ICD-10-CM category (`I71`), whose score is the highest of its disorders' probabilities. A label outside both is
refused, named. Scans are read by medagent's readers and prepared as the tool prepares them (first 4 per case).

    python -m medagent.evals.raddiag SUITE.jsonl [--checkpoint PATH] [-k 5] [-o report.json]

`--checkpoint` defaults to `[raddiag] path` of the config. The report gives, for every k asked, the share of cases
with at least one true label in the top k (disorders, or codes ranked by their best disorder), the macro AUC over
the labels that have positive and negative cases, each label's AUC, the chance baseline (top-k of a uniform
random ranking), and every case's ranked output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from medagent.tools.errors import MedagentError

MAX_SCANS = 4


def read_suite(path: Path) -> list[dict[str, Any]]:
    from medagent.specialists.raddiag import vocabulary

    labels = vocabulary()
    codes = set(c for c in labels.codes if c)
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        for label in row.get("labels", []):
            if labels.index(label) is None and label not in codes:
                raise MedagentError(
                    f"{path}:{number}: label '{label}' is neither a RadDiag disorder nor one of its ICD-10-CM codes"
                )
        if not row.get("scans") or not row.get("labels"):
            raise MedagentError(f"{path}:{number}: a case needs 'scans' and 'labels'")
        row.setdefault("id", f"case{number}")
        rows.append(row)
    if not rows:
        raise MedagentError(f"{path}: no cases")
    return rows


def label_scores(probs: np.ndarray, label: str) -> float:
    """A disorder's probability, or an ICD-10-CM code's best disorder probability."""
    from medagent.specialists.raddiag import vocabulary

    labels = vocabulary()
    column = labels.index(label)
    if column is not None:
        return float(probs[column])
    return float(max(probs[i] for i, code in enumerate(labels.codes) if code == label))


def ranked_labels(probs: np.ndarray, kind: str) -> list[str]:
    """Disorder names (kind 'disorder') or codes (kind 'code', each at its best disorder) by probability."""
    from medagent.specialists.raddiag import vocabulary

    labels = vocabulary()
    order = np.argsort(-probs, kind="stable")
    if kind == "disorder":
        return [labels.names[i] for i in order]
    return list(dict.fromkeys(labels.codes[i] for i in order if labels.codes[i]))


def score(cases: list[dict[str, Any]], ks: list[int]) -> dict[str, Any]:
    """Top-k hit rates and AUCs from per-case probability vectors (`probs`) and true `labels`."""
    from sklearn.metrics import roc_auc_score

    from medagent.specialists.raddiag import vocabulary

    n_disorders = len(vocabulary())
    n_codes = len(set(c for c in vocabulary().codes if c))
    top_k = {}
    chance = {}
    for k in ks:
        hits = 0
        expected = 0.0
        for case in cases:
            kind = "disorder" if vocabulary().index(case["labels"][0]) is not None else "code"
            truth = {vocabulary().names[vocabulary().index(x)] if kind == "disorder" else x for x in case["labels"]}
            hits += bool(truth & set(ranked_labels(case["probs"], kind)[:k]))
            pool = n_disorders if kind == "disorder" else n_codes
            miss = 1.0
            for j in range(min(k, pool)):  # P(no true label among k uniform draws without replacement)
                miss *= max(0.0, (pool - len(truth) - j) / (pool - j))
            expected += 1 - miss
        top_k[str(k)] = hits / len(cases)
        chance[str(k)] = expected / len(cases)
    per_label = {}
    for label in sorted({x for case in cases for x in case["labels"]}):
        truth = [label in case["labels"] for case in cases]
        if all(truth) or not any(truth):
            continue  # AUC needs positive and negative cases
        per_label[label] = float(roc_auc_score(truth, [label_scores(case["probs"], label) for case in cases]))
    return {
        "cases": len(cases),
        "top_k": top_k,
        "chance_top_k": chance,
        "macro_auc": float(np.mean(list(per_label.values()))) if per_label else None,
        "auc": per_label,
    }


def evaluate(suite: Path, checkpoint: Path, ks: list[int], device: str = "cpu") -> dict[str, Any]:
    from medagent.specialists.raddiag import Scan, load_raddiag, prepare_case, probabilities
    from medagent.tools.medio import read_volume, sniff

    loaded = load_raddiag(checkpoint, device)
    cases = []
    for row in read_suite(suite):
        scans = []
        for entry in row["scans"][:MAX_SCANS]:
            path = Path(suite).parent / entry["path"]
            volume = read_volume(path, sniff(path).format, entry.get("modality"))
            scans.append(Scan(volume.voxels, volume.modality or entry.get("modality"), volume.affine, name=path.name))
        probs = probabilities(loaded, prepare_case(scans, loaded.config)).cpu().numpy()
        cases.append({"id": row["id"], "labels": row["labels"], "probs": probs})
    report = score(cases, ks)
    report["model"] = f"RadDiag {loaded.config.fusion} fusion from {loaded.weights}"
    suite_labels = sorted({x for c in cases for x in c["labels"]})
    report["items"] = [
        {"id": c["id"], "labels": c["labels"], "top": ranked_labels(c["probs"], "disorder")[: max(ks)],
         "label_scores": {x: float(label_scores(c["probs"], x)) for x in suite_labels}}
        for c in cases
    ]  # every suite label's score in every case, so the AUCs can be recomputed from the report  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medagent.evals.raddiag", description=__doc__.split("\n")[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("-k", type=int, action="append", default=None, help="top-k to report (repeatable; 1, 5)")
    parser.add_argument("-o", "--out", type=Path, default=None)
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint
    if checkpoint is None:
        from medagent.tools.config import load_settings

        checkpoint = load_settings(None).raddiag.path
        if checkpoint is None:
            print("no checkpoint: pass --checkpoint or set [raddiag] path", file=sys.stderr)
            return 2
    try:
        report = evaluate(args.suite, checkpoint, args.k or [1, 5])
    except MedagentError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    summary = {k: report[k] for k in ("cases", "top_k", "chance_top_k", "macro_auc")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
