"""Label sets for zero-shot classification: prompt templates x synonyms, built-in sets, user labels.

Each label's text embedding is the mean of the normalised embeddings of every template filled with
every synonym (a prompt ensemble), as KEP's evaluation does with its per-dataset prompt files.
The built-in sets follow the classes of KEP's zero-shot patch benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TEMPLATES = (
    "{}.",
    "a histopathology image of {}.",
    "an H&E stained image of {}.",
    "a photomicrograph showing {}.",
    "presence of {} in the tissue.",
    "{} tissue.",
    "a pathology slide of {}.",
)


@dataclass(frozen=True)
class Label:
    name: str
    synonyms: tuple[str, ...] = ()

    @property
    def phrases(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[Label, ...]
    templates: tuple[str, ...] = field(default=TEMPLATES)
    description: str = ""

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    def prompts(self) -> list[list[str]]:
        """For each label, every template filled with every synonym."""
        return [[t.format(p) for p in label.phrases for t in self.templates] for label in self.labels]


def _set(name: str, description: str, *labels: tuple[str, ...]) -> LabelSet:
    return LabelSet(name, tuple(Label(first, tuple(rest)) for first, *rest in labels), description=description)


BUILTIN: dict[str, LabelSet] = {
    s.name: s
    for s in (
        _set(
            "general",
            "broad tissue categories, used when no labels are given",
            ("normal tissue", "benign tissue", "non-neoplastic tissue"),
            ("adenocarcinoma", "glandular carcinoma"),
            ("squamous cell carcinoma", "keratinizing carcinoma"),
            ("lymphoid tissue", "lymphocytes", "lymphoma"),
            ("necrosis", "necrotic debris"),
            ("fibrous stroma", "connective tissue"),
            ("adipose tissue", "fat"),
        ),
        _set(
            "crc",
            "colorectal tissue types (NCT-CRC-HE-100K / Kather colon)",
            ("adipose tissue", "fat tissue"),
            ("background", "empty slide area"),
            ("debris", "necrotic debris", "necrosis"),
            ("lymphocytes", "lymphocytic infiltrate"),
            ("mucus", "mucin"),
            ("smooth muscle", "muscularis"),
            ("normal colon mucosa", "benign colonic mucosa"),
            ("cancer-associated stroma", "desmoplastic stroma"),
            ("colorectal adenocarcinoma epithelium", "colorectal cancer epithelium"),
        ),
        _set(
            "lung",
            "lung histology (LC25000 lung)",
            ("benign lung tissue", "normal lung parenchyma"),
            ("lung adenocarcinoma", "adenocarcinoma of the lung"),
            ("lung squamous cell carcinoma", "squamous cell carcinoma of the lung"),
        ),
        _set(
            "colon",
            "colon histology (LC25000 colon)",
            ("benign colonic tissue", "normal colon"),
            ("colon adenocarcinoma", "adenocarcinoma of the colon"),
        ),
        _set(
            "breast",
            "breast patches (BACH)",
            ("normal breast tissue", "benign breast parenchyma"),
            ("benign breast lesion", "fibroadenoma"),
            ("breast carcinoma in situ", "ductal carcinoma in situ"),
            ("invasive breast carcinoma", "invasive ductal carcinoma"),
        ),
        _set(
            "luad_tissue",
            "lung adenocarcinoma tissue (WSSS4LUAD)",
            ("tumor epithelial tissue", "tumor cells"),
            ("tumor-associated stroma", "tumor stroma"),
            ("normal lung tissue", "non-tumor tissue"),
        ),
        _set(
            "prostate",
            "prostate Gleason patterns (SICAP)",
            ("non-cancerous prostate tissue", "benign prostate glands"),
            ("Gleason pattern 3", "well-formed atypical glands"),
            ("Gleason pattern 4", "cribriform or poorly formed glands"),
            ("Gleason pattern 5", "solid sheets of tumor cells"),
        ),
    )
}


class LabelError(ValueError):
    """The labels asked for cannot form a classification."""


def _synonyms_for(name: str) -> tuple[str, ...]:
    """Reuse a built-in label's synonyms when a user label names it, so prompt ensembles stay rich."""
    key = name.strip().lower()
    for label_set in BUILTIN.values():
        for label in label_set.labels:
            if label.name.lower() == key:
                return label.synonyms
    return ()


def resolve(labels: list[str] | None = None, label_set: str | None = None, default: str = "general") -> LabelSet:
    """User labels win over a named built-in set; with neither, the default set."""
    if labels is not None:
        names: list[str] = []
        for raw in labels:
            name = " ".join(str(raw).split())
            if name and name.lower() not in {n.lower() for n in names}:
                names.append(name)
        if len(names) < 2:
            raise LabelError(
                f"labels: need at least two distinct, non-empty labels to choose between (got {len(names)}); "
                f"omit labels to use a built-in set ({', '.join(BUILTIN)})"
            )
        return LabelSet("user", tuple(Label(n, _synonyms_for(n)) for n in names), description="user labels")
    chosen = label_set or default
    if chosen not in BUILTIN:
        raise LabelError(f"label_set: unknown set '{chosen}' (built-in: {', '.join(BUILTIN)})")
    return BUILTIN[chosen]
