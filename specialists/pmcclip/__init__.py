"""PMC-CLIP: architecture, checkpoint loading, preprocessing, zero-shot classification and image embeddings.

Public API, for evals (tools/ and training/ build on the submodules themselves): the names below.
"""

from medagent.specialists._exports import lazy_exports

_WHERE = {
    "load_pmcclip": "load",
    "PMCCLIPEncoder": "infer",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
