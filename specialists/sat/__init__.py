"""SAT: segment any of its 498 structures in a CT, MR or PET scan by naming it (network, text encoder, loader, vocabulary).

Public API, for evals (tools/ and training/ build on the submodules themselves): the names below.
"""

from medagent.specialists._exports import lazy_exports

_WHERE = {
    "load_sat": "load",
    "build_tiny": "load",
    "SATLoadError": "load",
    "LAYOUT_NOTE": "load",
    "doctor_lines": "load",
    "load_vocabulary": "vocabulary",
    "sat_modality": "vocabulary",
    "VocabularyError": "vocabulary",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
