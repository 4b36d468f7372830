"""MedVInT-TD (PMC-VQA): visual question answering on single 2D medical images (model, loader, preprocessing).

Public API, for evals (tools/ and training/ build on the submodules themselves): the names below.
"""

from medagent.specialists._exports import lazy_exports

_WHERE = {
    "load_medvint": "load",
    "image_to_tensor": "preprocess",
    "answer_choices": "infer",
    "answer_open": "infer",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
