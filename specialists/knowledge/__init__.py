"""Knowledge graph: HPO phenotypes, rare-disease annotations, ICD-10-CM; entity linking and ranking.

Public API, for evals (tools/ and training/ build on the submodules themselves): the names below.
"""

from medagent.specialists._exports import lazy_exports

_WHERE = {
    "RankParams": "rank",
    "rank_all_scores": "rank",
    "load_linker": "load",
    "split_mentions": "link",
    "form_key": "link",
    "held_out": "link",
    "load_graph": "graph",
    "normalise": "graph",
    "hpo_ontology": "graph",
    "KnowledgeError": "graph",
    "find_obo": "graph",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
