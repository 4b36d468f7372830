"""VQA-RAD closed questions as PMC-CLIP zero-shot classification: accuracy beside the chance and majority baselines.

    python -m medagent.evals.pmcclip [--config F] [--data-dir D] [--limit N] [--fold val] [--run RUN] [-o report.json]

PMC-CLIP (`[pmcclip] path`) answers no questions; it ranks candidate labels for an image. This harness turns the
closed questions of one VQA-RAD fold into label sets with the rules below (first rule that applies wins; a closed
question no rule turns into labels is skipped and counted under its reason), adds one organ item per image from the
rows' `meta.organ`, and scores whether the top label is the one the reference answer implies. dev.jsonl's `meta`
holds image_name, organ, answer_type, question_type, phrase_type and qid_linked_id: there is no modality field, so
modality enters only through questions that name one ("Is this a CT image?").

Rules (on the question lower-cased, "'s" and the final "?" dropped, and location phrases such as "in this image",
"on the above image", "in this axial section" removed):

- `type` (yes/no): "is this / is the image / was this (a|an|the) X [image|scan|film|study|section|plane|view]" or
  "is the image (oriented) in the X plane" where X (after "study/image of the") is one known term of one axis:
  modality (ct, ct scan, mri, mr, x-ray, xray, radiograph, cxr, ...: `AXES`), plane (axial, transverse, coronal, sagittal,
  saggital) or organ (brain, head, chest, thorax, abdomen). Two labels: that class, and the axis' other classes
  ("a CT scan" vs "an MRI scan or an X-ray radiograph"); yes = the first. Any other X ("a T2 weighted image",
  "a chest x-ray", "a MRI of the chest") goes on to the rules below and, if none applies, is skipped as
  `type: not a modality, plane or organ term`.
- `presence` (yes/no): "is/are there (any) (evidence|presence|signs of) F", "does/do/did this/the patient|image|
  study|scan have|show|demonstrate F", "do/can you see|appreciate|visualize|identify F", "(is|are) (any) F present|
  seen|visible|visualized|shown|noted|identified", "any F present". Leading a/an/any/the and trailing present/seen/
  visible/visualized/shown/pictured/noted/identified/anywhere/here are dropped from F. Labels: "F" and "no F"; yes =
  the first. F that starts with a number or "more than" is skipped (`presence: a count`), F over 6 words too
  (`presence: finding over 6 words`).
- `attribute` (yes/no): "is/are the S A" or "does/do the S look|appear|seem A", A one word ending in -ed or -ic or one
  of normal, abnormal, midline, patent, swollen, symmetric, symmetrical; S at most 4 words. Labels: "A S" and its
  opposite ("abnormal S" for normal, "normal S" for abnormal, else "non-A S"); yes = the first.
- Any other yes/no question is skipped (`yes/no: no rule matched`).
- `choice` (closed, answer not yes/no): "... X or Y ..." where the answer's words are the words next to "or": the
  same number of words on each side when they are single words or end alike ("focal or diffuse", "with contrast or
  without contrast"), else one word on each side sharing the words after them ("with or without contrast", "right
  or left side"); articles and "'s" are dropped first. Labels: the two alternatives; the answer's is correct. A
  comma list of three or more alternatives is skipped (`choice: more than two alternatives`), an answer that is not
  next to "or" too (`choice: answer not an alternative`), a closed question with neither (`closed: not yes/no and no
  'or' alternatives`).
- `organ (meta)`: one item per image of the fold: "an image of the head / chest / abdomen" by `meta.organ` (HEAD, CHEST,
  ABD). Not a question: counted apart from the closed questions.

Baselines on the same items: chance = the mean of 1 / number of labels; majority = per rule, the answer most common
among the *train* fold's items of that rule (yes or no for the yes/no rules, the organ, the alternative's text),
taken when it is one of the item's labels, else the first label. The eval-runner suite `vqa-rad-zero-shot` runs the
same items through `imaging.classify` with the labels; `--run RUN` scores such a run here.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from medagent.evals.radfm import run_settings, vqa_rad_file, words

MODEL = "PMC-CLIP"
# Per axis: class -> its label, and the question terms that name it.
AXES = {
    "modality": {
        "CT": ("a CT scan", ("ct", "ct scan", "computed tomography", "ct image")),
        "MRI": ("an MRI scan", ("mri", "mr", "mri scan", "mr image", "magnetic resonance")),
        "X-ray": ("an X-ray radiograph", ("x-ray", "xray", "x ray", "radiograph", "cxr", "plain film")),
    },
    "plane": {
        "axial": ("an axial slice", ("axial", "transverse")),
        "coronal": ("a coronal slice", ("coronal",)),
        "sagittal": ("a sagittal slice", ("sagittal", "saggital")),
    },
    "organ": {
        "head": ("an image of the head", ("brain", "head")),
        "chest": ("an image of the chest", ("chest", "thorax")),
        "abdomen": ("an image of the abdomen", ("abdomen",)),
    },
}
META_ORGANS = {"HEAD": "head", "CHEST": "chest", "ABD": "abdomen"}
ORGAN_QUESTION = "Which part of the body does this image show?"
RULES = ("type", "presence", "attribute", "choice", "organ (meta)")

_PLACE = re.compile(
    r"\s+(?:in|on|of|within) (?:this|the)(?: above)?(?: [a-z]+)? "
    r"(?:image|images|section|film|scan|study|radiograph|slice|picture|ct|mri|x-ray)(?: above)?\b"
)
_TAIL = re.compile(r"\s+(?:present|seen|visible|visualized|shown|pictured|noted|identified|anywhere|here)$")
_ARTICLE = re.compile(r"^(?:a|an|the|any)\s+")
_IS_THIS = [
    re.compile(r"^is (?:this|the) image(?: above)? (?:oriented |taken |captured )?in the (?P<x>.+?)$"),
    re.compile(r"^(?:is|was) (?:this|it|the image|this image)(?: image| study| film| scan)?(?: (?:a|an|the))? (?P<x>.+)$"),
]
_TYPE_NOUN = re.compile(r"\s+(?:image|scan|film|study|section|plane|view)$")
_TYPE_OF = re.compile(r"^(?:(?:a|an) )?(?:(?:study|image|picture|scan|film) )?of (?:the )?")
_PRESENCE = [
    re.compile(r"^(?:is|are) there (?:any )?(?:(?:evidence|presence|signs?) of )?(?P<x>.+)$"),
    re.compile(r"^(?:does|do|did) (?:this|the) (?:patient|image|study|scan|film|radiograph) "
               r"(?:have|has|show|demonstrate|reveal)s? (?P<x>.+)$"),
    re.compile(r"^(?:do|can) you (?:see|appreciate|visualize|identify) (?P<x>.+)$"),
    re.compile(r"^(?:(?:is|are) )?(?:any )?(?P<x>.+?) (?:present|seen|visible|visualized|shown|noted|identified)$"),
]
_ATTRIBUTE = [
    re.compile(r"^(?:is|are) the (?P<s>.+?) (?P<a>[a-z-]+)$"),
    re.compile(r"^(?:does|do) the (?P<s>.+?) (?:look|appear|seem) (?P<a>[a-z-]+)$"),
]
_ADJECTIVES = {"normal", "abnormal", "midline", "patent", "swollen", "symmetric", "symmetrical"}
_COUNT = re.compile(r"^(?:\d+\b|>|more than|less than|fewer than|normal number)")


def clean_question(question: str) -> str:
    """The question as the rules read it (see the module docstring)."""
    text = " ".join(question.lower().replace("’", "'").split())
    text = re.sub(r"'s\b", "", text).replace("(s)", "s")
    text = re.sub(r"[?.!\s]+$", "", text)
    text = re.sub(r"[^a-z0-9>\-' ]+", " ", text)
    text = " ".join(text.split())
    previous = None
    while previous != text:
        previous, text = text, _PLACE.sub("", text)
    return text


def _strip(phrase: str) -> str:
    previous = None
    while previous != phrase:
        previous = phrase
        phrase = _TAIL.sub("", _ARTICLE.sub("", phrase.strip())).strip()
    return phrase


def _term(x: str) -> tuple[str, str] | None:
    """(axis, class) that a question term names, or None."""
    x = _TYPE_OF.sub("", _ARTICLE.sub("", x))
    candidates = [x]
    while _TYPE_NOUN.search(candidates[-1]):
        candidates.append(_TYPE_NOUN.sub("", candidates[-1]))
    for candidate in candidates:
        for axis, classes in AXES.items():
            for name, (_, terms) in classes.items():
                if candidate in terms:
                    return axis, name
    return None


def yes_no_labels(question: str) -> tuple[str, list[str]] | str:
    """(rule, [label for yes, label for no]) for a yes/no question, or the reason no rule applies."""
    text = clean_question(question)
    asks_type = False
    for pattern in _IS_THIS:
        match = pattern.match(text)
        found = _term(match.group("x")) if match else None
        asks_type = asks_type or match is not None
        if found is not None:
            axis, name = found
            classes = AXES[axis]
            others = " or ".join(label for other, (label, _) in classes.items() if other != name)
            return "type", [classes[name][0], others]
    for pattern in _PRESENCE:
        match = pattern.match(text)
        if match:
            finding = _strip(match.group("x"))
            if not finding:
                break
            if _COUNT.match(finding):
                return "presence: a count"
            if len(finding.split()) > 6:
                return "presence: finding over 6 words"
            return "presence", [finding, f"no {finding}"]
    for pattern in _ATTRIBUTE:
        match = pattern.match(text)
        if match:
            subject, adjective = _strip(match.group("s")), match.group("a")
            if not (adjective.endswith(("ed", "ic")) or adjective in _ADJECTIVES) or len(subject.split()) > 4:
                continue
            opposite = {"normal": "abnormal", "abnormal": "normal"}.get(adjective, f"non-{adjective}")
            return "attribute", [f"{adjective} {subject}", f"{opposite} {subject}"]
    return "type: not a modality, plane or organ term" if asks_type else "yes/no: no rule matched"


def choice_labels(question: str, answer: str) -> tuple[list[str], int] | str:
    """([the two alternatives], index of the answer's) for "... X or Y ..." whose answer is X or Y, or the reason not."""
    if " or " not in f" {question.lower()} ":
        return "closed: not yes/no and no 'or' alternatives"
    before_or = question.lower().split(" or ")[0]
    if "," in before_or:
        return "choice: more than two alternatives"
    tokens = [w for w in words(re.sub(r"'s\b", "", question.lower())) if w not in {"a", "an", "the"}]
    wanted = [w for w in words(answer) if w not in {"a", "an", "the"}]
    if not wanted or "or" not in tokens:
        return "choice: answer not an alternative"
    k = tokens.index("or")
    n = len(wanted)
    pairs = []
    left, right = tokens[max(k - n, 0) : k], tokens[k + 1 : k + 1 + n]
    if len(left) == n and len(right) == n and (n == 1 or left[-1] == right[-1]):
        pairs.append((left, right))  # "focal or diffuse", "with contrast or without contrast"
    if n >= 2 and k >= 1 and len(right) == n:
        pairs.append(([tokens[k - 1], *right[1:]], right))  # "right or left side", "with or without contrast"
    for left, right in pairs:
        if wanted in (left, right):
            return [" ".join(left), " ".join(right)], 0 if wanted == left else 1
    return "choice: answer not an alternative"


def question_item(row: dict[str, Any]) -> dict[str, Any] | str:
    """A classification item from one closed VQA-RAD item (evals/radfm.build_items row), or the reason it is skipped."""
    answer = " ".join(words(row["answer"]))
    if answer in ("yes", "no"):
        made = yes_no_labels(row["question"])
        if isinstance(made, str):
            return made
        rule, labels = made
        index = 0 if answer == "yes" else 1
        keys = ["yes", "no"]
    else:
        made = choice_labels(row["question"], row["answer"])
        if isinstance(made, str):
            return made
        rule, (labels, index) = "choice", made
        keys = list(labels)
    if len({label.lower() for label in labels}) < 2:
        return f"{rule}: the two labels are the same"
    return {"id": row["id"], "rule": rule, "question": row["question"], "image": row["image"], "labels": labels,
            "answer": index, "keys": keys, "reference": row["answer"]}  # fmt: skip


def organ_item(row: dict[str, Any]) -> dict[str, Any] | None:
    organ = META_ORGANS.get(row.get("organ", ""))
    if organ is None:
        return None
    names = list(AXES["organ"])
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(row["image"]).stem)
    return {"id": f"organ-{stem}", "rule": "organ (meta)", "question": ORGAN_QUESTION, "image": row["image"],
            "labels": [AXES["organ"][n][0] for n in names], "answer": names.index(organ), "keys": names,
            "reference": row["organ"]}  # fmt: skip


def build_items(data_dir: Path | None, limit: int | None = None, fold: str = "val") -> dict[str, Any]:
    """{'items': classification items, 'made': count per rule, 'skipped': count per reason, 'closed': closed questions
    read}. In file order; an image's organ item comes before its first question. With `limit`, reading stops once
    that many items are made (the counts cover what was read)."""
    from medagent.evals.radfm import build_items as vqa_items

    items: list[dict[str, Any]] = []
    made: Counter = Counter()
    skipped: Counter = Counter()
    seen_images: set[str] = set()
    closed = 0

    def add(item: dict[str, Any]) -> bool:
        items.append(item)
        made[item["rule"]] += 1
        return limit is not None and len(items) >= limit

    for row in vqa_items(data_dir, None, fold):
        if row["image"] not in seen_images:
            seen_images.add(row["image"])
            organ = organ_item(row)
            if organ is not None and add(organ):
                break
        if not row["closed"]:
            continue
        closed += 1
        item = question_item(row)
        if isinstance(item, str):
            skipped[item] += 1
        elif add(item):
            break
    return {"items": items, "made": {r: made[r] for r in RULES if made[r]}, "skipped": dict(skipped.most_common()),
            "closed": closed}  # fmt: skip


# ------------------------------------------------------------------ scoring


def _accuracy(rows: list[dict[str, Any]], predicted: dict[str, int]) -> float:
    return round(sum(predicted[r["id"]] == r["answer"] for r in rows) / len(rows), 4) if rows else 0.0


def majority_choices(train_items: list[dict[str, Any]]) -> dict[str, str]:
    """Per rule, the gold key most common among the train fold's items of that rule."""
    counts: dict[str, Counter] = {}
    for item in train_items:
        counts.setdefault(item["rule"], Counter())[item["keys"][item["answer"]]] += 1
    return {rule: counter.most_common(1)[0][0] for rule, counter in counts.items()}


def score(items: list[dict[str, Any]], predicted: dict[str, int], train_items: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of `predicted` (item id -> label index), the chance and majority baselines, overall and per rule."""
    majority = majority_choices(train_items)
    guess = {i["id"]: i["keys"].index(majority[i["rule"]]) if majority.get(i["rule"]) in i["keys"] else 0 for i in items}

    def row(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "n": len(rows),
            "accuracy": _accuracy(rows, predicted),
            "chance": round(sum(1 / len(r["labels"]) for r in rows) / len(rows), 4) if rows else 0.0,
            "majority": _accuracy(rows, guess),
        }

    return {**row(items), "by_rule": {rule: row([i for i in items if i["rule"] == rule]) for rule in RULES
                                      if any(i["rule"] == rule for i in items)},
            "majority_answers": majority}  # fmt: skip


def predict(encoder: Any, items: list[dict[str, Any]]) -> dict[str, int]:
    """The index of PMC-CLIP's top label for each item (the image read as imaging.classify reads it)."""
    from medagent.tools.image_index import read_picture

    predicted = {}
    for item in items:
        result = encoder.classify(read_picture(Path(item["image"])), item["labels"])
        predicted[item["id"]] = max(range(len(item["labels"])), key=lambda i: result.probabilities[i])
    return predicted


def run(encoder: Any, data_dir: Path | None, limit: int | None = None, fold: str = "val",
        weights: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Score a loaded PMC-CLIP encoder (`PMCCLIPEncoder`) on one fold; a report dict for `format_report`."""
    built = build_items(data_dir, limit, fold)
    train = build_items(data_dir, None, "train")["items"]
    predicted = predict(encoder, built["items"])
    return _report(built, predicted, train, weights or str(getattr(encoder.loaded, "weights", "?")), fold)


def _report(built: dict[str, Any], predicted: dict[str, int], train: list[dict[str, Any]], weights: str,
            fold: str) -> dict[str, Any]:  # fmt: skip
    items = built["items"]
    return {
        "suite": "vqa-rad-zero-shot", "fold": fold, "model": MODEL, "weights": weights, "items": len(items),
        "built": sum(built["made"].values()), "closed_questions": built["closed"], "made": built["made"],
        "skipped": built["skipped"],
        "scores": score(items, predicted, train),
        "predictions": {i["id"]: {"labels": i["labels"], "answer": i["answer"], "predicted": predicted[i["id"]],
                                  "rule": i["rule"]} for i in items},
    }  # fmt: skip


def score_run(run_dir: Path, data_dir: Path | None, limit: int | None = None, fold: str = "val") -> dict[str, Any]:
    """Accuracy of a `medagent eval run vqa-rad-zero-shot` run from its traces (imaging.classify's top label per item;
    a failed call counts as wrong), with the baselines on the items it ran."""
    from medagent.tools.payloads import ClassifyPayload
    from medagent.tools.trace import ToolResultEvent, read_trace

    built = build_items(data_dir, None, fold)
    ran, predicted = [], {}
    for item in built["items"]:
        trace = Path(run_dir) / "traces" / f"{item['id']}.jsonl"
        if not trace.is_file():
            continue
        events = [e for e in read_trace(trace) if isinstance(e, ToolResultEvent) and e.tool == "imaging.classify"]
        detail = next((d for e in events for d in e.details if not d.get("error")), None)
        top = ClassifyPayload.model_validate(detail["payload"]).top_label if detail else None
        predicted[item["id"]] = item["labels"].index(top) if top in item["labels"] else -1
        ran.append(item)
        if limit is not None and len(ran) >= limit:
            break
    built = {**built, "items": ran}
    weights = (run_settings(run_dir).get("pmcclip") or {}).get("path")
    return _report(built, predicted, build_items(data_dir, None, "train")["items"], f"{weights}; run {run_dir}", fold)


def format_report(report: dict[str, Any]) -> str:
    s = report["scores"]
    skipped = sum(report["skipped"].values())
    lines = [
        f"VQA-RAD zero-shot ({report['fold']}) with {report['model']} (weights {report['weights']}): {report['items']} "
        + (f"of the {report['built']} " if report.get("built", report["items"]) != report["items"] else "")
        + f"items from {report['closed_questions']} closed questions + the images' organ",
        "  made:    " + ", ".join(f"{rule} {n}" for rule, n in report["made"].items()),
        f"  skipped: {skipped} closed questions" + (
            " (" + "; ".join(f"{reason} {n}" for reason, n in report["skipped"].items()) + ")" if skipped else ""),
        f"  {'all':<13} n={s['n']:<4} accuracy {s['accuracy']:.3f}   chance {s['chance']:.3f}   "
        f"majority {s['majority']:.3f}",
    ]  # fmt: skip
    for rule, row in s["by_rule"].items():
        lines.append(f"  {rule:<13} n={row['n']:<4} accuracy {row['accuracy']:.3f}   chance {row['chance']:.3f}   "
                     f"majority {row['majority']:.3f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medagent.evals.pmcclip", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="medagent.toml with [pmcclip] path (default: the usual one)")
    parser.add_argument("--data-dir", type=Path, help="folder holding vqa_rad/dev.jsonl, or that folder itself")
    parser.add_argument("--limit", type=int, default=None, help="at most N items")
    parser.add_argument("--fold", default="val", help="fold to score (default val; the majority baseline reads train)")
    parser.add_argument("--run", type=Path, help="score this `medagent eval run vqa-rad-zero-shot` run folder instead")
    parser.add_argument("-o", "--output", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    from medagent.tools.config import load_settings
    from medagent.tools.errors import MedagentError

    try:
        vqa_rad_file(args.data_dir)
        if args.run is not None:
            if not (args.run / "traces").is_dir():
                print(f"zero-shot eval: {args.run} is not a run folder (no traces/)", file=sys.stderr)
                return 2
            report = score_run(args.run, args.data_dir, args.limit, args.fold)
        else:
            from medagent.tools.pmcclip import check, encoder
            from medagent.tools.pool import ModelPool

            settings = load_settings(args.config)
            reason = check(settings)
            if reason is not None:
                print(f"zero-shot eval (PMC-CLIP): {reason}", file=sys.stderr)
                return 2
            model = encoder(settings, ModelPool())
            report = run(model, args.data_dir, args.limit, args.fold, str(model.loaded.weights))
    except (FileNotFoundError, ValueError, MedagentError) as exc:
        print(f"zero-shot eval: {exc}", file=sys.stderr)
        return 2
    if not report["items"]:
        print(f"zero-shot eval: no items in fold '{args.fold}'", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"report written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
