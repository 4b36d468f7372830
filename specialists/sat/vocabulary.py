"""SAT's class vocabulary: the 498 (modality, term) classes, and turning a requested target into one of them.

`classes.tsv` holds the class names, their modality and body region only (provenance and the licence caveat in
LICENSE_NOTE.md). `Vocabulary.resolve(target, modality)`:

- matches case-insensitively and whatever the word order ("Kidney Left" = "left kidney"), after medagent's own
  synonyms (`SYNONYMS`: "gall bladder" -> "gallbladder", "L1" -> "lumbar vertebrae 1 (l1)", ...) and spellings
  (`WORD_FORMS`: "tumour" -> "tumor", "lt" -> "left", ...);
- refuses a class SAT was not trained on for the scan's modality, saying which modalities it was trained on;
- for an unknown target, refuses with the nearest known names (difflib) for that modality.

SAT itself takes any text (an unlisted term is zero-shot); refusing is medagent's choice, so a report never rests
on a mask for a class the model never saw.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

CLASSES_FILE = Path(__file__).resolve().parent / "classes.tsv"
MODALITY_NAMES = {"ct": "CT", "mri": "MRI", "us": "ultrasound", "pet": "PET"}

# Clinical names -> SAT's term. medagent's own list; every target is a SAT term (tests/sat check it).
SYNONYMS = {
    "gall bladder": "gallbladder",
    "bladder": "urinary bladder",
    "ivc": "inferior vena cava",
    "svc": "superior vena cava",
    "brain stem": "brainstem",
    "cord": "spinal cord",
    "small intestine": "small bowel",
    "large bowel": "colon",
    "large intestine": "colon",
    "adrenal": "adrenal gland",
    "left adrenal": "left adrenal gland",
    "right adrenal": "right adrenal gland",
    "left ventricle": "left heart ventricle",
    "right ventricle": "right heart ventricle",
    "left atrium": "left heart atrium",
    "right atrium": "right heart atrium",
    "pancreatic tumor": "pancreas tumor",
    "renal tumor": "kidney tumor",
    "renal cyst": "kidney cyst",
    "hepatic tumor": "liver tumor",
    "hepatic vessel": "liver vessel",
    "pulmonary nodule": "lung nodule",
    "pleural effusion": "lung effusion",
    "femoral head": "head of femur",
    "left femoral head": "head of left femur",
    "right femoral head": "head of right femur",
    "prostate gland": "prostate",
    "cervix": "uterocervix",
    "uterine cervix": "uterocervix",
    "bronchi": "bronchie",
    "bronchus": "bronchie",
    "myocardial infarction scar": "myocardial scar",
}
# Single words rewritten before matching: British spellings, plurals, side abbreviations.
WORD_FORMS = {
    "tumour": "tumor",
    "tumours": "tumor",
    "tumors": "tumor",
    "oesophagus": "esophagus",
    "haemorrhage": "hemorrhage",
    "oedema": "edema",
    "gray": "grey",
    "kidneys": "kidney",
    "lungs": "lung",
    "vertebra": "vertebrae",
    "lt": "left",
    "rt": "right",
}
_VERTEBRA_CODE = re.compile(r"^(cervical|thoracic|lumbar|sacral) vertebrae \d+ \(([ctls]\d+)\)$")


class VocabularyError(ValueError):
    """A target or modality SAT cannot segment; the message says why and what would work."""


class UnknownTargetError(VocabularyError):
    def __init__(self, message: str, target: str, suggestions: list[str]) -> None:
        super().__init__(message)
        self.target = target
        self.suggestions = suggestions


class ModalityMismatchError(VocabularyError):
    def __init__(self, message: str, term: str, modality: str, trained_for: list[str]) -> None:
        super().__init__(message)
        self.term = term
        self.modality = modality
        self.trained_for = trained_for


@dataclass(frozen=True)
class SATClass:
    term: str  # the text prompt, lower-case
    modality: str  # ct, mri or pet
    region: str


def _words(text: str) -> list[str]:
    return [WORD_FORMS.get(w, w) for w in re.findall(r"[a-z0-9]+", text.lower())]


def _bag(text: str) -> tuple[str, ...]:
    return tuple(sorted(_words(text)))


def sat_modality(name: str) -> str:
    """A modality as SAT codes it ('ct', 'mri', 'us', 'pet') from a DICOM code or a free description.

    SAT's inference rules, in order: t1/t2/mri/mr/flair/dwi -> mri, then ct -> ct, then pet -> pet; medagent adds
    DICOM's 'PT' -> pet and us/ultrasound -> us (SAT's training rule).
    """
    raw = name.strip().lower()
    if raw == "pt":
        return "pet"
    if any(word in raw for word in ("t1", "t2", "mri", "mr", "flair", "dwi")):
        return "mri"
    for word, code in (("ct", "ct"), ("pet", "pet"), ("ultrasound", "us"), ("us", "us")):
        if word in raw:
            return code
    raise VocabularyError(f"modality {name!r} is not one SAT knows (CT, MR/MRI, PET, US)")


@dataclass(frozen=True)
class Vocabulary:
    classes: tuple[SATClass, ...]
    _index: dict[tuple[str, ...], str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        terms = self.terms()
        for term in terms:
            self._index.setdefault(_bag(term), term)
        aliases = dict(SYNONYMS)
        for term in terms:  # "L1", "L1 vertebra" for "lumbar vertebrae 1 (l1)"
            code = _VERTEBRA_CODE.match(term)
            if code:
                aliases[code.group(2)] = term
                aliases[f"{code.group(2)} vertebrae"] = term
        for alias, term in aliases.items():
            self._index.setdefault(_bag(alias), term)

    def __len__(self) -> int:
        return len(self.classes)

    def terms(self, modality: str | None = None) -> list[str]:
        """Distinct terms in file order, of one SAT modality code or all."""
        seen = dict.fromkeys(c.term for c in self.classes if modality is None or c.modality == modality)
        return list(seen)

    def modalities_of(self, term: str) -> list[str]:
        return [c.modality for c in self.classes if c.term == term]

    def canonical_term(self, target: str) -> str | None:
        """SAT's term for a target, whatever its case, word order or synonym; None when there is none."""
        plain = " ".join(target.lower().split())
        if plain in self.terms():
            return plain
        return self._index.get(_bag(plain))

    def nearest(self, target: str, modality: str | None = None, n: int = 5) -> list[str]:
        """The known terms (of `modality`, else all) closest in spelling to `target`."""
        candidates = self.terms(modality) or self.terms()
        plain = " ".join(_words(target))
        found = difflib.get_close_matches(plain, candidates, n=n, cutoff=0.6)
        if len(found) < n:  # a near-miss of a synonym ("gall blader") points at its term
            near_alias = difflib.get_close_matches(plain, list(SYNONYMS), n=n, cutoff=0.75)
            found += [SYNONYMS[a] for a in near_alias if SYNONYMS[a] in candidates and SYNONYMS[a] not in found]
        return found[:n]

    def resolve(self, target: str, modality: str) -> SATClass:
        """The class to prompt SAT with for `target` on a scan of `modality` (any form `sat_modality` reads)."""
        code = sat_modality(modality)
        term = self.canonical_term(target)
        where = MODALITY_NAMES[code]
        if term is None:
            suggestions = self.nearest(target, code)
            hint = f"; nearest {where} classes: {', '.join(suggestions)}" if suggestions else ""
            raise UnknownTargetError(
                f"{target!r} is not one of SAT's {len(self)} classes{hint}", target=target, suggestions=suggestions
            )
        for item in self.classes:
            if item.term == term and item.modality == code:
                return item
        trained = self.modalities_of(term)
        names = " and ".join(MODALITY_NAMES[m] for m in trained)
        article = "an" if names[0] in "AEIOUM" else "a"  # "an MRI", "a CT"
        raise ModalityMismatchError(
            f"{term!r} is {article} {names} class in SAT's vocabulary, not "
            f"{where}: the model was not trained to segment it on {where} scans",
            term=term,
            modality=code,
            trained_for=trained,
        )


def load_vocabulary(path: Path = CLASSES_FILE) -> Vocabulary:
    """The classes from `classes.tsv` (a header line `modality, term, region`; `#` lines are comments)."""
    classes = []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    if not lines or lines[0].split("\t") != ["modality", "term", "region"]:
        raise ValueError(f"{path}: expected a 'modality<TAB>term<TAB>region' header")
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != 3 or cells[0] not in MODALITY_NAMES:
            raise ValueError(f"{path}: line {number} is not 'modality<TAB>term<TAB>region' with a SAT modality")
        classes.append(SATClass(term=cells[1], modality=cells[0], region=cells[2]))
    return Vocabulary(classes=tuple(classes))
