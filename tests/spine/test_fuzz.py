"""Fuzz: bad inputs of every kind, built at test time, through the real `medagent solve` and `medagent chat`.

Every input runs as a subprocess in a sentinel tree of its own (the user's files in the working folder,
files beside and inside the case, a sessions root). For each one: the exit code is 0 or 2; no traceback;
an exit 2 ends in one `error:` line; no output folder unless it exited 0, and no staging folder left; the
tree outside the output folder and the sessions root is unchanged byte for byte; no raw escape sequence
reaches the terminal or report.md; and it finished within FINISH_S. The inputs are written out by hand or
generated from byte-level recipes here, not derived from the code's own checks. A Hypothesis property
drives the case schema in-process (fast) with random JSON values.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest


def snapshot(root: Path) -> dict[str, tuple]:
    """test_no_escapes.snapshot, but a FIFO or other special file is recorded by its type, never opened (reading
    a FIFO would block the test itself for ever)."""
    import stat

    tree: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            key = str(path.relative_to(root))
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                tree[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                tree[key] = ("folder",)
            elif stat.S_ISREG(mode):
                tree[key] = ("file", path.read_bytes())
            else:
                tree[key] = ("special", stat.S_IFMT(mode))
    return tree

FINISH_S = 45  # each run, refusal or clean result, must end within this (a hang is a failure, not a wait)
ESC_PROBE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\u202eevil\r\x08"  # title, clear screen, colour, bidi, CR, BS
CONFIG = "[knowledge]\nenabled = false\n\n[speech]\nenabled = false\n"


@dataclass
class Bad:
    """One input: `build(case_dir)` writes what it needs and returns the command's arguments."""

    name: str
    build: Callable[[Path], list[str]]
    stdin: bytes = b""
    expect: tuple[int, ...] = (0, 2)
    must_say: str | None = None  # a fragment the refusal (or the chat's output) must contain


# -- byte-level recipes -------------------------------------------------------------------------------------

def case_json(**fields) -> dict:
    return {"id": "f1", "history": "Cough for two weeks.", **fields}


def write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit RGB) and holds one tiny compressed row: a decompression bomb."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def tiff_header(width: int, height: int) -> bytes:
    """A little-endian TIFF whose IFD claims width x height, 8-bit grey, with a few bytes of strip."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 8 + 4), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 16


def nifti1(dims: tuple[int, ...], datatype: int = 4, bitpix: int = 16, data: bytes = b"", rank: int | None = None) -> bytes:
    """A NIfTI-1 single file: 348-byte header, 4 bytes of extension flag, then `data`."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    dim = [rank if rank is not None else len(dims), *dims] + [1] * (7 - len(dims))
    struct.pack_into("<8h", header, 40, *dim)
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<f", header, 112, 1.0)  # scl_slope
    struct.pack_into("<h", header, 252, 0)
    struct.pack_into("<h", header, 254, 1)  # sform_code
    for row, values in enumerate(((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0))):
        struct.pack_into("<4f", header, 280 + 16 * row, *values)
    header[344:348] = b"n+1\x00"
    return bytes(header) + b"\0\0\0\0" + data


def nifti2(dims: tuple[int, ...], datatype: int = 4) -> bytes:
    header = bytearray(540)
    struct.pack_into("<i", header, 0, 540)
    header[4:12] = b"n+2\x00\r\n\x1a\n"
    struct.pack_into("<hh", header, 12, datatype, 16)
    struct.pack_into("<8q", header, 16, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<q", header, 168, 544)
    return bytes(header) + b"\0\0\0\0" + b"\0" * 64


def wav(rate: int, seconds: float = 1.0, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.sin(np.arange(int(rate * seconds)) / 5) * 3000).astype("<i2").tobytes() * channels)
    return buffer.getvalue()


def wav_claiming(rate: int, frames: int) -> bytes:
    """A WAV header with an arbitrary sample rate (the wave module refuses silly ones) and `frames` of silence."""
    data = b"\0\0" * frames
    fmt = struct.pack("<HHIIHH", 1, 1, rate, (rate * 2) % 2**32, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data


def nested(depth: int) -> str:
    return '{"id": "f1", "findings": ' + "[" * depth + "]" * depth + "}"


# -- the inputs ---------------------------------------------------------------------------------------------

def solve_case(content: bytes | str | dict, *extra: str, name: str = "case.json") -> Callable[[Path], list[str]]:
    def build(case: Path) -> list[str]:
        data = json.dumps(content) if isinstance(content, dict) else content
        return ["solve", str(write(case / name, data)), "-o", str(case.parent.parent / "work" / "result"), *extra]

    return build


def with_attachment(kind: str, filename: str, content: bytes | Callable[[Path], None], *extra: str,
                    **fields) -> Callable[[Path], list[str]]:
    def build(case: Path) -> list[str]:
        target = case / filename
        if callable(content):
            content(target)
        else:
            write(target, content)
        attachment = {"id": "a1", "kind": kind, "path": filename, **fields}
        return solve_case(case_json(attachments=[attachment]), *extra)(case)

    return build


def special_attachment(kind: str, path: str) -> Callable[[Path], list[str]]:
    """An attachment that names a system path (with --allow-outside-paths, so only the file check stops it)."""
    def build(case: Path) -> list[str]:
        return solve_case(case_json(attachments=[{"id": "a1", "kind": kind, "path": path}]), "--allow-outside-paths")(case)

    return build


def fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def link_loop(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(path.name + ".b", path)
    os.symlink(path.name, path.parent / (path.name + ".b"))


def fifo_case(case: Path) -> list[str]:
    fifo(case / "case.json")
    return ["solve", str(case / "case.json"), "-o", str(case.parent.parent / "work" / "result")]


def loop_case(case: Path) -> list[str]:
    link_loop(case / "case.json")
    return ["solve", str(case / "case.json"), "-o", str(case.parent.parent / "work" / "result")]


def dicom_with_tags(**tags: str) -> Callable[[Path], list[str]]:
    """The example DICOM series with free-text tags replaced (escape sequences, a patient's name)."""
    def build(case: Path) -> list[str]:
        import warnings

        import pydicom

        folder = case / "ct"
        shutil.copytree(Path(__file__).resolve().parents[2] / "examples" / "data" / "ct_dicom", folder)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns that the values break their VR: that is the point
            for file in folder.iterdir():
                ds = pydicom.dcmread(file)
                for tag, value in tags.items():
                    setattr(ds, tag, value)
                ds.save_as(file)
        return solve_case(case_json(attachments=[{"id": "ct", "kind": "volume", "path": "ct", "modality": "CT"}]))(case)

    return build


def output_under(where: str) -> Callable[[Path], list[str]]:
    def build(case: Path) -> list[str]:
        work = case.parent.parent / "work"
        target = {"a file": str(work / "notes.txt" / "out"), "/proc": "/proc/self/medagent-out",
                  "a long name": str(work / ("x" * 300)), "a NUL": str(work / "o\x00ut")}[where]
        if "\x00" in target:
            target = str(work / "out")  # argv cannot carry a NUL: the kernel cuts it; the case holds it instead
        return ["solve", str(write(case / "case.json", json.dumps(case_json()))), "-o", target]

    return build


def solve_inputs() -> list[Bad]:
    rng = random.Random(18)
    good = json.dumps(case_json())
    inputs = [
        # encodings
        Bad("latin-1 case file", solve_case(json.dumps(case_json(history="café au lait spots"), ensure_ascii=False).encode("latin-1")), must_say="not UTF-8"),
        Bad("UTF-16 with BOM", solve_case(good.encode("utf-16")), must_say="UTF-16"),
        Bad("UTF-32 with BOM", solve_case(good.encode("utf-32")), must_say="UTF-32"),
        Bad("UTF-8 with BOM (usable)", solve_case(b"\xef\xbb\xbf" + good.encode()), expect=(0,)),
        Bad("gzip of a case", solve_case(gzip.compress(good.encode())), must_say="gzip"),
        Bad("random bytes", solve_case(bytes(rng.randrange(256) for _ in range(4096)))),
        Bad("invalid UTF-8 in a string", solve_case(good.replace("Cough", "Co\\u0075gh").encode().replace(b"two", b"tw\xff"))),
        Bad("overlong UTF-8", solve_case(good.encode().replace(b"Cough", b"Co\xc0\xafgh")), must_say="not UTF-8"),
        Bad("UTF-8-encoded surrogate", solve_case(good.encode().replace(b"Cough", b"\xed\xa0\x80Cough")), must_say="not UTF-8"),
        Bad("empty case file", solve_case(b""), must_say="not valid JSON"),
        Bad("NUL bytes in the file", solve_case(good.encode() + b"\0\0\0")),
        # JSON structure
        Bad("nested 1,000 deep", solve_case(nested(1_000)), must_say="max_json_depth"),
        Bad("nested 200,000 deep", solve_case(nested(200_000)), must_say="max_json_depth"),
        Bad("duplicate attachments key", solve_case('{"id": "f1", "attachments": [], "attachments": []}'), must_say="appears twice"),
        Bad("duplicate id key", solve_case('{"id": "f1", "id": "f2"}'), must_say="appears twice"),
        Bad("NaN lab value", solve_case('{"id": "f1", "findings": [{"name": "sodium", "value": NaN}]}'), must_say="NaN"),
        Bad("Infinity lab value", solve_case('{"id": "f1", "findings": [{"name": "sodium", "value": Infinity}]}'), must_say="Infinity"),
        Bad("-Infinity age", solve_case('{"id": "f1", "patient": {"age_years": -Infinity}}'), must_say="Infinity"),
        Bad("1e999 lab value", solve_case('{"id": "f1", "findings": [{"name": "sodium", "value": 1e999}]}'), must_say="out of range"),
        Bad("5,000-digit age", solve_case('{"id": "f1", "patient": {"age_years": ' + "9" * 5000 + "}}"), must_say="max_number_chars"),
        Bad("age true", solve_case(case_json(patient={"age_years": True})), must_say="true/false"),
        Bad("lab value false", solve_case(case_json(findings=[{"name": "sodium", "value": False}])), must_say="true/false"),
        Bad("lone surrogate in the history", solve_case('{"id": "f1", "history": "pain \\ud800 here"}'), must_say="lone surrogate"),
        Bad("NUL in the history", solve_case('{"id": "f1", "history": "pain \\u0000 here"}'), must_say="NUL"),
        Bad("NUL in an attachment path", solve_case(case_json(attachments=[{"id": "a1", "kind": "image", "path": "x\u0000.png"}])), must_say="NUL"),
        Bad("300,000-character history", solve_case(case_json(history="cough " * 50_000)), must_say="max_text_chars"),
        Bad("9 MB case file", solve_case(case_json(history="x" * 9_000_000)), must_say="max_case_mb"),
        Bad("a list, not an object", solve_case("[1, 2, 3]"), must_say="expected a JSON object"),
        Bad("truncated JSON", solve_case(good[: len(good) // 2]), must_say="not valid JSON"),
        Bad("escape sequences in the history (usable)", solve_case(case_json(history=f"Cough {ESC_PROBE} for weeks.",
                                                                            question=f"Why {ESC_PROBE}?")), expect=(0,)),
        Bad("rich markup in the history (usable)", solve_case(case_json(history="[/] [bold]cough[/bold] [link=x]y")), expect=(0,)),
        # paths and file types
        Bad("case file is a FIFO", fifo_case, must_say="FIFO"),
        Bad("case file is /dev/zero", lambda case: ["solve", "/dev/zero"], must_say="/dev"),
        Bad("case file is /proc/self/mem", lambda case: ["solve", "/proc/self/mem"], must_say="/proc"),
        Bad("case file is a folder", lambda case: ["solve", str(case)], must_say="is a folder"),
        Bad("case file is a link loop", loop_case, must_say="cannot be read"),
        Bad("case file name over 255 characters", lambda case: ["solve", str(case / ("c" * 300 + ".json"))]),
        Bad("5,000-character case path", lambda case: ["solve", "/".join(["d" * 200] * 25) + "/case.json"]),
        Bad("attachment is a FIFO", with_attachment("image", "pipe.png", fifo), must_say="FIFO"),
        Bad("attachment is a link loop", with_attachment("image", "loop.png", link_loop), must_say="cannot be read"),
        Bad("attachment /dev/zero", special_attachment("document", "/dev/zero"), must_say="/dev"),
        Bad("attachment /dev/null", special_attachment("document", "/dev/null"), must_say="/dev"),
        Bad("attachment /proc/self/mem", special_attachment("document", "/proc/self/mem"), must_say="/proc"),
        Bad("attachment path over 255 characters", solve_case(case_json(attachments=[{"id": "a1", "kind": "image", "path": "p" * 300 + ".png"}]))),
        Bad("attachment 5,000-character path", solve_case(case_json(attachments=[{"id": "a1", "kind": "image", "path": "/".join(["d" * 200] * 25)}]))),
        Bad("a FIFO inside a DICOM folder (skipped)", with_attachment("volume", "dcm/pipe", fifo)),
        # images
        Bad("PNG bomb 100000x100000", with_attachment("image", "bomb.png", png_header(100_000, 100_000)), must_say="max_image_pixels"),
        Bad("PNG just over the limit", with_attachment("image", "big.png", png_header(20_000, 10_001)), must_say="max_image_pixels"),
        Bad("TIFF bomb", with_attachment("image", "bomb.tif", tiff_header(60_000, 60_000)), must_say="max_image_pixels"),
        Bad("truncated PNG", with_attachment("image", "cut.png", png_header(64, 64)[:40])),
        Bad("PNG magic then junk", with_attachment("image", "junk.png", b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(500)))),
        Bad("JPEG magic only", with_attachment("image", "x.jpg", b"\xff\xd8\xff")),
        # volumes
        Bad("NIfTI claiming 32767³", with_attachment("volume", "huge.nii", nifti1((32767, 32767, 32767))), must_say="max_volume_mb"),
        Bad("NIfTI-2 claiming 100000³", with_attachment("volume", "huge2.nii", nifti2((100_000, 100_000, 100_000))), must_say="max_volume_mb"),
        Bad("gzip NIfTI bomb header", with_attachment("volume", "bomb.nii.gz", gzip.compress(nifti1((2048, 2048, 2048))) + gzip.compress(b"\0" * 1_000_000)), must_say="max_volume_mb"),
        Bad("NIfTI negative dimension", with_attachment("volume", "neg.nii", nifti1((64, -5, 64))), must_say="below 1"),
        Bad("NIfTI unknown datatype", with_attachment("volume", "dt.nii", nifti1((4, 4, 4), datatype=999)), must_say="unknown datatype"),
        Bad("NIfTI 0 dimensions", with_attachment("volume", "zero.nii", nifti1((4, 4, 4), rank=0)), must_say="dimensions"),
        Bad("NIfTI truncated data", with_attachment("volume", "cut.nii", nifti1((64, 64, 64), data=b"\0" * 100)), must_say="truncated"),
        Bad("NIfTI all NaN", with_attachment("volume", "nan.nii", nifti1((8, 8, 8), datatype=16, bitpix=32, data=np.full(512, np.nan, "<f4").tobytes()), modality="CT"), must_say="no finite voxel"),
        Bad("NIfTI header only, gzip cut", with_attachment("volume", "cut.nii.gz", gzip.compress(nifti1((8, 8, 8)))[:60])),
        # audio
        Bad("WAV claiming 1 Hz", with_attachment("audio", "slow.wav", wav_claiming(1, 4000)), must_say="sample rate"),
        Bad("WAV claiming 4 GHz", with_attachment("audio", "fast.wav", wav_claiming(4_000_000_000, 100)), must_say="audio"),
        Bad("truncated WAV (usable)", with_attachment("audio", "cut.wav", wav(16_000, 2.0)[:20_000]), expect=(0,)),
        Bad("WAV header only", with_attachment("audio", "empty.wav", wav(16_000, 1.0)[:44])),
        Bad("RIFF WAVE then junk", with_attachment("audio", "junk.wav", b"RIFF\xff\xff\xff\xffWAVE" + bytes(rng.randrange(256) for _ in range(300)))),
        # DICOM free text
        Bad("DICOM tags with escapes and a name (usable)", dicom_with_tags(BodyPartExamined="CHEST\x1b]0;pwned\x07\x1b[2J\r\x08",
                                                                        ManufacturerModelName="DOE^JOHN 19800101",
                                                                        ConvolutionKernel="\x1b[31mB30f"), expect=(0,)),
        # outputs
        Bad("-o under a file", output_under("a file"), must_say="cannot create"),
        Bad("-o under /proc", output_under("/proc")),
        Bad("-o name over 255 characters", output_under("a long name")),
    ]
    seed = json.dumps(case_json(patient={"age_years": 40, "sex": "female"}, findings=[{"name": "CRP", "value": 12, "unit": "mg/L"}])).encode()
    for index in range(8):  # random byte mutations of a good case (seeded: the same ones every run)
        data = bytearray(seed)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        inputs.append(Bad(f"mutated case #{index}", solve_case(bytes(data))))
    return inputs


def chat_inputs() -> list[Bad]:
    def script(content: bytes | Callable[[Path], None]) -> Callable[[Path], list[str]]:
        def build(case: Path) -> list[str]:
            path = case / "turns.txt"
            content(path) if callable(content) else write(path, content)
            return ["chat", "--script", str(path)]

        return build

    def stdin_turns(case: Path) -> list[str]:  # the turns come on standard input (Bad.stdin)
        return ["chat"]

    def attach(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
        def build(case: Path) -> list[str]:
            return ["chat", "--script", str(write(case / "turns.txt", f"/attach {make(case)}\n/evidence\n"))]

        return build

    def bomb(case: Path) -> Path:
        return write(case / "bomb.png", png_header(100_000, 100_000))

    def pipe(case: Path) -> Path:
        fifo(case / "pipe.png")
        return case / "pipe.png"

    return [
        Bad("chat script in Latin-1", script("Schmerz im Bauch, café\n".encode("latin-1")), must_say="not UTF-8"),
        Bad("chat script UTF-16", script("cough\n".encode("utf-16")), must_say="UTF-16"),
        Bad("chat script /dev/zero", lambda case: ["chat", "--script", "/dev/zero"], must_say="/dev"),
        Bad("chat script is a FIFO", script(fifo), must_say="FIFO"),
        Bad("chat script is a folder", lambda case: ["chat", "--script", str(case)], must_say="folder"),
        Bad("chat stdin invalid UTF-8", stdin_turns, stdin=b"cough \xff\xfe for weeks\n", must_say="not UTF-8"),
        Bad("chat turn of 6 MB", stdin_turns, stdin=b"cough " * 1_000_000 + b"\n", must_say="max_text_chars"),
        Bad("chat turn with markup and escapes", stdin_turns, stdin=f"[/] [bold]x {ESC_PROBE} [/bold]\n/evidence\n".encode()),
        Bad("chat /attach a FIFO", attach(pipe), must_say="FIFO"),
        Bad("chat /attach a PNG bomb", attach(bomb), must_say="max_image_pixels"),
        Bad("chat /attach /proc/self/mem", attach(lambda case: Path("/proc/self/mem")), must_say="/proc"),
        Bad("chat /attach /dev/zero", attach(lambda case: Path("/dev/zero")), must_say="/dev"),
        Bad("chat /attach a link loop", attach(lambda case: (link_loop(case / "l.png"), case / "l.png")[1]), must_say="cannot be read"),
        Bad("chat /export into a file", stdin_turns, stdin=b"cough\n/export notes.txt\n", must_say="not a folder"),
        Bad("chat unbalanced quotes", stdin_turns, stdin=b"/attach \"x\n", must_say="quotation"),
        Bad("chat --case with NaN", lambda case: ["chat", "--case", str(write(case / "c.json", '{"id": "c", "findings": [{"name": "x", "value": NaN}]}'))], must_say="NaN"),
        Bad("chat --case a FIFO", lambda case: (fifo(case / "c.json"), ["chat", "--case", str(case / "c.json")])[1], must_say="FIFO"),
    ]


# -- the runner ---------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    bad: Bad
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    problems: list[str] = field(default_factory=list)


def make_world(root: Path) -> Path:
    """A sentinel tree: what the user owns around the case; returns the case folder."""
    work = root / "work"
    (work / "keep").mkdir(parents=True)
    (work / "notes.txt").write_text("the user's own notes")
    (work / "keep" / "data.bin").write_bytes(bytes(range(256)))
    (root / "above.txt").write_text("above the case")
    case = root / "study" / "case"
    case.mkdir(parents=True)
    (case / "notes.md").write_text("inside the case folder")
    (root / "study" / "beside.txt").write_text("beside the case folder")
    (root / "home" / "sessions").mkdir(parents=True)
    return case


def run_one(bad: Bad, root: Path, config: Path) -> Outcome:
    case = make_world(root)
    args = bad.build(case)
    before = snapshot(root)
    exe = Path(sys.executable).parent / "medagent"
    env = {**os.environ, "MEDAGENT_HOME": str(root / "home"), "COLUMNS": "200", "TERM": "xterm"}
    env.pop("MEDAGENT_DEBUG", None)
    started = time.monotonic()
    try:
        done = subprocess.run([str(exe), args[0], "--config", str(config), *args[1:]], input=bad.stdin, capture_output=True,
                              cwd=root / "work", env=env, timeout=FINISH_S)
        outcome = Outcome(bad, done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"),
                          time.monotonic() - started)
    except subprocess.TimeoutExpired as exc:
        return Outcome(bad, None, (exc.stdout or b"").decode("utf-8", "replace"), (exc.stderr or b"").decode("utf-8", "replace"),
                       time.monotonic() - started, [f"hang: still running after {FINISH_S} s"])
    check(outcome, root, before)
    return outcome


def check(outcome: Outcome, root: Path, before: dict) -> None:
    problems, rc, err, out = outcome.problems, outcome.returncode, outcome.stderr, outcome.stdout
    if rc not in outcome.bad.expect:
        problems.append(f"exit code {rc}, expected {outcome.bad.expect}")
    if "Traceback" in err + out:
        problems.append("traceback")
    if rc == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        if not lines or not lines[-1].startswith("error: ") or sum(line.startswith("error:") for line in lines) != 1:
            problems.append("not one error line at the end of stderr")
    if outcome.bad.must_say and outcome.bad.must_say not in err + out:
        problems.append(f"does not say {outcome.bad.must_say!r}")
    for raw in ("\x1b", "\u202e", "\x07", "\x08"):
        if raw in err + out:
            problems.append(f"raw control character {raw!r} on the terminal")
    after = snapshot(root)
    result = "work/result"
    if rc != 0 and any(key == result or key.startswith(result + "/") for key in after):
        problems.append("an output folder although it failed")
    if any(".partial-" in key or ".replaced-" in key for key in after):
        problems.append("a staging folder was left behind")
    mine = ("home/", result + "/", "work/out/")
    outside = {k for k in set(before) | set(after) if not k.startswith(mine) and k not in ("home", result, "work/out")}
    changed = sorted(k for k in outside if before.get(k) != after.get(k))
    if changed:
        problems.append(f"changed outside the output folder and the sessions root: {changed[:5]}")
    report = root / result / "report.md"
    if report.exists() and any(c in report.read_text(encoding="utf-8") for c in ("\x1b", "\u202e", "\x07")):
        problems.append("raw control character in report.md")
    if report.exists() and "DOE^JOHN" in (root / result / "result.json").read_text(encoding="utf-8"):
        problems.append("a free-text DICOM tag was copied verbatim")


def run_all(inputs: list[Bad], tmp_path: Path) -> list[Outcome]:
    config = tmp_path / "medagent.toml"
    config.write_text(CONFIG)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda item: run_one(item[1], tmp_path / f"w{item[0]}", config), enumerate(inputs)))


def summarise(outcomes: list[Outcome]) -> str:
    counts = {
        "tried": len(outcomes),
        "clean": sum(not o.problems for o in outcomes),
        "tracebacks": sum("traceback" in o.problems for o in outcomes),
        "hangs": sum(o.returncode is None for o in outcomes),
        "partial outputs": sum(any("output folder" in p or "staging" in p for p in o.problems) for o in outcomes),
        "changed outside": sum(any(p.startswith("changed outside") for p in o.problems) for o in outcomes),
    }
    slowest = max(outcomes, key=lambda o: o.seconds)
    lines = [", ".join(f"{k} {v}" for k, v in counts.items()) + f"; slowest {slowest.seconds:.1f} s ({slowest.bad.name})"]
    for o in outcomes:
        if o.problems:
            lines.append(f"  {o.bad.name}: {'; '.join(o.problems)} | rc={o.returncode} | {o.stderr.strip()[-400:]!r}")
    return "\n".join(lines)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("inputs", [solve_inputs, chat_inputs], ids=["solve", "chat"])
def test_fuzz(tmp_path, inputs):
    outcomes = run_all(inputs(), tmp_path)
    report = summarise(outcomes)
    print(report)
    assert all(not o.problems for o in outcomes), report
