"""SAT (`imaging.segment_text`) against TotalSegmentator's reference segmentations: Dice per organ.

    python -m medagent.evals.sat [--config F] [--data-dir D] [--limit N] [--out RUN] [--run RUN] [-o report.json]

Data: the TotalSegmentator example files (`../shared/data/imaging/totalsegmentator/`, or `--data-dir` naming the data
root, its `imaging/` folder or the totalsegmentator folder itself). PAIRS.md there says which segmentation belongs to
which image; `PAIRS` below follows it:

| pair | image | reference | label ids |
|---|---|---|---|
| `ct-sm` | `example_ct_sm.nii.gz` (CT) | `example_seg.nii.gz` | TotalSegmentator v2 (`class_map["total"]`) |
| `ct-dicom` | `example_ct_dicom/` (CT, 20 slices) | `example_seg_dicom.nii.gz` | v2 |
| `mr-sm` | `example_mr_sm.nii.gz` (MR) | `example_seg_mr.nii.gz` | `class_map["total_mr"]` (not v2) |

The references are TotalSegmentator's own model output, not manual ground truth: the Dice here is agreement with
TotalSegmentator, not accuracy.

How an organ is scored: each label id present in a reference is mapped to a SAT term by the tables below
(`TOTALSEG_V2`, `TOTAL_MR`; column 3 is the SAT term, `None` where SAT's vocabulary has no such class), and the term is
checked with SAT's own vocabulary (`medagent.specialists.sat.load_vocabulary().resolve(term, modality)`): a term SAT
was not trained on for the scan's modality is listed as not scored, with the reason. Every id's name is checked against
the label table embedded in the reference file (its Caret XML NIfTI extension) and against `labels_v2.json` when
present, so a table that drifted from the files fails loudly.

The registered suite `sat-totalseg` runs one `direct` item per pair and chunk of at most 16 targets (the tool's
limit), calling `imaging.segment_text` with the mapped terms. The runner's scoring does not score masks, so this
harness runs that suite through the eval runner (`run_suite`) and reads the run's evidence artifacts (the NIfTI mask
of each term, on the image's grid), or scores an existing run (`--run RUN`). Before the model it scores each reference
against itself (every organ must print 1.000). The printout names the weights the run used: a tiny random test model
(`build_tiny`) proves the harness only; real SAT weights give the real figure.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medagent.evals.suite import Expected, Step, Suite, SuiteItem, shared_data_dir
from medagent.tools.contracts import Attachment, Case

SUITE = "sat-totalseg"
TOOL = "imaging.segment_text"
MAX_TARGETS = 16  # imaging.segment_text's limit per call

# TotalSegmentator v2 id -> (TotalSegmentator name, SAT term or None). Ids and names: labels_v2.json (= class_map
# ["total"], the label table embedded in example_seg.nii.gz and example_seg_dicom.nii.gz); the ids listed are those
# present in those two files (PAIRS.md). SAT terms: specialists/sat/classes.tsv, CT classes.
TOTALSEG_V2: dict[int, tuple[str, str | None]] = {
    1: ("spleen", "spleen"),
    2: ("kidney_right", "right kidney"),
    3: ("kidney_left", "left kidney"),
    4: ("gallbladder", "gallbladder"),
    5: ("liver", "liver"),
    6: ("stomach", "stomach"),
    7: ("pancreas", "pancreas"),
    8: ("adrenal_gland_right", "right adrenal gland"),
    9: ("adrenal_gland_left", "left adrenal gland"),
    10: ("lung_upper_lobe_left", "left lung upper lobe"),
    11: ("lung_lower_lobe_left", "left lung lower lobe"),
    12: ("lung_upper_lobe_right", "right lung upper lobe"),
    13: ("lung_middle_lobe_right", "right lung middle lobe"),
    14: ("lung_lower_lobe_right", "right lung lower lobe"),
    18: ("small_bowel", "small bowel"),
    19: ("duodenum", "duodenum"),
    20: ("colon", "colon"),
    30: ("vertebrae_L2", "lumbar vertebrae 2 (l2)"),
    31: ("vertebrae_L1", "lumbar vertebrae 1 (l1)"),
    32: ("vertebrae_T12", "thoracic vertebrae 12 (t12)"),
    33: ("vertebrae_T11", "thoracic vertebrae 11 (t11)"),
    52: ("aorta", "aorta"),
    63: ("inferior_vena_cava", "inferior vena cava"),
    64: ("portal_vein_and_splenic_vein", "portal vein and splenic vein"),
    69: ("humerus_left", "left humerus"),
    70: ("humerus_right", "right humerus"),
    79: ("spinal_cord", "spinal cord"),
    86: ("autochthon_left", "left autochthon"),
    87: ("autochthon_right", "right autochthon"),
    88: ("iliopsoas_left", "left iliopsoas"),
    89: ("iliopsoas_right", "right iliopsoas"),
    **{96 + n - 5: (f"rib_left_{n}", f"left rib {n}") for n in range(6, 13)},  # 97..103 = rib_left_6..12
    **{108 + n - 5: (f"rib_right_{n}", f"right rib {n}") for n in range(6, 13)},  # 109..115 = rib_right_6..12
    117: ("costal_cartilages", "costal cartilage"),  # SAT also has "rib cartilage"; "costal cartilage" is the name
}

# TotalSegmentator total_mr id -> (name, SAT term or None). Ids and names: class_map["total_mr"], the label table
# embedded in example_seg_mr.nii.gz (PAIRS.md lists the 23 present). SAT terms: classes.tsv, MRI classes; None where
# the MRI vocabulary has no class of that name (SAT's CT classes are not used on an MR scan).
TOTAL_MR: dict[int, tuple[str, str | None]] = {
    1: ("spleen", "spleen"),
    2: ("kidney_right", "right kidney"),
    3: ("kidney_left", "left kidney"),
    4: ("gallbladder", "gallbladder"),
    5: ("liver", "liver"),
    6: ("stomach", "stomach"),
    7: ("pancreas", "pancreas"),
    8: ("adrenal_gland_right", "right adrenal gland"),
    9: ("adrenal_gland_left", "left adrenal gland"),
    11: ("lung_right", None),
    13: ("small_bowel", None),
    14: ("duodenum", "duodenum"),
    15: ("colon", None),
    19: ("vertebrae", "vertebrae"),
    20: ("intervertebral_discs", "intervertebral discs"),
    21: ("spinal_cord", None),
    23: ("aorta", "aorta"),
    24: ("inferior_vena_cava", "inferior vena cava"),
    25: ("portal_vein_and_splenic_vein", None),
    46: ("autochthon_left", None),
    47: ("autochthon_right", None),
    48: ("iliopsoas_left", None),
    49: ("iliopsoas_right", None),
}
TABLES = {"v2": TOTALSEG_V2, "total_mr": TOTAL_MR}


@dataclass(frozen=True)
class Pair:
    name: str
    image: str  # relative to the totalsegmentator folder
    reference: str
    modality: str  # DICOM code
    table: str  # key of TABLES


PAIRS = [
    Pair("ct-sm", "example_ct_sm.nii.gz", "example_seg.nii.gz", "CT", "v2"),
    Pair("ct-dicom", "example_ct_dicom", "example_seg_dicom.nii.gz", "CT", "v2"),
    Pair("mr-sm", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "MR", "total_mr"),
]


@dataclass
class Organ:
    label: int
    name: str  # TotalSegmentator's
    term: str  # SAT's


@dataclass
class PairPlan:
    pair: Pair
    folder: Path
    organs: list[Organ] = field(default_factory=list)
    unscored: list[tuple[int, str, str]] = field(default_factory=list)  # (id, name, reason)


# ------------------------------------------------------------------ data


def totalseg_dir(data_dir: Path | None) -> Path:
    """The folder holding the TotalSegmentator example files (PAIRS.md's)."""
    base = shared_data_dir(data_dir)
    if base is None:
        raise FileNotFoundError("no TotalSegmentator examples: pass --data-dir (the data root or the folder itself)")
    for candidate in (base / "imaging" / "totalsegmentator", base / "totalsegmentator", base):
        if any((candidate / p.reference).is_file() for p in PAIRS):
            return candidate
    raise FileNotFoundError(f"{base}: no TotalSegmentator reference segmentation ({', '.join(p.reference for p in PAIRS)})")


def embedded_labels(path: Path) -> dict[int, str]:
    """The label table a TotalSegmentator NIfTI carries in its Caret XML extension ({} when it has none)."""
    import nibabel as nib

    table: dict[int, str] = {}
    for extension in nib.load(str(path)).header.extensions:
        text = extension.get_content().decode("utf-8", "replace")
        for key, name in re.findall(r'<Label Key="(\d+)"[^>]*><!\[CDATA\[(.*?)\]\]>', text):
            table[int(key)] = name
    return table


def _check_names(pair: Pair, folder: Path, present: list[int]) -> None:
    table = TABLES[pair.table]
    sources = {f"{pair.reference} (embedded label table)": embedded_labels(folder / pair.reference)}
    if pair.table == "v2" and (folder / "labels_v2.json").is_file():
        raw = json.loads((folder / "labels_v2.json").read_text(encoding="utf-8"))
        sources["labels_v2.json"] = {int(k): v for k, v in raw.items()}
    for where, names in sources.items():
        wrong = [f"{i}: table {table[i][0]!r}, file {names[i]!r}" for i in present if i in table and i in names
                 and names[i] != table[i][0]]  # fmt: skip
        if wrong:
            raise ValueError(f"evals/sat.py's {pair.table} table disagrees with {where}: {'; '.join(wrong)}")


def plan_pairs(data_dir: Path | None) -> list[PairPlan]:
    """Each pair whose files exist, with its scored organs (id -> SAT term checked by SAT's vocabulary) and the
    ids not scored and why."""
    import nibabel as nib

    from medagent.specialists.sat import VocabularyError, load_vocabulary

    folder = totalseg_dir(data_dir)
    vocabulary = load_vocabulary()
    plans = []
    for pair in PAIRS:
        if not ((folder / pair.image).exists() and (folder / pair.reference).is_file()):
            continue
        labels = np.asarray(nib.load(str(folder / pair.reference)).dataobj)
        present = [int(i) for i in np.unique(labels) if i != 0]
        _check_names(pair, folder, present)
        plan = PairPlan(pair=pair, folder=folder)
        for label in present:
            name, term = TABLES[pair.table].get(label, (f"id {label}", None))
            if label not in TABLES[pair.table]:
                plan.unscored.append((label, name, f"id not in evals/sat.py's {pair.table} table"))
                continue
            if term is None:
                plan.unscored.append((label, name, f"SAT's vocabulary has no {pair.modality} class for it"))
                continue
            try:
                resolved = vocabulary.resolve(term, pair.modality)
            except VocabularyError as exc:
                plan.unscored.append((label, name, str(exc)))
                continue
            plan.organs.append(Organ(label=label, name=name, term=resolved.term))
        plans.append(plan)
    if not plans:
        raise FileNotFoundError(f"{folder}: no complete image/reference pair of PAIRS.md")
    return plans


def build_suite(data_dir: Path | None, limit: int | None = None) -> Suite:
    plans = plan_pairs(data_dir)
    items = []
    for plan in plans:
        pair = plan.pair
        chunks = [plan.organs[i : i + MAX_TARGETS] for i in range(0, len(plan.organs), MAX_TARGETS)]
        for number, chunk in enumerate(chunks, start=1):
            item_id = f"{pair.name}-{number}"
            case = Case(id=item_id, question=f"Segment {', '.join(o.term for o in chunk)}.",
                        attachments=[Attachment(id="scan", kind="volume", path=pair.image, modality=pair.modality)])  # fmt: skip
            items.append(SuiteItem(
                id=item_id, mode="direct", case=case,
                steps=[Step(tool=TOOL, arguments={"attachment": "scan", "targets": [o.term for o in chunk]})],
                expected=Expected(required_tools=[TOOL]), group=pair.name,
                meta={"category": pair.name, "pair": pair.name, "reference": pair.reference,
                      "labels": {o.term: o.label for o in chunk}, "names": {o.term: o.name for o in chunk}},
            ))  # fmt: skip
    unscored = sum(len(p.unscored) for p in plans)
    return Suite(
        name=SUITE, items=items, base_dir=plans[0].folder, default_limit=None,
        description=(f"TotalSegmentator examples ({', '.join(p.pair.name for p in plans)}) through {TOOL} (direct "
                     f"mode), {sum(len(p.organs) for p in plans)} organs, {unscored} reference labels not scored "
                     "(no SAT class for the modality). Dice per organ: python -m medagent.evals.sat --run RUN"),
    )  # fmt: skip


# ------------------------------------------------------------------ scoring


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|A∩B| / (|A| + |B|) of two boolean masks of one grid; 1.0 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI's voxels and affine in the closest RAS orientation, so grids saved LAS / LPS / RAS compare."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(image.dataobj), image.affine


def _same_grid(shape_a: tuple, affine_a: np.ndarray, shape_b: tuple, affine_b: np.ndarray) -> str | None:
    if tuple(shape_a) != tuple(shape_b):
        return f"shape {tuple(shape_a)} vs {tuple(shape_b)}"
    if not np.allclose(affine_a, affine_b, atol=1e-2):
        return "affines differ"
    return None


def self_scores(plans: list[PairPlan]) -> dict[str, dict[str, float]]:
    """Each reference organ against itself, through the same loading and Dice as the model's masks (all 1.0)."""
    scores = {}
    for plan in plans:
        labels, _ = canonical(plan.folder / plan.pair.reference)
        scores[plan.pair.name] = {o.term: dice(labels == o.label, labels == o.label) for o in plan.organs}
    return scores


def _mask_file(run_dir: Path, item_id: str, mask: str) -> Path | None:
    for candidate in (run_dir / "artifacts" / mask, run_dir / "artifacts" / item_id / mask,
                      run_dir / "artifacts" / item_id / "artifacts" / Path(mask).name):  # fmt: skip
        if candidate.is_file():
            return candidate
    found = sorted((run_dir / "artifacts" / item_id).rglob(Path(mask).name))
    return found[0] if found else None


def score_run(run_dir: Path, data_dir: Path | None, limit: int | None = None) -> dict[str, Any]:
    """Dice per organ of a `sat-totalseg` run from its traces and mask artifacts; an organ whose call failed, or
    whose mask is missing, is listed under `failed` with the reason (not averaged)."""
    from medagent.tools.trace import ToolResultEvent, read_trace

    run_dir = Path(run_dir)
    plans = {p.pair.name: p for p in plan_pairs(data_dir)}
    suite = build_suite(data_dir)
    items = suite.items[:limit] if limit else suite.items
    scores: dict[str, dict[str, float]] = {}
    failed: dict[str, dict[str, str]] = {}
    models, ran = set(), 0
    references: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for item in items:
        pair = item.meta["pair"]
        trace = run_dir / "traces" / f"{item.id}.jsonl"
        if not trace.is_file():
            continue
        ran += 1
        if pair not in references:
            references[pair] = canonical(plans[pair].folder / plans[pair].pair.reference)
        labels, ref_affine = references[pair]
        details = [d for e in read_trace(trace) if isinstance(e, ToolResultEvent) and e.tool == TOOL for d in e.details]
        by_term = {d["payload"].get("term"): d for d in details if not d.get("error") and d.get("payload")}
        error = next((d.get("summary", "error") for d in details if d.get("error")), "no result in the trace")
        for term, label in item.meta["labels"].items():
            detail = by_term.get(term)
            if detail is None:
                failed.setdefault(pair, {})[term] = error[:200]
                continue
            models.add(str(detail["payload"].get("model")))
            path = _mask_file(run_dir, item.id, detail["payload"]["mask"])
            if path is None:
                failed.setdefault(pair, {})[term] = f"mask {detail['payload']['mask']} not in the run's artifacts"
                continue
            mask, affine = canonical(path)
            mismatch = _same_grid(mask.shape, affine, labels.shape, ref_affine)
            if mismatch:
                failed.setdefault(pair, {})[term] = f"mask and reference grids differ ({mismatch})"
                continue
            scores.setdefault(pair, {})[term] = dice(mask > 0, labels == label)
    settings = {}
    if (run_dir / "run.json").is_file():
        settings = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("settings", {})
    sat = settings.get("sat") or {}
    return {
        "suite": SUITE, "run": str(run_dir), "items": ran, "models": sorted(models),
        "weights": describe_weights(sat.get("path")), "dtype": sat.get("dtype"), "window": sat.get("window"),
        "scores": scores, "failed": failed,
        "unscored": {p.pair.name: [list(u) for u in p.unscored] for p in plans.values()},
    }  # fmt: skip


def describe_weights(path: str | None) -> str:
    """What the SAT folder holds: a tiny random test model (sat_config.json variant 'tiny') or published weights."""
    if not path:
        return "none configured"
    folder = Path(path).expanduser()
    config = folder / "sat_config.json"
    variant = None
    if config.is_file():
        try:
            variant = json.loads(config.read_text(encoding="utf-8")).get("segmenter", {}).get("variant")
        except (OSError, ValueError):
            variant = "?"
    files = ", ".join(sorted(p.name for p in folder.glob("*.pt*"))) or "no .pth files"
    if variant == "tiny":
        return f"{folder}: TINY RANDOM test model (build_tiny; {files}) - proves the harness only, not a SAT figure"
    return f"{folder}: {files}" + (f" (sat_config.json variant {variant})" if variant else " (published layout)")


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def format_scores(title: str, scores: dict[str, dict[str, float]]) -> list[str]:
    lines = [title]
    for pair, organs in scores.items():
        value = mean(list(organs.values()))
        lines.append(f"  {pair}: {len(organs)} organs, mean Dice {value:.3f}" if value is not None else f"  {pair}: -")
        for term, score in organs.items():
            lines.append(f"    {term:<32} {score:.3f}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The self-score and the labels not scored."""
    lines = format_scores("reference vs itself (must be 1.000 per organ):", report["self"])
    for pair, rows in report["unscored"].items():
        if rows:
            lines.append(f"  not scored in {pair}: " + "; ".join(f"{i} {name} ({why})" for i, name, why in rows))
    return "\n".join(lines)


def format_model(m: dict[str, Any]) -> str:
    """The model's Dice per organ, with the weights that produced it."""
    lines = [f"SAT vs TotalSegmentator reference ({m['items']} items of run {m['run']}):",
             f"  weights: {m['weights']}",
             f"  model(s): {', '.join(m['models']) or '-'}; dtype {m['dtype']}, window {m['window']}"]  # fmt: skip
    lines += format_scores("  Dice per organ:", m["scores"])[1:]
    all_scores = [s for organs in m["scores"].values() for s in organs.values()]
    overall = mean(all_scores)
    lines.append(f"  overall mean Dice over {len(all_scores)} organs: " + (f"{overall:.3f}" if overall is not None else "-"))
    for pair, organs in m["failed"].items():
        for term, why in organs.items():
            lines.append(f"  failed {pair} {term}: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medagent.evals.sat", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="medagent.toml with [sat] path (default: the usual one)")
    parser.add_argument("--data-dir", type=Path, help="data root, its imaging/ folder, or the totalsegmentator folder")
    parser.add_argument("--limit", type=int, default=None, help="at most N suite items")
    parser.add_argument("--out", type=Path, help="run folder for the suite run (default: a temporary folder)")
    parser.add_argument("--run", type=Path, help="score this existing `sat-totalseg` run folder instead of running")
    parser.add_argument("-o", "--output", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    from medagent.tools.errors import MedagentError

    try:
        plans = plan_pairs(args.data_dir)
        report: dict[str, Any] = {"self": self_scores(plans),
                                  "unscored": {p.pair.name: [list(u) for u in p.unscored] for p in plans}}  # fmt: skip
        print(format_report(report), flush=True)
        if any(s != 1.0 for organs in report["self"].values() for s in organs.values()):
            print("sat eval: a reference does not score 1.0 against itself; the harness is broken", file=sys.stderr)
            return 1
        if args.run is not None:
            if not (args.run / "traces").is_dir():
                print(f"sat eval: {args.run} is not a run folder (no traces/)", file=sys.stderr)
                return 2
            report["model"] = score_run(args.run, args.data_dir, args.limit)
        else:
            from medagent.evals.runner import run_suite
            from medagent.tools.config import load_settings
            from medagent.tools.sat import check

            settings = load_settings(args.config)
            reason = check(settings)
            if reason is not None:
                print(f"sat eval (SAT): {reason}", file=sys.stderr)
                return 2
            out = args.out or Path(tempfile.mkdtemp(prefix="sat-totalseg-"))
            run_suite(SUITE, out=out, limit=args.limit or 0, data_dir=args.data_dir, settings=settings, quiet=True)
            report["model"] = score_run(out, args.data_dir, args.limit)
    except (FileNotFoundError, ValueError, MedagentError) as exc:
        print(f"sat eval: {exc}", file=sys.stderr)
        return 2
    print(format_model(report["model"]))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"report written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
