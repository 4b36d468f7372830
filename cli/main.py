"""The `medagent` command line. Heavy imports happen inside commands, after input is validated."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from medagent.tools.errors import MedagentError


def _recipe_names() -> list[str]:
    """training/'s recipe folders, for the help text (pkgutil only lists them: nothing is imported)."""
    from medagent.cli.recipes import recipe_names

    return recipe_names()

app = typer.Typer(add_completion=False, no_args_is_help=True, help="medagent — local-first medical AI agent (research use only).")
eval_app = typer.Typer(no_args_is_help=True, help="Run evaluation suites and score traces.")
convert_app = typer.Typer(no_args_is_help=True, help="Convert other formats into case.json.")
app.add_typer(eval_app, name="eval")
scale_app = typer.Typer(no_args_is_help=True, help="Tools and the service on a Ray cluster (Ray Serve); needs the [scale] extra.")
app.add_typer(convert_app, name="convert")
index_app = typer.Typer(no_args_is_help=True, help="Build search indexes over your own files.")
app.add_typer(index_app, name="index")
app.add_typer(scale_app, name="scale")

ConfigOpt = typer.Option(None, "--config", help="medagent.toml (default: $MEDAGENT_CONFIG, then ~/.config/medagent/)")


def _err(message: str) -> None:
    from medagent.tools.safeio import one_line

    typer.echo(f"error: {one_line(message)}", err=True)


def _say(text: object) -> str:
    from medagent.tools.safeio import console_safe

    return console_safe(text)


def _console():
    from rich.console import Console

    return Console(stderr=True)


@app.command()
def solve(
    case_file: Path = typer.Argument(..., help="case.json, or a FHIR R4 Bundle (JSON)"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="output folder (default: out/<case id>)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an output folder medagent wrote earlier (never any other folder)"),
    allow_outside_paths: bool = typer.Option(False, "--allow-outside-paths", help="allow attachments outside the case folder"),
    as_json: bool = typer.Option(False, "--json", help="print result.json to stdout instead of a summary"),
    fhir: bool = typer.Option(False, "--fhir", help="also write fhir.json: the result as a FHIR R4 Bundle (DiagnosticReport, Observations, provisional Conditions)"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Solve one case (case.json, or a FHIR R4 Bundle): writes result.json, report.md and trace.jsonl."""
    from medagent.agent.outputs import output_folder, write_outputs
    from medagent.tools.config import load_settings
    from medagent.tools.fhir import read_fhir, result_bundle, write_case_folder
    from medagent.tools.intake import intake
    from medagent.tools.paths import child

    settings = load_settings(config)
    if allow_outside_paths:
        settings.agent.allow_outside_paths = True
    converted = read_fhir(case_file)  # a FHIR R4 Bundle, converted now (bad input said before anything is written)
    if converted is not None:
        from medagent.tools.intake import parse_case

        case_id = parse_case(converted.case, str(case_file)).id
        inputs = [case_file, *(p for p in converted.files.values() if isinstance(p, Path))]
    else:
        loaded = intake(case_file, settings)
        case_id = loaded.case.id
        inputs = [case_file, *(loaded.case_dir / a.path for a in loaded.case.attachments)]
    out = out or child(Path("out"), case_id, "case id")
    with output_folder(out, overwrite, inputs, "solve") as staging:  # refused here, before any model loads
        import asyncio

        from medagent.agent.api import run_loaded
        from medagent.tools.trace import TraceRecorder

        if converted is not None:  # the case medagent made of the bundle is kept with the outputs, under input/
            loaded = intake(write_case_folder(converted, staging / "input"), settings)
            loaded.warnings += converted.warnings
        if settings.agent.planner == "llm":  # asked for the LLM and nothing else: if it cannot run, that is all we say
            from medagent.agent.llm.factory import preflight

            try:
                preflight(settings)
            except MedagentError as exc:
                exc.exit_code = 1
                raise
        if settings.serve.remote_tools:  # an unreachable cluster is said before anything starts
            from medagent.agent.api import placed_tools

            placed_tools(settings)
        console = _console()
        trace = TraceRecorder(loaded.case.id, staging / "trace.jsonl")
        progress = None if as_json else (lambda message: console.print(f"  {_say(message)}", highlight=False))
        if not as_json:
            console.print(f"[bold]medagent[/bold] solving case {_say(loaded.case.id)} ({len(loaded.case.attachments)} attachments)")
        try:
            result, _ = asyncio.run(run_loaded(loaded, settings, staging / "artifacts", trace, on_progress=progress))
        finally:
            trace.close()
        write_outputs(staging, result, loaded.case)
        if fhir:
            (staging / "fhir.json").write_text(json.dumps(result_bundle(result, loaded.case), indent=2) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    errors = sum(e.error for e in result.evidence)
    console.print(
        f"[green]done[/green] in {result.timings.total_s:.1f}s: {len(result.evidence)} evidence items"
        f"{f' ({errors} errors)' if errors else ''}, {len(result.differential)} candidate diagnoses"
    )
    for candidate in result.differential[:3]:
        console.print(f"  {candidate.rank}. {_say(candidate.name)} [{', '.join(candidate.evidence)}]", highlight=False)
    if not result.differential:
        console.print(f"  {_say(result.differential_note)}", highlight=False)
    budget_note = next((n for n in result.report.limitations if "solve budget" in n), None)
    if budget_note:
        console.print(f"  [yellow]{_say(budget_note)}[/yellow]", highlight=False)
    console.print(f"wrote {_say(out)}/result.json, report.md, trace.jsonl{', fhir.json' if fhir else ''}", highlight=False)
    console.print(f"[dim]{result.notice}[/dim]")


@app.command()
def chat(
    session: Optional[str] = typer.Option(None, "--session", help="resume this session id"),
    case_file: Optional[Path] = typer.Option(None, "--case", help="start a new session from a case.json"),
    script: Optional[Path] = typer.Option(None, "--script", help="read user turns from this file ('-' = stdin) instead of the keyboard"),
    list_sessions: bool = typer.Option(False, "--list", help="list sessions and exit"),
    delete: Optional[str] = typer.Option(None, "--delete", help="delete a session and all its data"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """A consultation: multi-turn, files attached along the way (/attach), sessions persist and resume."""
    from medagent.cli.chat import run_chat

    raise typer.Exit(run_chat(config, session, case_file, script, list_sessions, delete))


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, "--host", help="address to bind (default: serve.host in the config, 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, "--port", help="port (default: serve.port in the config, 8000)"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """The HTTP API (http://127.0.0.1:8000/api/..., OpenAPI at /docs)."""
    from medagent.service.http import run_server
    from medagent.tools.config import load_settings

    settings = load_settings(config)
    raise typer.Exit(run_server(settings, host, port))


@app.command()
def mcp(
    transport: str = typer.Option("stdio", "--transport", help="stdio | http (streamable HTTP at /mcp)"),
    host: Optional[str] = typer.Option(None, "--host", help="http: address to bind (default: serve.host in the config)"),
    port: Optional[int] = typer.Option(None, "--port", help="http: port (default 8001)"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """An MCP server: every available tool with its JSON Schema, plus solve_case."""
    from medagent.service.mcp_server import run_mcp
    from medagent.tools.config import load_settings

    if transport not in ("stdio", "http"):
        raise MedagentError(f"--transport {transport!r}: use stdio or http")
    raise typer.Exit(run_mcp(load_settings(config), transport, host, port))


@app.command()
def tools(config: Optional[Path] = ConfigOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """List tools, whether each is available, and why not."""
    from medagent.tools.config import load_settings
    from medagent.tools.registry import Registry

    from medagent.agent.api import placed_tools

    settings = load_settings(config)
    specs = Registry(settings, placed_tools(settings)).specs()
    if as_json:
        typer.echo(json.dumps([s.model_dump(mode="json") for s in specs], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("tool", "available", "examines", "purpose / why unavailable")
    for spec in specs:
        kinds = ", ".join(k.value for k in spec.attachment_kinds) or "text"
        if spec.modalities:
            kinds += f" ({', '.join(spec.modalities)})"
        table.add_row(spec.name, "yes" if spec.available else "[red]no[/red]", kinds, spec.purpose if spec.available else spec.unavailable_reason)
    Console().print(table)


@app.command()
def doctor(config: Optional[Path] = ConfigOpt) -> None:
    """Check the environment: packages, config, model files found or missing and where they are looked for."""
    from medagent.agent.doctor import run_doctor

    ok = run_doctor(config)
    raise typer.Exit(0 if ok else 1)


@app.command()
def setup(config: Optional[Path] = ConfigOpt) -> None:
    """Do the one-time builds now (knowledge graph, dense index, offline LLM and its probe, Whisper), so the
    first solve runs as fast as the next."""
    from medagent.agent.setup import run_setup
    from medagent.tools.config import cache_root, load_settings

    settings = load_settings(config)
    started = time.monotonic()
    typer.echo(f"medagent setup: one-time builds into {cache_root(settings)}")
    results = run_setup(settings, say=lambda line: typer.echo(line))
    failed = [name for name, error in results if error]
    typer.echo(f"set-up {'failed for ' + ', '.join(failed) if failed else 'done'} in {time.monotonic() - started:.0f} s")
    raise typer.Exit(1 if failed else 0)


@app.command()
def schema(name: str = typer.Argument(..., help="case | result | trace | evidence | toolspec | config | suite-item")) -> None:
    """Print a published JSON Schema."""
    from medagent.cli.schemas import json_schema

    typer.echo(json.dumps(json_schema(name), indent=2))


@app.command()
def train(
    name: str = typer.Argument(..., help="recipe name: " + ", ".join(_recipe_names())),
    config: Path = typer.Option(..., "--config", help="recipe YAML (e.g. training/NAME/configs/smoke.yaml)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides of the YAML"),
) -> None:
    """Run a training recipe."""
    from medagent.cli.recipes import run_recipe

    output = run_recipe(name, config, overrides or [])
    if os.environ.get("RANK", "0") == "0":  # under torchrun: one line, from rank 0
        typer.echo(f"wrote {output}")


def _ray_app():  # noqa: ANN202 - the module, once Ray is known to be installed
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise MedagentError("Ray is not installed: pip install -e '.[scale]' (make test installs it)") from exc
    from medagent.service import ray_app

    return ray_app


@index_app.command("images")
def index_images(
    folder: Path = typer.Argument(..., help="folder of PNG/JPEG/TIFF/DICOM images (captions.jsonl or captions.csv beside them optional)"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Index a folder of 2D images with PMC-CLIP for imaging.similar (the index lives under the cache root)."""
    from medagent.tools.config import load_settings
    from medagent.tools.image_index import ImageIndexError, scan
    from medagent.tools.pmcclip import check, open_folder_index
    from medagent.tools.pool import ModelPool

    settings = load_settings(config)
    try:
        scan(folder)  # a missing or empty folder, or a bad caption file, is said before the model loads
    except ImageIndexError as exc:
        raise MedagentError(str(exc)) from exc
    reason = check(settings)
    if reason is not None:
        raise MedagentError(f"imaging.similar needs PMC-CLIP: {reason}")
    index = open_folder_index(settings, ModelPool(), folder)
    typer.echo(f"{len(index.entries)} images of {_say(index.folder)} indexed in {_say(index.where)}: {_say(index.note)}")
    configured = settings.pmcclip.image_folder
    if configured is None or Path(configured).expanduser().resolve() != index.folder.resolve():
        typer.echo(f"imaging.similar searches [pmcclip] image_folder; set it to {_say(index.folder.resolve())} to search this one")


@scale_app.command("deploy")
def scale_deploy(
    service: bool = typer.Option(False, "--service", help="also run the HTTP service on Ray Serve ([serve] host:port)"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Deploy the tools ([serve.deployments]) on the cluster at [serve] ray_address, then print their health."""
    from medagent.tools.config import load_settings

    for line in _ray_app().deploy(load_settings(config), service, say=typer.echo):
        typer.echo(line)


@scale_app.command("status")
def scale_status(config: Optional[Path] = ConfigOpt) -> None:
    """Each deployed tool: available, or why not; the applications' states and replicas."""
    from medagent.tools.config import load_settings

    for line in _ray_app().health_lines(load_settings(config)):
        typer.echo(line)


@scale_app.command("down")
def scale_down(config: Optional[Path] = ConfigOpt) -> None:
    """Delete medagent's applications from the cluster (the cluster itself stays up)."""
    from medagent.tools.config import load_settings

    for line in _ray_app().down(load_settings(config)):
        typer.echo(line)


RAY_FROM_CONFIG = "<config>"  # `--ray` given without an address
OPTIONAL_VALUE = {"--ray": RAY_FROM_CONFIG}


def optional_values(argv: list[str]) -> list[str]:
    """`--ray [ADDRESS]`: an option whose value may be left out. Typer has no such option (its flag_value
    works for flags only), so a bare `--ray` (last, or followed by another option) gets its stand-in value."""
    out: list[str] = []
    for i, token in enumerate(argv):
        out.append(token)
        if token in OPTIONAL_VALUE and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUE[token])
    return out


@eval_app.command("run")
def eval_run(
    suite: str = typer.Argument(..., help="a built-in suite name or a suite JSONL file"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="run folder (default: runs/<suite>-<time>)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="run at most N items (default: the suite's; 0 = all)"),
    workers: int = typer.Option(1, "--workers", min=1, help="items run concurrently"),
    data: Optional[Path] = typer.Option(None, "--data", help="data folder for built-in suites (default: ../shared/data when present)"),
    item: Optional[list[str]] = typer.Option(None, "--item", help="run only this item id (repeatable)"),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="[ADDRESS]",
        help="run the items on a Ray cluster, --workers at a time (ADDRESS: 'auto', HOST:PORT; default [serve] ray_address, else auto)"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Run a suite: each item in a fresh state; resumable; writes traces, scores and a report (md + html)."""
    from medagent.evals.runner import run_suite
    from medagent.tools.config import load_settings

    settings = load_settings(config)
    address = (settings.serve.ray_address or "auto") if ray == RAY_FROM_CONFIG else ray
    summary = run_suite(suite, out=out, limit=limit, workers=workers, data_dir=data, settings=settings, item_ids=item,
                        ray_address=address)
    typer.echo(summary)


@eval_app.command("score")
def eval_score(
    traces: Path = typer.Argument(..., help="a folder of trace .jsonl files (or a run folder)"),
    suite: Optional[str] = typer.Option(None, "--suite", help="suite whose expectations to score against"),
    data: Optional[Path] = typer.Option(None, "--data"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="also write scores.jsonl, report.md and report.html here"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Score existing traces (from this or any other run)."""
    from medagent.evals.runner import score_traces

    typer.echo(score_traces(traces, suite, data, out, config))


@eval_app.command("compare")
def eval_compare(
    runs: list[Path] = typer.Argument(..., help="two or more run folders; deltas are against the first"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="folder for compare.md/.html (default: the last run folder)"),
) -> None:
    """Side-by-side metrics of runs, deltas, and the items whose verdict changed."""
    from medagent.evals.report import compare_runs

    text, md_path, html_path = compare_runs(runs, out)
    typer.echo(text)
    typer.echo(f"wrote {md_path} and {html_path}")


@eval_app.command("export-sft")
def eval_export_sft(
    source: Path = typer.Argument(..., help="a run folder or a folder of trace .jsonl files"),
    out: Path = typer.Option(..., "-o", "--out", help="training examples, JSONL"),
    suite: Optional[str] = typer.Option(None, "--suite", help="suite holding the traced cases (default: the run's)"),
    data: Optional[Path] = typer.Option(None, "--data"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Turn traces into supervised fine-tuning examples (the planner recipe's converter, agent/sft.py)."""
    from medagent.evals.runner import export_sft

    typer.echo(export_sft(source, out, suite, data, config))


@convert_app.command("phenopacket")
def convert_phenopacket(
    file: Path = typer.Argument(..., help="a GA4GH phenopacket v2 JSON file (or a flat record as in the phenopackets dev set)"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="case.json to write (default: print it)"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Write a case.json from a phenopacket: coded phenotypes kept, narrative as history, diagnosis left out."""
    from medagent.evals.knowledge import convert_phenopacket as convert
    from medagent.tools.intake import parse_case

    if not file.is_file():
        raise MedagentError(f"{file}: file not found")
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        case = convert(record)
    except json.JSONDecodeError as exc:
        raise MedagentError(f"{file}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise MedagentError(f"{file}: {exc}") from exc
    parse_case(case, str(file))  # the written case always validates
    text = json.dumps(case, indent=2)
    if out is None:
        typer.echo(text)
        return
    if out.resolve() == file.resolve():
        raise MedagentError(f"{out}: is the phenopacket being converted; write the case to another file")
    if out.is_dir():
        raise MedagentError(f"{out}: is a folder; name the case.json file to write")
    if out.exists() and not overwrite:
        raise MedagentError(f"{out}: exists; pass --overwrite to replace it")
    out.write_text(text + "\n", encoding="utf-8")
    typer.echo(f"wrote {out}")


@convert_app.command("fhir")
def convert_fhir(
    file: Path = typer.Argument(..., help="a FHIR R4 Bundle (JSON); files it references by relative URL lie beside it"),
    out: Path = typer.Option(..., "-o", "--out", help="case folder to write (must not exist yet): case.json and files/"),
) -> None:
    """Write a case folder from a FHIR R4 Bundle: age and sex, findings, coded phenotypes, attachments."""
    import shutil
    import tempfile

    from medagent.tools.fhir import read_bundle, write_case_folder
    from medagent.tools.intake import load_case

    if not file.is_file():
        raise MedagentError(f"{file}: file not found")
    if out.exists():
        raise MedagentError(f"{out}: exists; name a folder that does not exist yet")
    converted = read_bundle(file)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        load_case(write_case_folder(converted, partial))  # the written case always passes intake
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for warning in converted.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"wrote {out}/case.json ({len(converted.case['findings'])} findings, "
               f"{len(converted.case['phenotypes']['present'])} phenotypes, {len(converted.case['attachments'])} attachments)")


class Interrupted(BaseException):
    """SIGTERM or Ctrl-C, raised where the main thread is, so that every `finally` on the way out runs. Not a
    KeyboardInterrupt: click would turn that into a silent exit 130 before anything is cleaned up or said."""


# Unwinding after an interrupt may wait on a tool's thread that never returns: past this, the watchdog ends it.
INTERRUPT_GRACE_S = 2.0


def _interrupt_exit(signum: int) -> None:
    """Remove what an interrupted command was staging, say so in one line, and end with 128 + the signal number."""
    import os
    import signal

    from medagent.tools.paths import abandon_staging

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    removed = abandon_staging()
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    done = f"; removed the unfinished output ({', '.join(p.name for p in removed)}), nothing was written" if removed else ""
    try:
        _err(f"interrupted by {name}{done}")
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(128 + signum)  # never wait for worker threads still inside a tool


def _install_interrupts() -> None:
    import signal
    import threading

    def on_signal(signum: int, frame: object) -> None:
        watchdog = threading.Timer(INTERRUPT_GRACE_S, _interrupt_exit, (signum,))
        watchdog.daemon = True
        watchdog.start()
        raise Interrupted(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)


def _leave(code: int) -> None:
    """Exit now when a tool that timed out (or that the solve budget cut off) still holds a worker thread: the
    interpreter would otherwise wait for it at exit, and the command would never end."""
    import os
    import threading

    if any(thread.name.startswith("medagent-tool") and thread.is_alive() for thread in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    import os
    import signal

    # Models are never fetched from a hub at run time, and library progress bars stay off the screen.
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("TRANSFORMERS_VERBOSITY", "error"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    _install_interrupts()
    try:
        app(args=optional_values(sys.argv[1:]))
    except SystemExit as exc:
        _leave(exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1)
        raise
    except MedagentError as exc:
        _err(str(exc))
        _leave(exc.exit_code)
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        _interrupt_exit(exc.args[0])
    except KeyboardInterrupt:
        _interrupt_exit(signal.SIGINT)
    except RecursionError as exc:  # e.g. a structure nested deeper than a check foresaw: the input, not a bug
        _err(f"input nested too deeply to process ({exc})")
        sys.exit(2)
    except Exception as exc:
        # A bug, not a bad input: one line for the user (exit 1, so tests notice); MEDAGENT_DEBUG=1 shows the traceback.
        if os.environ.get("MEDAGENT_DEBUG"):
            raise
        _err(f"internal error ({exc.__class__.__name__}: {exc}); rerun with MEDAGENT_DEBUG=1 for the traceback and report it")
        sys.exit(1)


if __name__ == "__main__":
    main()
