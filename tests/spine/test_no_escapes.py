"""Hostile and careless paths through `medagent solve` and `medagent chat`: nothing outside the output folder
or the sessions root is ever deleted or written, and every refusal is one `error:` line with exit code 2.

Each test runs the real command in its own sentinel tree (files in the working folder, beside and above the
case, inside the case and its DICOM folder, a folder a link points to) and compares the whole tree, byte for
byte, before and after. The inputs are written out by hand here, not derived from the code's own rules.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"


@pytest.fixture
def world(tmp_path: Path, examples: Path) -> Path:
    """world/ holds everything a run could harm; the medagent home (sessions root) is inside it too."""
    root = tmp_path / "world"
    work = root / "work"  # the working folder every command runs in
    (work / "keep").mkdir(parents=True)
    (work / "notes.txt").write_text("the user's own notes")
    (work / "keep" / "data.bin").write_bytes(bytes(range(256)))
    (root / "above.txt").write_text("above the case and the working folder")
    case = root / "study" / "case"
    (case / "data").mkdir(parents=True)
    shutil.copytree(examples / "data" / "ct_dicom", case / "data" / "ct_dicom")
    (case / "notes.md").write_text("inside the case folder")
    (root / "study" / "beside.txt").write_text("beside the case folder")
    (case / "case.json").write_text(json.dumps({
        "id": "t1", "history": "Cough for two weeks.",
        "attachments": [{"id": "ct", "kind": "volume", "path": "data/ct_dicom", "modality": "CT"}],
    }))
    plain = root / "study" / "plain"  # a case with nothing to examine: a solve is quick
    plain.mkdir()
    (plain / "case.json").write_text(json.dumps({"id": "t2", "question": "What is the most likely diagnosis?"}))
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "precious.txt").write_text("what a link points to")
    # Folders outside the sessions root that look like sessions (a session.json inside).
    for victim in (root / "x", root / "victim"):
        victim.mkdir()
        (victim / "session.json").write_text(json.dumps({"id": "not-a-session"}))
        (victim / "precious.txt").write_text("not medagent's")
    (root / "home" / "sessions").mkdir(parents=True)
    (root / "home" / "session.json").write_text("{}")  # so that `--delete ..` would find one
    (tmp_path / "medagent.toml").write_text("[knowledge]\nenabled = false\n\n[speech]\nenabled = false\n")
    return root


@pytest.fixture
def run(world: Path, run_cli):
    """The real command, in world/work, with world/home as its cache and sessions root (knowledge and speech are
    off: nothing here needs them, and no one-time build runs)."""
    config = world.parent / "medagent.toml"
    env = {"MEDAGENT_HOME": str(world / "home"), "COLUMNS": "200"}

    def command(name: str, *args: str, input: str = ""):
        return run_cli(name, "--config", str(config), *args, cwd=world / "work", env=env, input=input)

    return command


def snapshot(root: Path) -> dict[str, tuple]:
    """Every folder, link and file (with its bytes) under root, by relative path; links are not followed."""
    tree: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                tree[key] = ("link", os.readlink(path))
            elif path.is_dir():
                tree[key] = ("folder",)
            else:
                tree[key] = ("file", path.read_bytes())
    return tree


def assert_refused(done, fragment: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert fragment in lines[0], lines[0]


def assert_untouched(world: Path, before: dict[str, tuple]) -> None:
    after = snapshot(world)
    assert not [key for key in after if ".partial-" in key or ".replaced-" in key], sorted(after)
    assert sorted(set(after) - set(before)) == [], "created"
    assert sorted(set(before) - set(after)) == [], "deleted"
    assert [key for key in before if before[key] != after[key]] == [], "changed"


def set_case_id(world: Path, case_id: str) -> None:
    path = world / "study" / "case" / "case.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "id": case_id}))


# -- solve ---------------------------------------------------------------------------------------------------

# (what to prepare in the world, the -o value (None: no -o), the fragment of the refusal)
HOSTILE_OUTPUTS = {
    "-o empty": (None, "", "names the current folder"),
    "-o .": (None, ".", "names the current folder"),
    "-o ..": (None, "..", "names the current folder or a parent"),
    "-o ./": (None, "./", "names the current folder"),
    "-o the working folder by its absolute path": (None, "{work}", "is the current folder or a parent"),
    "-o a parent of the working folder": (None, "{world}", "is the current folder or a parent"),
    "-o the case folder": (None, "{world}/study/case", "is (or holds) the input"),
    "-o the DICOM folder": (None, "{world}/study/case/data/ct_dicom", "is (or holds) the input"),
    "-o a parent of the case folder": (None, "{world}/study", "is (or holds) the input"),
    "-o the case file": (None, "{world}/study/case/case.json", "is (or holds) the input"),
    "-o a link to a folder": ("link", "{work}/link", "is a symbolic link"),
    "-o a dangling link": ("dangling", "{work}/dangling", "is a symbolic link"),
    "-o ../ through a link": ("link", "{work}/link/../escaped", "passes a symbolic link"),
    "-o a folder of the user's": (None, "{work}/keep", "was not written by medagent"),
    "-o a file of the user's": (None, "{work}/notes.txt", "exists and is not a folder"),
    "-o medagent's output with the user's file added": ("added", "{work}/earlier", "holds files medagent did not write (mine.txt)"),
    "-o a folder with a forged marker": ("forged", "{work}/forged", "has a damaged .medagent-output marker"),
}


def _prepare(world: Path, what: str | None) -> None:
    work = world / "work"
    if what == "link":
        (work / "link").symlink_to(world / "elsewhere", target_is_directory=True)
    elif what == "dangling":
        (work / "dangling").symlink_to(world / "nowhere")
    elif what == "added":
        earlier = work / "earlier"
        earlier.mkdir()
        (earlier / "result.json").write_text("{}")
        (earlier / ".medagent-output").write_text(json.dumps({"written_by": "medagent solve", "files": ["result.json"]}))
        (earlier / "mine.txt").write_text("added by the user afterwards")
    elif what == "forged":
        (work / "forged").mkdir()
        (work / "forged" / ".medagent-output").write_text("not json")
        (work / "forged" / "thesis.tex").write_text("years of work")


@pytest.mark.parametrize("name", list(HOSTILE_OUTPUTS))
def test_solve_refuses_an_output_folder_it_must_not_replace(world, run, name):
    what, out, fragment = HOSTILE_OUTPUTS[name]
    _prepare(world, what)
    out = out.format(world=world, work=world / "work")
    before = snapshot(world)
    done = run("solve", str(world / "study" / "case" / "case.json"), "-o", out, "--overwrite")
    assert_refused(done, fragment)
    assert_untouched(world, before)


@pytest.mark.parametrize("case_id", ["..", ".", "../escape", "a/b", ".hidden", "", "t1\u0000x", "..\\x"])
def test_solve_refuses_a_case_id_that_is_not_a_plain_name(world, run, case_id):
    # No -o: the output would be out/<case id>. An earlier case's results sit in out/ already.
    earlier = world / "work" / "out" / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "result.json").write_text("{}")
    set_case_id(world, case_id)
    before = snapshot(world)
    done = run("solve", str(world / "study" / "case" / "case.json"), "--overwrite")
    assert_refused(done, "id: ")
    assert_untouched(world, before)


def test_a_fresh_output_folder_is_written_with_its_marker(world, run):
    before = snapshot(world)
    out = world / "work" / "results" / "new"
    done = run("solve", str(world / "study" / "plain" / "case.json"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    marker = json.loads((out / ".medagent-output").read_text())
    assert {"result.json", "report.md", "trace.jsonl"} <= set(marker["files"])
    assert set(os.listdir(out)) == set(marker["files"]) | {".medagent-output"}
    after = snapshot(world)
    assert {k: v for k, v in after.items() if not k.startswith("work/results")} == before


def test_overwrite_replaces_what_medagent_wrote_earlier_and_nothing_else(world, run):
    case = str(world / "study" / "plain" / "case.json")
    # The default output folder, out/<case id>, in the working folder.
    assert run("solve", case).returncode == 0
    out = world / "work" / "out" / "t2"
    first = (out / "result.json").stat().st_ino
    before = snapshot(world)
    again = run("solve", case)
    assert_refused(again, "pass --overwrite to replace it")
    assert_untouched(world, before)
    done = run("solve", case, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert (out / "result.json").stat().st_ino != first  # a new result, not the old one
    after = snapshot(world)
    assert not [k for k in after if ".partial-" in k or ".replaced-" in k]
    assert {k: v for k, v in after.items() if not k.startswith("work/out/t2")} == {
        k: v for k, v in before.items() if not k.startswith("work/out/t2")}


def test_an_empty_folder_may_be_overwritten_and_a_new_folder_inside_the_case_is_fine(world, run):
    (world / "work" / "empty").mkdir()
    done = run("solve", str(world / "study" / "plain" / "case.json"), "-o", str(world / "work" / "empty"), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert (world / "work" / "empty" / "result.json").exists()
    done = run("solve", str(world / "study" / "plain" / "case.json"), "-o", str(world / "study" / "plain" / "results"))
    assert done.returncode == 0, done.stderr
    assert (world / "study" / "plain" / "case.json").exists() and (world / "study" / "plain" / "results" / "report.md").exists()


# -- chat ----------------------------------------------------------------------------------------------------

def _sessions(world: Path) -> Path:
    return world / "home" / "sessions"


HOSTILE_SESSIONS = {
    "--delete ../../x": (["--delete", "../../x"], "is not a session id"),
    "--delete an absolute path": (["--delete", "{world}/victim"], "is not a session id"),
    "--delete ..": (["--delete", ".."], "is not a session id"),
    "--delete .": (["--delete", "."], "is not a session id"),
    "--delete empty": (["--delete", ""], "is not a session id"),
    "--delete a link in the sessions root": (["--delete", "evil"], "is a symbolic link"),
    "--session ../../x": (["--session", "../../x"], "is not a session id"),
    "--session an absolute path": (["--session", "{world}/victim"], "is not a session id"),
    "--session empty": (["--session", ""], "is not a session id"),
    "--session a link in the sessions root": (["--session", "evil"], "is a symbolic link"),
    "--session a missing id": (["--session", "20200101-000000-abcdef"], "no session"),
}


@pytest.mark.parametrize("name", list(HOSTILE_SESSIONS))
def test_chat_session_ids_never_leave_the_sessions_root(world, run, name):
    args, fragment = HOSTILE_SESSIONS[name]
    (_sessions(world) / "evil").symlink_to(world / "victim", target_is_directory=True)
    before = snapshot(world)
    done = run("chat", *[a.format(world=world) for a in args], input="/evidence\n")
    assert_refused(done, fragment)
    assert_untouched(world, before)


@pytest.mark.parametrize("attachment_id", ["..", ".", "...", "../../x", "a/b", ".session", ""])
def test_chat_case_with_an_attachment_id_that_is_not_a_plain_name(world, run, attachment_id):
    case = world / "study" / "case" / "bad_ids.json"
    case.write_text(json.dumps({
        "id": "t3", "history": "Cough.",
        "attachments": [{"id": attachment_id, "kind": "image", "path": "picture.png"}],
    }))
    from PIL import Image

    Image.new("L", (8, 8)).save(world / "study" / "case" / "picture.png")  # a good file: only the id is wrong
    before = snapshot(world)
    done = run("chat", "--case", str(case), input="/evidence\n")
    assert_refused(done, "attachments.0.id")
    assert_untouched(world, before)  # no session folder was started


def test_chat_lists_deletes_and_refuses_damaged_sessions(world, run):
    root = _sessions(world)
    good = root / "20250101-000000-aaaaaa"
    good.mkdir()
    (good / "session.json").write_text(json.dumps({
        "id": good.name, "created": "2025-01-01T00:00:00+00:00", "updated": "2025-01-01T00:00:00+00:00",
        "turns": 2, "case_id": "c1", "attachments": ["a1"]}))
    damaged = {"not-json": b"{not json", "a-png": PNG, "a-list": b"[1, 2]", "latin-1": "caf\xe9".encode("latin-1"),
               "wrong-types": json.dumps({"turns": "many", "attachments": 3}).encode()}
    for name, content in damaged.items():
        (root / name).mkdir()
        (root / name / "session.json").write_bytes(content)
    (root / "a-folder" / "session.json").mkdir(parents=True)
    before = snapshot(world)
    listing = run("chat", "--list")
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip()}
    assert "2 turns" in rows[good.name] and "damaged" not in rows[good.name]
    assert {name for name, row in rows.items() if "damaged" in row} == {*damaged, "a-folder"}
    assert_untouched(world, before)
    for name in [*damaged, "a-folder"]:
        assert_refused(run("chat", "--session", name, input="/evidence\n"), "is damaged")
    assert_untouched(world, before)
    done = run("chat", "--delete", "not-json")
    assert done.returncode == 0, done.stderr
    assert not (root / "not-json").exists()
    after = snapshot(world)
    assert {k: v for k, v in before.items() if not k.startswith("home/sessions/not-json")} == after


def test_a_normal_session_is_created_listed_resumed_exported_and_deleted(world, run):
    outside = {k: v for k, v in snapshot(world).items() if not k.startswith("home/")}
    started = run("chat", input="Cough for two weeks.\n")
    assert started.returncode == 0, started.stderr
    [sid] = [p.name for p in _sessions(world).iterdir()]
    assert f"session {sid}" in started.stdout
    assert sid in run("chat", "--list").stdout
    keep = world / "work" / "keep"
    turns = f"/evidence\n/export .\n/export {keep}\n/export {world / 'work' / 'exported'}\n/export {world / 'work' / 'exported'}\n"
    resumed = run("chat", "--session", sid, input=turns)
    assert resumed.returncode == 0, resumed.stderr
    assert "names the current folder" in resumed.stdout and "was not written by medagent" in resumed.stdout
    assert resumed.stdout.count("Exported to") == 2  # the second export replaced the first
    exported = world / "work" / "exported"
    assert set(os.listdir(exported)) >= {"report.md", "result.json", ".medagent-output"}
    now = {k: v for k, v in snapshot(world).items() if not k.startswith(("home/", "work/exported"))}
    assert now == outside
    deleted = run("chat", "--delete", sid)
    assert deleted.returncode == 0, deleted.stderr
    assert not (_sessions(world) / sid).exists()
    assert sid not in run("chat", "--list").stdout
