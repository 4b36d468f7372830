"""VQA-RAD with RadFM: closed-question accuracy and open-question token recall, beside two baselines.

Items come from a VQA-RAD JSONL in the project's QA schema (`../shared/data/vqa_rad/dev.jsonl` or a copy) and are
restricted to one `fold` (report on `val`; the folds are split by image, fine-tune on `train`). Baselines printed
beside every score: the majority answer of the *train* fold (per answer type) and always "yes" for closed questions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from medagent.evals.suite import dev_file

WORD = re.compile(r"[a-z0-9]+")


def vqa_rad_file(data_dir: Path | None) -> Path:
    return dev_file(data_dir, "vqa_rad")


def build_items(data_dir: Path | None, limit: int | None = None, fold: str = "val") -> list[dict[str, Any]]:
    """VQA-RAD items of one fold: id, question, answer, closed (bool), image (absolute path)."""
    path = vqa_rad_file(data_dir)
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("fold") != fold:
            continue
        items.append(
            {
                "id": row["id"],
                "question": row["question"],
                "answer": str(row["answer"]),
                "closed": row["meta"]["answer_type"].strip().upper() == "CLOSED",
                "image": str(path.parent / row["image"]),
            }
        )
        if limit is not None and len(items) >= limit:
            break
    return items


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def closed_correct(prediction: str, reference: str) -> bool:
    """Closed questions (yes/no and short choices): the prediction's leading words are the reference's words."""
    pred, ref = words(prediction), words(reference)
    return bool(ref) and pred[: len(ref)] == ref


def token_recall(prediction: str, reference: str) -> float:
    """Open questions: the share of the reference's words that the prediction contains."""
    ref = words(reference)
    if not ref:
        return 0.0
    pred = set(words(prediction))
    return sum(w in pred for w in ref) / len(ref)


def score(items: list[dict[str, Any]], predictions: dict[str, str]) -> dict[str, Any]:
    closed = [i for i in items if i["closed"]]
    open_ = [i for i in items if not i["closed"]]
    return {
        "closed_n": len(closed),
        "closed_accuracy": sum(closed_correct(predictions[i["id"]], i["answer"]) for i in closed) / max(len(closed), 1),
        "open_n": len(open_),
        "open_token_recall": sum(token_recall(predictions[i["id"]], i["answer"]) for i in open_) / max(len(open_), 1),
    }


def baselines(items: list[dict[str, Any]], train_items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Majority answer of the train fold per answer type, and always 'yes', scored like a model."""
    majority = {}
    for closed in (True, False):
        answers = Counter(" ".join(words(i["answer"])) for i in train_items if i["closed"] == closed)
        majority[closed] = answers.most_common(1)[0][0] if answers else ""
    return {
        "majority": score(items, {i["id"]: majority[i["closed"]] for i in items})
        | {"answers": {"closed": majority[True], "open": majority[False]}},
        "always_yes": score(items, {i["id"]: "yes" for i in items}),
    }


def predict(bundle: Any, items: list[dict[str, Any]], max_new_tokens: int = 16) -> dict[str, str]:
    """RadFM's greedy answer for each item (one image per question)."""
    import numpy as np
    from PIL import Image

    from medagent.specialists.radfm import answer, image_to_tensor

    size = bundle.config.vision.image_size
    predictions = {}
    for item in items:
        with Image.open(item["image"]) as image:
            scan = image_to_tensor(np.asarray(image.convert("RGB")), size)
        predictions[item["id"]] = answer(bundle, item["question"], [scan], max_new_tokens=max_new_tokens)
    return predictions


def run(bundle: Any, data_dir: Path | None, limit: int | None = None, fold: str = "val") -> dict[str, Any]:
    """Score RadFM on one fold, with the baselines; returns a report dict (also printable with `format_report`)."""
    items = build_items(data_dir, limit, fold)
    train_items = build_items(data_dir, None, "train")
    predictions = predict(bundle, items)
    return {
        "suite": "radfm-vqa-rad",
        "fold": fold,
        "model": str(bundle.folder),
        "items": len(items),
        "radfm": score(items, predictions),
        "baselines": baselines(items, train_items),
        "predictions": predictions,
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [f"VQA-RAD ({report['fold']}, {report['items']} questions) with {report['model']}"]
    rows = [("radfm", report["radfm"]), *report["baselines"].items()]
    for name, s in rows:
        lines.append(
            f"  {name:<11} closed accuracy {s['closed_accuracy']:.3f} (n={s['closed_n']})   "
            f"open token recall {s['open_token_recall']:.3f} (n={s['open_n']})"
        )
    return "\n".join(lines)
