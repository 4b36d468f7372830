"""RadFM: radiology visual question answering on 2D images and 3D volumes (model, loader, preprocessing).

Public API, for evals (tools/ and training/ build on the submodules themselves): the names below.
"""

from medagent.specialists._exports import lazy_exports

_WHERE = {
    "image_to_tensor": "preprocess",
    "answer": "infer",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
