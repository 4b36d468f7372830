"""The RadDiag recipe's epoch draws, which a resumed run repeats to train on what the interrupted one would have.

(tests/training/test_resume.py kills a real run and checks the resumed loss curve.)"""

from __future__ import annotations

import random
from pathlib import Path

from medagent.training.raddiag.recipe import draw_epoch

from .conftest import tiny_config


def _cases(count: int) -> list[dict]:
    """Case n has n % 3 + 1 scans and the column n (which tells the cases apart)."""
    return [{"scans": [(Path(f"case{n}_{k}.nii.gz"), "CT") for k in range(n % 3 + 1)], "columns": [n]}
            for n in range(count)]  # fmt: skip


def test_each_epoch_is_a_new_order_and_choice_of_scans_and_the_same_seed_draws_them_again() -> None:
    cases, config = _cases(9), tiny_config("late")
    rng, again = random.Random(3), random.Random(3)
    epochs = [draw_epoch(cases, 4, config, rng) for _ in range(4)]
    assert [len(batches) for batches in epochs] == [3, 3, 3, 3]  # ceil(9 / 4) micro-batches, the last one short
    assert epochs[0] != epochs[1]
    for batches in epochs:  # every case once an epoch, with one of its scans (late fusion)
        items = [item for batch in batches for item in batch]
        assert sorted(columns[0] for _, columns in items) == list(range(9))
        assert all(len(scans) == 1 and scans[0] in cases[columns[0]]["scans"] for scans, columns in items)
    assert [draw_epoch(cases, 4, config, again) for _ in range(4)] == epochs  # what a resumed run replays


def test_early_fusion_takes_each_case_first_scans() -> None:
    cases, config = _cases(6), tiny_config("early", max_scans=2)
    for scans, columns in draw_epoch(cases, 6, config, random.Random(0))[0]:
        assert scans == cases[columns[0]]["scans"][:2]
