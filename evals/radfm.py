"""VQA-RAD with RadFM or MedVInT-TD: closed-question accuracy and open-question token recall, beside two baselines.

    python -m medagent.evals.radfm [--backend radfm|medvint] [--config F] [--data-dir D] [--limit N] [--fold val]
                                   [--closed-as open|choices] [--run RUN] [-o report.json]

Items come from a VQA-RAD JSONL in the project's QA schema (`../shared/data/vqa_rad/dev.jsonl` or a copy) and are
restricted to one `fold` (report on `val`; the folds are split by image, fine-tune on `train`). Baselines printed
beside every score, on the same items: the majority answer of the *train* fold (per answer type) and always "yes".

`--backend` picks the model (default `radfm`, today's behaviour; `medvint` = MedVInT-TD); its weights come from the
config (`[radfm] path` / `[medvint] path`, dtype and device there). A backend without usable weights prints one line
saying why and exits with code 2. How questions are asked:

- RadFM: every question as free text, greedy, 16 new tokens (this harness's setting since it was written).
- MedVInT-TD, `--closed-as open` (the default): every question with the open prompt `Question: {q}The Answer is:`,
  greedy, `[medvint] max_new_tokens`. This is how the authors test VQA-RAD (PMC-VQA `src/MedVInT_TD/test_VQA_RAD.py`
  reads test_close.csv and test_open.csv with the same 'blank' prompt and `generate_long_sentence`, on a model
  fine-tuned on VQA-RAD; closed answers are then compared with the label).
  `--closed-as choices`: closed questions that carry options in the JSONL (the yes/no ones: A yes, B no) are asked as
  multiple choice (`answer_choices`: the options' letters' next-token probabilities) and answer with the chosen
  option; closed questions without options and all open ones stay open. That suits the released PMC-VQA 'choice'
  checkpoints, which were trained on 4-option prompts.

Scores: closed accuracy = the answer's leading words are the reference's words; open token recall = share of the
reference's words in the answer. The eval-runner suite `vqa-rad` asks the same items through `imaging.vqa` (open
prompts, the configured `[vqa] backend`); `--run RUN` scores such a run's traces here, with the baselines and the
models that answered.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from medagent.evals.suite import dev_file

WORD = re.compile(r"[a-z0-9]+")
BACKENDS = {"radfm": "RadFM", "medvint": "MedVInT-TD"}
RADFM_NEW_TOKENS = 16


def vqa_rad_file(data_dir: Path | None) -> Path:
    return dev_file(data_dir, "vqa_rad")


def build_items(data_dir: Path | None, limit: int | None = None, fold: str = "val") -> list[dict[str, Any]]:
    """VQA-RAD items of one fold: id, question, answer, closed (bool), image (absolute path), options (the JSONL's
    options in letter order, or None), question_type and organ (from `meta`)."""
    path = vqa_rad_file(data_dir)
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("fold") != fold:
            continue
        options = row.get("options")
        meta = row.get("meta") or {}
        items.append(
            {
                "id": row["id"],
                "question": row["question"],
                "answer": str(row["answer"]),
                "closed": meta["answer_type"].strip().upper() == "CLOSED",
                "image": str(path.parent / row["image"]),
                "options": [str(options[k]) for k in sorted(options)] if isinstance(options, dict) and options else None,
                "question_type": str(meta.get("question_type", "")).strip().upper(),
                "organ": str(meta.get("organ", "")).strip().upper(),
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


# ------------------------------------------------------------------ the two backends


def predict(bundle: Any, items: list[dict[str, Any]], max_new_tokens: int = RADFM_NEW_TOKENS) -> dict[str, str]:
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


def asked_as_choices(item: dict[str, Any], closed_as: str) -> bool:
    return closed_as == "choices" and item["closed"] and bool(item.get("options")) and len(item["options"]) >= 2


def predict_medvint(
    bundle: Any, items: list[dict[str, Any]], closed_as: str = "open", max_new_tokens: int = 50
) -> dict[str, str]:
    """MedVInT-TD's answer for each item: open prompt, or (closed_as='choices') the chosen option of a closed
    question that has options."""
    from PIL import Image

    from medagent.specialists.medvint import answer_choices, answer_open, image_to_tensor

    size = bundle.config.image_size
    predictions = {}
    for item in items:
        with Image.open(item["image"]) as image:
            pixels = image_to_tensor(image.convert("RGB"), size)
        if asked_as_choices(item, closed_as):
            predictions[item["id"]] = answer_choices(bundle, item["question"], item["options"], pixels).choice
        else:
            predictions[item["id"]] = answer_open(bundle, item["question"], pixels, max_new_tokens=max_new_tokens)
    return predictions


def run(
    bundle: Any,
    data_dir: Path | None,
    limit: int | None = None,
    fold: str = "val",
    backend: str = "radfm",
    closed_as: str = "open",
    weights: str | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Score one backend on one fold, with the baselines; returns a report dict (printable with `format_report`).
    The backend's scores are under `report[backend]` ("radfm" or "medvint")."""
    if backend not in BACKENDS:
        raise ValueError(f"backend '{backend}': one of {', '.join(BACKENDS)}")
    items = build_items(data_dir, limit, fold)
    train_items = build_items(data_dir, None, "train")
    if backend == "radfm":
        predictions = predict(bundle, items, max_new_tokens or RADFM_NEW_TOKENS)
        protocol = f"every question open, greedy, {max_new_tokens or RADFM_NEW_TOKENS} new tokens"
    else:
        new_tokens = max_new_tokens or 50
        predictions = predict_medvint(bundle, items, closed_as, new_tokens)
        as_choices = sum(asked_as_choices(i, closed_as) for i in items)
        protocol = (f"open prompt, greedy, {new_tokens} new tokens" if closed_as == "open" else
                    f"{as_choices} closed questions with options asked as multiple choice, the rest open "
                    f"(greedy, {new_tokens} new tokens)")
    return {
        "suite": "vqa-rad",
        "fold": fold,
        "backend": backend,
        "model": BACKENDS[backend],
        "weights": weights or str(getattr(bundle, "folder", None) or getattr(bundle, "weights", "?")),
        "protocol": protocol,
        "closed_as": closed_as if backend == "medvint" else "open",
        "items": len(items),
        backend: score(items, predictions),
        "baselines": baselines(items, train_items),
        "predictions": predictions,
    }


def format_report(report: dict[str, Any]) -> str:
    backend = report.get("backend", "radfm")
    model = report.get("model", BACKENDS.get(backend, backend))
    weights = report.get("weights", report.get("model"))
    lines = [f"VQA-RAD ({report['fold']}, {report['items']} questions) with {model} (weights {weights})"]
    if report.get("protocol"):
        lines.append(f"  asked: {report['protocol']}")
    if report.get("answered_by"):
        lines.append("  answered by: " + ", ".join(f"{m} {n}" for m, n in report["answered_by"].items()))
    rows = [(backend, report[backend]), *report["baselines"].items()]
    for name, s in rows:
        lines.append(
            f"  {name:<11} closed accuracy {s['closed_accuracy']:.3f} (n={s['closed_n']})   "
            f"open token recall {s['open_token_recall']:.3f} (n={s['open_n']})"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ weights from the config


def weights_reason(settings: Any, backend: str) -> str | None:
    """Why `backend` cannot run with these settings (one line), or None."""
    from medagent.tools.radfm import medvint_reason, radfm_reason

    return radfm_reason(settings) if backend == "radfm" else medvint_reason(settings)


def load_backend(settings: Any, backend: str) -> tuple[Any, str]:
    """(the loaded model, its weights file) through imaging.vqa's own loaders (raises UnavailableError)."""
    from medagent.tools.pool import ModelPool
    from medagent.tools.radfm import bundle, medvint_bundle

    pool = ModelPool()
    if backend == "radfm":
        from medagent.tools.radfm import model_files

        loaded = bundle(settings, pool)
        files = [str(path) for name, path in model_files(settings) if name.startswith("RadFM")]
        return loaded, files[0] if files else str(settings.radfm.path)
    loaded = medvint_bundle(settings, pool)
    return loaded, str(getattr(loaded, "weights", None) or settings.medvint.path)


# ------------------------------------------------------------------ a `medagent eval run vqa-rad` run


def run_settings(run_dir: Path) -> dict[str, Any]:
    """The settings a run recorded in its run.json ({} when there is none)."""
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text(encoding="utf-8")).get("settings", {}) if path.is_file() else {}


def score_run(run_dir: Path, data_dir: Path | None, limit: int | None = None, fold: str = "val") -> dict[str, Any]:
    """Scores of a `medagent eval run vqa-rad` run from its traces (the `imaging.vqa` answer per item; an item whose
    call failed counts as an empty answer), with the baselines on the items it ran and the models that answered."""
    from medagent.tools.payloads import VQAPayload
    from medagent.tools.trace import ToolResultEvent, read_trace

    items, predictions, models, failed = [], {}, Counter(), 0
    for item in build_items(data_dir, None, fold):
        trace = Path(run_dir) / "traces" / f"{item['id']}.jsonl"
        if not trace.is_file():
            continue
        events = [e for e in read_trace(trace) if isinstance(e, ToolResultEvent) and e.tool == "imaging.vqa"]
        answered = next((d for e in events for d in e.details if not d.get("error")), None)
        if answered is None:
            failed += 1
            predictions[item["id"]] = ""
            models["(failed)"] += 1
        else:
            payload = VQAPayload.model_validate(answered["payload"])
            predictions[item["id"]] = payload.answer
            models[payload.model] += 1
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    backend = "run"
    settings = run_settings(run_dir)
    vqa = (settings.get("vqa") or {}).get("backend", "?")
    paths = ", ".join(f"[{name}] path {(settings.get(name) or {}).get('path')}" for name in ("radfm", "medvint"))
    return {
        "suite": "vqa-rad", "fold": fold, "backend": backend, "model": f"imaging.vqa ([vqa] backend = {vqa})",
        "weights": f"{paths}; run {run_dir}", "protocol": "through imaging.vqa in direct mode, every question open",
        "answered_by": dict(models),
        "failed": failed, "items": len(items), backend: score(items, predictions),
        "baselines": baselines(items, build_items(data_dir, None, "train")), "predictions": predictions,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medagent.evals.radfm", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="radfm", help="which VQA model (default radfm)")
    parser.add_argument("--config", type=Path, help="medagent.toml with [radfm] / [medvint] path (default: the usual one)")
    parser.add_argument("--data-dir", type=Path, help="folder holding vqa_rad/dev.jsonl, or that folder itself")
    parser.add_argument("--limit", type=int, default=None, help="at most N questions of the fold")
    parser.add_argument("--fold", default="val", help="fold to score (default val; the baselines read train)")
    parser.add_argument("--closed-as", choices=("open", "choices"), default="open",
                        help="MedVInT-TD: closed questions with options asked open (authors' VQA-RAD test) or as choices")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"answer length (default RadFM {RADFM_NEW_TOKENS}, MedVInT-TD [medvint] max_new_tokens)")
    parser.add_argument("--run", type=Path, help="score this `medagent eval run vqa-rad` run folder instead of a model")
    parser.add_argument("-o", "--output", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    from medagent.tools.config import load_settings
    from medagent.tools.errors import MedagentError

    try:
        if args.run is not None:
            if not (args.run / "traces").is_dir():
                print(f"vqa-rad eval: {args.run} is not a run folder (no traces/)", file=sys.stderr)
                return 2
            report = score_run(args.run, args.data_dir, args.limit, args.fold)
        else:
            settings = load_settings(args.config)
            reason = weights_reason(settings, args.backend)
            if reason is not None:
                print(f"vqa-rad eval ({BACKENDS[args.backend]}): {reason}", file=sys.stderr)
                return 2
            model, weights = load_backend(settings, args.backend)
            report = run(model, args.data_dir, args.limit, args.fold, args.backend, args.closed_as, weights,
                         args.max_new_tokens or (settings.medvint.max_new_tokens if args.backend == "medvint" else None))
    except (FileNotFoundError, ValueError, MedagentError) as exc:
        print(f"vqa-rad eval: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"report written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
