"""RadDiag's output vocabulary: logit column i -> disorder name -> 3-character ICD-10-CM category.

`disorder_label_dict.json` ({name: index}, index 0..5568) and `ICD_dict_1218.json` ({name: code}) are the
authors' files, copied unchanged from github.com/qiaoyu-zheng/RP3D-Diag (MIT, see LICENSE_RP3D-Diag;
provenance, checksums and the licence caveat of the ICD file in LABELS.md). Column i is the name whose value
is i. Names are joined to codes after turning U+00A0 into a plain space; 5,567 classes get a code, "Normal"
(0) and "Paraneoplastic cerebellar degeneration" (3926) have none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
LABEL_FILE = HERE / "disorder_label_dict.json"
ICD_FILE = HERE / "ICD_dict_1218.json"


def _plain(name: str) -> str:
    return name.replace("\u00a0", " ")


@dataclass(frozen=True)
class Vocabulary:
    names: tuple[str, ...]  # column order
    codes: tuple[str | None, ...]  # ICD-10-CM category per column, None where the mapping has none

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int | None:
        """The column of a disorder name (exact, or with U+00A0 as a plain space), or None."""
        return _name_index(self.names).get(_plain(name))


@lru_cache(maxsize=4)
def _name_index(names: tuple[str, ...]) -> dict[str, int]:
    return {_plain(name): i for i, name in enumerate(names)}


@lru_cache(maxsize=1)
def vocabulary() -> Vocabulary:
    labels: dict[str, int] = json.loads(LABEL_FILE.read_text(encoding="utf-8"))
    icd = {_plain(name): code for name, code in json.loads(ICD_FILE.read_text(encoding="utf-8")).items()}
    names: list[str | None] = [None] * len(labels)
    for name, index in labels.items():
        if not 0 <= index < len(labels) or names[index] is not None:
            raise ValueError(f"{LABEL_FILE}: index {index} of '{name}' is out of range or used twice")
        names[index] = name
    return Vocabulary(names=tuple(names), codes=tuple(icd.get(_plain(n)) for n in names))  # type: ignore[arg-type]
