"""`medagent index images DIR` and `imaging.similar`: a re-encoded copy finds its original; changes rebuild and say so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from medagent.tools.config import PMCCLIPSettings, Settings
from medagent.tools.contracts import Case, ToolCall
from medagent.tools.errors import ToolError
from medagent.tools.pmcclip import TOOLS
from medagent.tools.registry import Registry, ToolContext

SIMILAR = TOOLS[1]
IMAGES = Path(__file__).resolve().parents[2] / "tests/data/pmcclip/images"


def _copy_resized_jpeg(source: Path, target: Path) -> None:
    """What a user would have: the same picture exported again, 80% of the size, as JPEG."""
    image = Image.open(source).convert("RGB")
    image.resize((int(image.width * 0.8), int(image.height * 0.8)), Image.BICUBIC).save(target, "JPEG", quality=85)


def _similar(settings: Settings, case: Case, folder: Path, attachment: str, registry: Registry | None = None):
    registry = registry or Registry(settings, TOOLS)
    args, reason = registry.validate(ToolCall(call_id="s1", tool="imaging.similar", arguments={"attachment": attachment}), case)
    assert reason is None, reason
    ctx = ToolContext(case=case, case_dir=folder, artifacts_dir=folder / "artifacts", settings=settings, pool=registry.pool)
    return [SIMILAR.checked(d) for d in SIMILAR.run(args, ctx)]


@pytest.fixture()
def library(tmp_path: Path) -> Path:
    folder = tmp_path / "library"
    shutil.copytree(IMAGES, folder)
    return folder


def test_a_resized_reencoded_copy_retrieves_its_original_first(tmp_path, library, calibrated_dir):
    settings = Settings(pmcclip=PMCCLIPSettings(path=calibrated_dir, image_folder=library), cache_dir=tmp_path / "cache")
    originals = sorted(p.name for p in IMAGES.glob("*.png"))
    queries = tmp_path / "case"
    queries.mkdir()
    for name in originals:
        _copy_resized_jpeg(IMAGES / name, queries / f"{Path(name).stem}.jpg")
    shutil.copy(IMAGES / "ct_coronal.png", queries / "exact.png")
    case = Case.model_validate({"id": "sim", "attachments": [
        *({"id": Path(n).stem, "kind": "image", "path": f"{Path(n).stem}.jpg"} for n in originals),
        {"id": "exact", "kind": "image", "path": "exact.png"},
    ]})
    registry = Registry(settings, TOOLS)
    assert {t.name for t in registry.available()} == {"imaging.classify", "imaging.similar"}
    captions = {json.loads(line)["file"]: json.loads(line) for line in (IMAGES / "captions.jsonl").read_text().splitlines()}
    for number, name in enumerate(originals):
        [item] = _similar(settings, case, queries, Path(name).stem, registry)
        first = item.payload["hits"][0]
        assert first["file"] == name, (name, item.payload["hits"][:2])
        assert first["caption"] == captions[name]["caption"] and first["label"] == captions[name]["label"]
        assert not first["same_content"] and len(item.payload["hits"]) == 5
        assert item.payload["index_note"].startswith("built: no index" if number == 0 else "reused: 6 images unchanged")
        assert name in item.summary and captions[name]["caption"] in item.summary
    [exact] = _similar(settings, case, queries, "exact", registry)
    assert exact.payload["hits"][0]["file"] == "ct_coronal.png" and exact.payload["hits"][0]["same_content"]
    assert sorted(p.name for p in library.iterdir()) == sorted(p.name for p in IMAGES.iterdir())  # nothing written there
    assert list((tmp_path / "cache" / "pmcclip" / "images-v1").glob("*/manifest.json"))


def test_changed_added_removed_files_rebuild_and_say_so(tmp_path, library, pmcclip_dir):
    settings = Settings(pmcclip=PMCCLIPSettings(path=pmcclip_dir, image_folder=library), cache_dir=tmp_path / "cache")
    shutil.copy(IMAGES / "mr_axial_05.png", tmp_path / "q.png")
    case = Case.model_validate({"id": "q", "attachments": [{"id": "q", "kind": "image", "path": "q.png"}]})
    registry = Registry(settings, TOOLS)
    assert _similar(settings, case, tmp_path, "q", registry)[0].payload["index_note"].startswith("built")
    Image.open(IMAGES / "mr_axial_14.png").transpose(Image.FLIP_LEFT_RIGHT).save(library / "ct_axial_04.png")
    (library / "ct_coronal.png").unlink()
    shutil.copy(IMAGES / "ct_coronal.png", library / "new_one.png")
    [item] = _similar(settings, case, tmp_path, "q", registry)
    note = item.payload["index_note"]
    assert note.startswith("rebuilt: 1 added (new_one.png); 1 changed (ct_axial_04.png); 1 removed (ct_coronal.png)")
    assert "1 image encoded, 5 reused" in note  # new_one.png has ct_coronal.png's bytes, kept by content hash
    assert item.payload["indexed"] == 6 and f"Index {note}." in item.summary
    rows = (library / "captions.jsonl").read_text().splitlines()
    (library / "captions.jsonl").write_text("\n".join([json.dumps({"file": "new_one.png", "caption": "a new caption"}), *rows]))
    note = _similar(settings, case, tmp_path, "q", registry)[0].payload["index_note"]
    assert note.startswith("rebuilt: 1 with new captions (new_one.png)") and "0 images encoded" in note


def test_bad_folders_and_caption_files_are_one_clear_line(tmp_path, library, pmcclip_dir):
    settings = Settings(pmcclip=PMCCLIPSettings(path=pmcclip_dir, image_folder=tmp_path / "nowhere"))
    assert SIMILAR.check(settings) == f"[pmcclip] image_folder {tmp_path / 'nowhere'} is not a folder"
    assert "medagent index images DIR" in SIMILAR.check(Settings(pmcclip=PMCCLIPSettings(path=pmcclip_dir)))
    (library / "captions.jsonl").write_text('{"file": "ct_coronal.png", "caption": "ok"}\nnot json\n')
    settings = Settings(pmcclip=PMCCLIPSettings(path=pmcclip_dir, image_folder=library), cache_dir=tmp_path / "c")
    shutil.copy(IMAGES / "ct_coronal.png", tmp_path / "q.png")
    case = Case.model_validate({"id": "q", "attachments": [{"id": "q", "kind": "image", "path": "q.png"}]})
    with pytest.raises(ToolError, match=r"captions.jsonl line 2: not JSON"):
        _similar(settings, case, tmp_path, "q")


def test_cli_index_images(tmp_path, library, pmcclip_dir):
    """The command in process (typer's runner: one interpreter start less than a subprocess); main() turns the
    MedagentError into `error: <line>` and exit code 2, as for every command."""
    from typer.testing import CliRunner

    from medagent.cli.main import app
    from medagent.tools.errors import MedagentError

    cache = tmp_path / "cache"
    config = tmp_path / "medagent.toml"
    config.write_text(f'cache_dir = "{cache}"\n[pmcclip]\npath = "{pmcclip_dir}"\n')
    done = CliRunner().invoke(app, ["index", "images", str(library), "--config", str(config)])
    assert done.exit_code == 0, done.output
    assert f"6 images of {library} indexed in {cache}/pmcclip/images-v1/" in done.output
    assert "built: no index of this folder yet; 6 images encoded" in done.output
    assert f"set it to {library.resolve()}" in done.output
    again = CliRunner().invoke(app, ["index", "images", str(library), "--config", str(config)])
    assert "reused: 6 images unchanged" in again.output
    bad = CliRunner().invoke(app, ["index", "images", str(tmp_path / "none"), "--config", str(config)])
    assert isinstance(bad.exception, MedagentError) and bad.exception.exit_code == 2
    assert str(bad.exception) == f"{tmp_path / 'none'}: no such folder of images"
    (tmp_path / "plain.toml").write_text(f'cache_dir = "{cache}"\n')
    unconfigured = CliRunner().invoke(app, ["index", "images", str(library), "--config", str(tmp_path / "plain.toml")])
    assert str(unconfigured.exception).startswith("imaging.similar needs PMC-CLIP: no PMC-CLIP checkpoint configured.")
