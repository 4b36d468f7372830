"""KEP pathology model: architecture, checkpoint loading, preprocessing and zero-shot classification.

Public API, for evals (tools/ and training/ build on the submodules themselves): the names below.
"""

from medagent.specialists._exports import lazy_exports

_WHERE = {
    "TilingOptions": "preprocess",
    "load_kep": "load",
    "resolve": "labels",
    "KEPClassifier": "infer",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
