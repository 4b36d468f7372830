"""RadDiag (RP3D-Diag) long-tail diagnosis from scans: architecture, checkpoint loading, preprocessing, inference.

Public API, for evals (tools/ and training/ build on the submodules themselves): the names below.
"""

from medagent.specialists._exports import lazy_exports

_WHERE = {
    "RadDiagConfig": "model",
    "load_raddiag": "load",
    "vocabulary": "labels",
    "prepare_case": "preprocess",
    "Scan": "preprocess",
    "diagnose": "infer",
    "probabilities": "infer",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
