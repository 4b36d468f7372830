"""`python -m medagent.evals.radfm --backend radfm|medvint` and the `vqa-rad` suite, with tiny random-weight models on
the committed VQA-RAD sample (tests/data/radfm/vqa_rad: 3 val questions, 13 train)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medagent.evals.radfm import format_report, main, score_run

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "radfm" / "vqa_rad"


def _sentences() -> list[str]:
    rows = [json.loads(line) for line in (SAMPLE / "dev.jsonl").read_text(encoding="utf-8").splitlines()]
    return [f"{row['question']} {row['answer']}" for row in rows]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny RadFM and MedVInT-TD folders and a config naming both (fp32 on the CPU)."""
    from medagent.specialists.medvint.tiny import build_tiny as medvint_tiny
    from medagent.specialists.radfm.tiny import build_tiny as radfm_tiny

    root = tmp_path_factory.mktemp("vqa_backends")
    radfm_tiny(root / "radfm", _sentences())
    medvint_tiny(root / "medvint", _sentences(), seed=0)
    return root


def _config(root: Path, name: str, body: str) -> Path:
    path = root / name
    path.write_text(body, encoding="utf-8")
    return path


def _both(root: Path, extra: str = "") -> Path:
    return _config(root, "both.toml", (
        f'[radfm]\npath = "{root / "radfm"}"\ndtype = "fp32"\ndevice = "cpu"\n\n'
        f'[medvint]\npath = "{root / "medvint"}"\ndtype = "fp32"\ndevice = "cpu"\nmax_new_tokens = 8\n' + extra
    ))  # fmt: skip


def test_each_backend_prints_its_figures_beside_the_baselines(tiny_models: Path, capsys, tmp_path: Path) -> None:
    config = _both(tiny_models)
    common = ["--config", str(config), "--data-dir", str(SAMPLE)]
    assert main(["--backend", "radfm", *common]) == 0
    radfm = capsys.readouterr().out
    assert main([*common]) == 0  # the default is still RadFM
    assert capsys.readouterr().out == radfm
    out = tmp_path / "medvint.json"
    assert main(["--backend", "medvint", *common, "-o", str(out)]) == 0
    medvint = capsys.readouterr().out
    assert main(["--backend", "medvint", "--closed-as", "choices", *common, "--limit", "2", "-o", str(tmp_path / "c.json")]) == 0
    choices = capsys.readouterr().out
    print(radfm, medvint, choices, sep="\n")

    assert f"with RadFM (weights {tiny_models / 'radfm' / 'pytorch_model.bin'})" in radfm
    assert f"with MedVInT-TD (weights {tiny_models / 'medvint' / 'pytorch_model.bin'})" in medvint
    for text, row in ((radfm, "radfm"), (medvint, "medvint"), (choices, "medvint")):
        lines = [line for line in text.splitlines() if not line.startswith("report written")]
        assert [line.split()[0] for line in lines[-3:]] == [row, "majority", "always_yes"]
        assert all("closed accuracy" in line and "open token recall" in line for line in lines[-3:])
    assert "VQA-RAD (val, 3 questions)" in radfm and "(n=2)" in radfm and "(n=1)" in radfm
    assert "asked: open prompt" in medvint and "2 closed questions with options asked as multiple choice" in choices

    report = json.loads(out.read_text())
    assert report["backend"] == "medvint" and set(report["predictions"]) == {"vqarad_776", "vqarad_787", "vqarad_794"}
    # The baselines are the same whichever model answers: computed on the same items.
    assert report["baselines"]["majority"]["answers"]["closed"] == "yes"
    # Asked as choices, a yes/no question's answer is one of its two options.
    picked = json.loads((tmp_path / "c.json").read_text())["predictions"]
    assert set(picked.values()) <= {"yes", "no"}


def test_missing_weights_give_one_line_and_exit_code_2(tiny_models: Path, capsys) -> None:
    empty = _config(tiny_models, "empty.toml", "")
    assert main(["--backend", "medvint", "--config", str(empty), "--data-dir", str(SAMPLE)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[medvint] path" in err[0], err
    gone = _config(tiny_models, "gone.toml", f'[radfm]\npath = "{tiny_models / "nowhere"}"\ndevice = "cpu"\n')
    assert main(["--config", str(gone), "--data-dir", str(SAMPLE)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere is not a folder" in err[0], err


def test_suite_runs_through_imaging_vqa_with_the_configured_backend(tiny_models: Path, tmp_path: Path) -> None:
    from medagent.evals.runner import run_suite
    from medagent.evals.suite import load_suite
    from medagent.tools.config import load_settings

    suite = load_suite("vqa-rad", SAMPLE)
    assert "RadFM or MedVInT-TD" in suite.description and "needs [radfm] path" not in suite.description
    for backend, model in (("medvint", "MedVInT-TD"), ("radfm", "RadFM")):
        settings = load_settings(_both(tiny_models, f'\n[vqa]\nbackend = "{backend}"\n\n[knowledge]\nenabled = false\n'))
        run = tmp_path / backend
        run_suite("vqa-rad", out=run, data_dir=SAMPLE, settings=settings, quiet=True)
        scored = score_run(run, SAMPLE)
        assert scored["answered_by"] == {model: 3} and scored["items"] == 3
        text = format_report(scored)
        print(text)
        assert f"[vqa] backend = {backend}" in text and f"answered by: {model} 3" in text and "always_yes" in text
        result = json.loads((run / "results" / "vqarad_776.json").read_text())
        assert model in json.dumps(result)
