"""Knowledge graph speed targets: graph load warm <= 2 s, rank 10 terms <= 50 ms, link 200 words <= 100 ms.

Run by hand: `python benchmarks/knowledge_speed.py` (uses the cache root; the first run builds the
graph and the dense index). Prints each measurement, its target and the ratio, and the machine.
"cold" links with an empty phrase-embedding cache (every phrase the dictionary left is encoded);
"phrases cached" repeats the same text, so only the dictionary pass and the HNSW search remain.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

HISTORY = (
    "A 34-year-old woman presents with recurrent seizures since childhood, intellectual disability and "
    "progressive hearing loss. She has short stature, a broad forehead, hypertelorism and a high palate. "
    "Examination shows hepatomegaly and splenomegaly, with mild muscle weakness in the proximal limbs. "
    "She reports chronic fatigue and joint pain in both knees. There is no fever, no chest pain and no "
    "shortness of breath. Her gait is unsteady and she has frequent falls. Ophthalmology found reduced visual "
    "acuity, nystagmus and bilateral cataracts. Echocardiography showed mild left ventricular hypertrophy. "
    "Laboratory results revealed anemia and thrombocytopenia; liver enzymes were elevated. She denies "
    "vomiting or diarrhea. Her skin shows multiple cafe-au-lait spots and she has scoliosis. Her brother had "
    "similar seizures and died young. Neurological examination found hyperreflexia, dysarthria and tremor "
    "of both hands. MRI showed cerebellar atrophy. She had delayed speech and language development as a "
    "child and poor school performance. Her feet show pes cavus and she has recurrent respiratory infections. "
    "Her mother noticed episodes of staring and lip smacking lasting a minute, followed by confusion. "
    "On examination her blood pressure was high, her heart rate was fast and her abdomen was distended. "
    "Hearing tests confirmed sensorineural loss in both ears, worse at high frequencies."
)
RANK_TERMS = ["HP:0001250", "HP:0001249", "HP:0000365", "HP:0004322", "HP:0000316", "HP:0002240",
              "HP:0001744", "HP:0001324", "HP:0001903", "HP:0002066"]  # fmt: skip


def timed(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    import medagent.specialists.knowledge.graph as graph_module
    from medagent.specialists.knowledge.load import load_linker
    from medagent.specialists.knowledge.rank import rank
    from medagent.tools.config import cache_root

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = cache_root()
    graph_module.load_graph(cache)  # build if needed

    def load() -> None:
        graph_module.load_graph(cache)  # reads graph.pkl each time (nothing is kept in memory)

    load_s = timed(load, 3)
    graph = graph_module.load_graph(cache)
    rank(graph, RANK_TERMS)  # warm (builds the per-source matrices once)
    rank_s = timed(lambda: rank(graph, RANK_TERMS, ["HP:0001945"]), 20)
    linker = load_linker(cache, dense=True)
    words = len(HISTORY.split())
    linker.link(HISTORY)  # the embedder's first call allocates its buffers

    def link_cold() -> None:
        linker._vectors.clear()  # no phrase embedding cached: every uncovered phrase is encoded
        linker.link(HISTORY)

    link_cold_s = timed(link_cold, 10)
    link_warm_s = timed(lambda: linker.link(HISTORY), 10)
    dictionary = load_linker(cache, dense=False)
    link_dict_s = timed(lambda: dictionary.link(HISTORY), 10)
    from medagent.specialists.knowledge.link import Linker

    started = time.perf_counter()
    Linker(graph)  # dictionaries and word variants, once per process (no target in the issue)
    build_s = time.perf_counter() - started
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), "
          f"{platform.processor() or platform.platform()}; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    rows = [
        ("graph load (warm, from cache)", load_s, 2.0),
        (f"rank {len(RANK_TERMS)} terms over {len(graph.disease_ids)} diseases", rank_s, 0.050),
        (f"link {words}-word history (dictionary + dense, cold)", link_cold_s, 0.100),
        (f"link {words}-word history (dense, phrases cached)", link_warm_s, 0.100),
        (f"link {words}-word history (dictionary only)", link_dict_s, 0.100),
    ]
    print(f"{'linker build (dictionaries, word variants; once per process)':<56} {1000 * build_s:8.1f} ms   no target")
    for name, seconds, target in rows:
        verdict = "met" if seconds <= target else "NOT met"
        print(f"{name:<56} {1000 * seconds:8.1f} ms   target {1000 * target:6.0f} ms   "
              f"ratio {seconds / target:5.2f}  {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
