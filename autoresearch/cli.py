"""The `autoresearch` command line: parses, calls the library, prints.

Heavy libraries (torch, litellm, optuna) are imported inside commands so that
`autoresearch --help` answers at once.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from autoresearch import __version__
from autoresearch.config import DEVICES, load_config
from autoresearch.errors import UserError, os_error_message
from autoresearch.ledger import STATUSES
from autoresearch.plugins import add_plugin_commands, load_data_sources
from autoresearch.workspace import (
    BASELINES,
    EXPORTS_DIR,
    LEDGER_FILE,
    PLOT_FILE,
    RESULTS_FILE,
    find_repo,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="autoresearch")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Let AI agents do machine-learning research on your train.py overnight."""
    ctx.obj = {"debug": debug}


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--baseline",
    type=click.Choice(BASELINES),
    help="Starting train.py: gpt (one H100-class GPU) or tiny (a laptop CPU, learns in a minute)."
    "  [default: gpt if CUDA is available, else tiny]",
)
def init(folder: Path, baseline: str | None) -> None:
    """Create a research repo in FOLDER: train.py, program.md, autoresearch.toml, one commit."""
    from autoresearch.workspace import default_baseline, init_repo

    baseline = baseline or default_baseline()
    path = init_repo(folder, baseline)
    click.echo(f"created research repo {path} from the {baseline} baseline")
    click.echo(f"next: cd {folder} && autoresearch prepare && autoresearch run")


@cli.command()
@click.option("--source", help="Data source to prepare (overrides data.source).")
def prepare(source: str | None) -> None:
    """Download or build the data shards, train the tokenizer, tokenize (resumable)."""
    from autoresearch.harness.prepare import prepare as prepare_data

    config = load_config(find_repo(), {"data.source": source})
    load_data_sources()  # the harness knows only its built-ins by itself
    manifest = prepare_data(config, log=lambda line: click.echo(line, err=True))
    click.echo(
        f"prepared {manifest.source}: {manifest.train_tokens:,} train and"
        f" {manifest.val_tokens:,} val tokens, vocabulary {manifest.vocab_size}"
    )


@cli.command()
@click.option("--budget", type=float, help="Training seconds (overrides run.budget_seconds).")
@click.option(
    "--budget-tokens", type=int, help="Train on this many tokens instead (run.budget_tokens)."
)
@click.option("--seed", type=int, help="Random seed (overrides run.seed).")
@click.option("--device", type=click.Choice(DEVICES), help="Device (overrides run.device).")
@click.option(
    "-m", "--description", help="What this experiment tries (default: the commit subject)."
)
def run(
    budget: float | None,
    budget_tokens: int | None,
    seed: int | None,
    device: str | None,
    description: str | None,
) -> None:
    """Run one experiment of the research repo's current train.py and record it."""
    from autoresearch.constants import depth_of
    from autoresearch.ledger import Ledger
    from autoresearch.plugins import notify_experiment_finished
    from autoresearch.progress import LiveProgress
    from autoresearch.runner import run_experiment
    from autoresearch.status import RunLock
    from autoresearch.workspace import RUN_LOG, TRAIN_FILE, current_commit, run_dir, state_dir

    repo = find_repo()
    overrides = {
        "run.budget_seconds": budget,
        "run.budget_tokens": budget_tokens,
        "run.seed": seed,
        "run.device": device,
    }
    config = load_config(repo, overrides)
    train_py = repo / TRAIN_FILE
    _check_compiles(train_py)
    _check_ready(config)
    state = state_dir(repo)
    with RunLock(state):  # experiments never share the device, not even with an evolve
        ledger = Ledger(state / LEDGER_FILE)
        exp_id = ledger.next_id()
        _warn(ledger)
        ledger.export_tsv(state / RESULTS_FILE)  # mended, as `evolve` does, then appended
        commit = current_commit(repo)
        click.echo(
            f"{exp_id}: training {TRAIN_FILE} for {config.run.describe_budget()}", err=True
        )
        progress = LiveProgress(config.run.budget_seconds, label=exp_id)
        outcome = run_experiment(train_py, config, run_dir(state, exp_id), on_event=progress)
        progress.close()
        record = outcome.to_record(
            id=exp_id,
            commit=commit.sha,
            depth=depth_of(train_py.read_text(encoding="utf-8")),
            seed=config.run.seed,
            proposer="manual",
            description=description
            or ("uncommitted train.py" if commit.dirty else commit.subject or "train.py"),
        )
        ledger.record(record, state / RESULTS_FILE)
    notify_experiment_finished(record)
    click.echo(format_summary(record, outcome.peak_vram_mb))
    if outcome.status != "keep":
        click.echo(
            f"{outcome.status}: {outcome.reason} (log: {run_dir(state, exp_id) / RUN_LOG})",
            err=True,
        )
        sys.exit(1)


@cli.command()
@click.option(
    "--population",
    help="Candidates kept alive; 1 is the original greedy loop; auto (default): 1 or 4, chosen"
    " from the measured noise.",
)
@click.option(
    "--proposer",
    "proposers",
    multiple=True,
    help="A proposer, e.g. optuna, random, llm:anthropic/claude-sonnet-4-5, agent:claude"
    " (or agent:codex, agent:aider); repeat for several.",
)
@click.option("--tag", help="Names the branches autoresearch/<tag>... (default: today's date).")
@click.option("--budget", type=float, help="Training seconds per experiment.")
@click.option(
    "--budget-tokens", type=int, help="Train on this many tokens instead (run.budget_tokens)."
)
@click.option(
    "--max-experiments",
    type=int,
    help="Stop after this many trainings in the tag, the baseline and its repeats included.",
)
@click.option("--hours", type=float, help="Stop after this many hours (over all resumes).")
@click.option("--max-cost-usd", type=float, help="Stop when proposers have spent this much.")
@click.option("--calibrate", type=int, help="Extra baseline runs to measure the noise.")
@click.option(
    "--confirm", type=int, help="Re-runs of a would-be champion before it is promoted."
)
@click.option(
    "--finish",
    is_flag=True,
    help="The first Ctrl-C re-measures the best candidates before stopping (a second stops now).",
)
@click.option(
    "--slots",
    type=int,
    help="Experiments at once: one per GPU, or a share of the cores each (run.slots).",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    help="Where experiments run: this machine, or a Ray cluster (run.executor).",
)
@click.option("--ray-address", help="The Ray cluster, e.g. auto (run.ray_address).")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the latest (or --tag) run where it stopped, with the settings it started with.",
)
def evolve(
    population: str | None,
    proposers: tuple[str, ...],
    tag: str | None,
    budget: float | None,
    budget_tokens: int | None,
    max_experiments: int | None,
    hours: float | None,
    max_cost_usd: float | None,
    calibrate: int | None,
    confirm: int | None,
    finish: bool,
    slots: int | None,
    executor: str | None,
    ray_address: str | None,
    resume: bool,
) -> None:
    """Search for a better train.py: a population of candidates on git branches, overnight."""
    from autoresearch import engine, tags
    from autoresearch.ledger import Ledger
    from autoresearch.plugins import notify_experiment_finished
    from autoresearch.population import limit_reached, tag_records, trained
    from autoresearch.progress import LiveProgress
    from autoresearch.runner import describe_isolation
    from autoresearch.status import RunLock
    from autoresearch.workspace import TRAIN_FILE, current_commit, read_train, state_dir

    repo = find_repo()
    overrides = {
        "evolve.population": population,
        "evolve.proposers": list(proposers) or None,
        "evolve.tag": tag,
        "run.budget_seconds": budget,
        "run.budget_tokens": budget_tokens,
        "evolve.max_experiments": max_experiments,
        "evolve.hours": hours,
        "evolve.max_cost_usd": max_cost_usd,
        "evolve.calibrate": calibrate,
        "evolve.confirm": confirm,
        "run.slots": slots,
        "run.executor": executor,
        "run.ray_address": ray_address,
    }
    config = load_config(repo, overrides)
    state = state_dir(repo)
    # A second evolve says only that one is running, before anything; `later` closes what
    # the run opens (a Ray cluster's runner) when it ends.
    with RunLock(state), contextlib.ExitStack() as later:
        commit = current_commit(repo)
        if not commit.sha:
            raise UserError(
                f"{repo} has no git commit, and evolve keeps candidates on git branches: commit"
                " train.py first (git init; git add -A; git commit -m baseline)"
            )
        if commit.dirty and not resume:
            raise UserError("train.py has uncommitted changes: commit or stash them, then evolve")
        ledger = Ledger(state / LEDGER_FILE)
        all_records = ledger.records()
        _warn(ledger)
        known = tags.known_tags(state)
        run_tag = engine.pick_tag(repo, all_records, config.evolve.tag, resume, known)
        before = tag_records(all_records, run_tag)
        elapsed = 0.0
        configured = tags.settings_of(load_config(repo))  # autoresearch.toml's own values
        if resume:
            config, elapsed = _resumed_config(repo, state, run_tag, before, overrides, configured)
        s = config.evolve
        specs = s.proposers or engine.default_proposers()
        # Proposers asked for on this command line are checked even when nothing will run.
        made = engine.make_proposers(config, specs) if proposers else None
        reached = limit_reached(before, elapsed, s.max_experiments, s.hours, s.max_cost_usd)
        if resume and reached:
            click.echo(
                f"tag {run_tag!r} already {reached.reason}: nothing to do; to go on, raise the"
                f" limit (`{tags.resume_command(run_tag)} {reached.raise_with}`)"
            )
            return
        _check_ready(config)
        made = made or engine.make_proposers(config, specs)
        search = engine.Engine(
            repo, config, run_tag, made, say=click.echo, progress=LiveProgress,
            notify=notify_experiment_finished, configured=configured,
            runner=later.enter_context(_experiment_runner(config)),
        )  # fmt: skip
        search.finish = finish
        start = search.baseline_commit(commit.sha)
        if start and resume and commit.dirty and start == commit.sha:
            raise UserError(
                "train.py has uncommitted changes, and the baseline trains the committed one:"
                f" commit your fix, then `{tags.resume_command(run_tag)}`"
            )
        if start:
            _check_compiles(repo / TRAIN_FILE, read_train(repo, start), committed=True)
        click.echo(
            f"evolve {run_tag}: population {s.population}, proposers {', '.join(made)},"
            f" {config.run.describe_budget()} per experiment{_slots_text(config.run)}"
            f"{_limits_text(s, trained(before))};"
            f" branches autoresearch/{run_tag}*; candidates {describe_isolation(config)}",
            err=True,
        )
        try:
            records = search.run(commit.sha)
        except OSError as e:  # a full disk, say: everything recorded so far is safe, so resume
            retry = f"`{search.resume_command()}`"  # the tag may have no record yet
            raise UserError(os_error_message(e, retry)) from e
    if records and search.champion():
        from autoresearch.report import evolve_summary, format_table, leaderboard_rows, select

        selection = select(records, tag=run_tag, population_size=s.population)
        click.echo(format_table(leaderboard_rows(records, selection.records)))
        click.echo(
            evolve_summary(
                records,
                threshold=search.threshold(),
                stop_reason=search.stop_reason,
                resume=search.resume_command(),
                interrupted=search.interrupted_by is not None,
                raise_with=search.limit.raise_with if search.limit else "--max-experiments N",
                idle_seconds=search.idle_seconds,
                slots=len(search.slots),
            )
        )
    if search.interrupted_by:  # a script can tell a stopped run from a finished one
        sys.exit(128 + search.interrupted_by)


def _resumed_config(
    repo: Path, state: Path, tag: str, records: list, overrides: dict, configured: dict
):
    """(config, elapsed seconds) to resume `tag` with: what it started with, and what this
    command line raises (see autoresearch/tags.py); `configured`: autoresearch.toml's own
    settings. The notes go to stderr."""
    from autoresearch import tags
    from autoresearch.population import champion

    remembered = tags.load(state, tag)
    if remembered is None:  # a tag from before tags remembered their settings
        click.echo(
            f"note: tag {tag!r} does not remember its settings; it goes on with those of"
            " autoresearch.toml and this command line, which it remembers from now on",
            err=True,
        )
        return load_config(repo, overrides), 0.0
    if len(records) < remembered.recorded:
        raise UserError(
            f"the ledger holds {len(records)} records of tag {tag!r}, but {remembered.recorded}"
            f" were recorded: restore {state / LEDGER_FILE} from a backup, or start a new tag"
        )
    explicit = {k: v for k, v in overrides.items() if v is not None}
    again, notes = tags.resume_overrides(
        remembered,
        configured,
        explicit,
        tag,
        measured=champion(records) is not None,
    )
    for note in notes:
        click.echo(note, err=True)
    return load_config(repo, overrides | again), remembered.elapsed_seconds


def _slots_text(run) -> str:
    """The banner's words on where experiments run, when not one at a time here."""
    where = f" on a Ray cluster ({run.ray_address or 'a new local one'})"
    if run.executor != "ray" and run.slots == 1:
        return ""
    return f", {run.slots} at a time" + (where if run.executor == "ray" else "")


def _limits_text(settings, done: int) -> str:
    """The banner's words on the experiment limit: what counts, and what is left."""
    if not settings.max_experiments:
        return ""
    text = (
        f"; stops after {settings.max_experiments} experiments (the baseline and"
        f" {settings.calibrate} noise repeats included{f', {done} done' if done else ''})"
    )
    if settings.max_experiments <= 1 + settings.calibrate:
        text += "; that leaves no room for a candidate: raise --max-experiments"
    return text


# --- seeing the research: leaderboard, plot, show, export, status (read-only) ---


def _read_ledger():
    """(repo, state folder, ledger) of the research repo here; torn lines reported on stderr."""
    from autoresearch.ledger import Ledger
    from autoresearch.workspace import STATE_DIR

    repo = find_repo()
    state = repo / STATE_DIR  # not created: reading must work in a repo it cannot write to
    return repo, state, Ledger(state / LEDGER_FILE)


def _records(ledger) -> list:
    from autoresearch.report import load_records

    records = load_records(ledger)
    _warn(ledger)
    return records


def _warn(ledger) -> None:
    """Report the ledger lines the last read skipped (each names its line number), and its
    records that predate the hash chain."""
    for problem in ledger.problems:
        click.echo(f"warning: {problem}", err=True)
    for note in ledger.notes:
        click.echo(f"note: {note}", err=True)


def _population_size(repo: Path) -> int | str:
    return load_config(repo).evolve.population


@cli.command()
@click.option(
    "--all", "everything", is_flag=True, help="Every experiment, not only the population."
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(STATUSES),
    help="Only experiments with this status (of every experiment); repeat for several.",
)
@click.option("--tag", help='The evolve run to show (default: the latest; "" for `run`).')
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many rows.")
@click.option(
    "--format", "fmt", default="simple", show_default=True, help="Any tabulate table format."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows on stdout (docs/report.md).")
def leaderboard(
    everything: bool,
    statuses: tuple[str, ...],
    tag: str | None,
    limit: int | None,
    fmt: str,
    as_json: bool,
) -> None:
    """What won, by how much, from which lineage: best first."""
    import json

    from autoresearch.report import format_table, leaderboard_rows, select

    repo, _, ledger = _read_ledger()
    records = _records(ledger)
    selection = select(
        records,
        tag=tag,
        everything=everything,
        statuses=statuses,
        population_size=_population_size(repo),
    )
    rows = leaderboard_rows(records, selection.records, limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no experiments match: {selection.what}", err=True)
        return
    table = format_table(rows, fmt)  # a bad --format fails before anything is printed
    click.echo(f"{selection.what}; * marks the champion", err=True)
    click.echo(table)


@cli.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Image file; .png, .svg or .pdf.  [default: .autoresearch/progress.png]",
)
@click.option("--tag", help='The evolve run to plot (default: the latest; "" for `run`).')
@click.option("--all", "everything", is_flag=True, help="Every tag in one figure.")
def plot(output: Path | None, tag: str | None, everything: bool) -> None:
    """Draw val_bpb of every experiment, the running best, failures and spend."""
    from autoresearch.plot import plot_progress
    from autoresearch.report import latest_tag, select

    _, state, ledger = _read_ledger()
    output = output or state / PLOT_FILE  # git-ignored: the research repo stays clean
    records = _records(ledger)
    if not everything and tag is None:
        tag = latest_tag(records)  # one run's story; --all for every tag
    selection = select(records, tag=tag, everything=True)
    plot_progress(selection.records, output)
    click.echo(f"wrote {output} ({len(selection.records)} experiments)")


@cli.command()
@click.argument("candidate")
def show(candidate: str) -> None:
    """One experiment: metrics, status and reason, diff against its parent, lineage, log tail."""
    from autoresearch.report import find_record, show_text

    repo, state, ledger = _read_ledger()
    records = _records(ledger)
    record = find_record(records, candidate)
    import os

    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ  # https://no-color.org
    click.echo(show_text(repo, state, records, record, color=color))


@cli.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("tsv", "parquet", "jsonl")),
    default="tsv",
    show_default=True,
    help="tsv: results.tsv in the original five columns; parquet or jsonl: the whole ledger.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Where to write; - for stdout.  [default: .autoresearch/exports/results.tsv,"
    " ledger.parquet or ledger.jsonl]",
)
def export(fmt: str, output: Path | None) -> None:
    """Write the ledger for other tools: results.tsv, parquet or JSONL."""
    from autoresearch.report import DEFAULT_EXPORT_NAMES
    from autoresearch.report import export as export_ledger

    _, state, ledger = _read_ledger()
    default = state / EXPORTS_DIR / DEFAULT_EXPORT_NAMES[fmt]  # git-ignored, beside the ledger
    path = None if str(output) == "-" else (output or default)
    if path is not None and path.resolve() == ledger.path.resolve():
        raise UserError(f"{path} is the ledger itself: choose another file with -o")
    if path == default:
        path.parent.mkdir(parents=True, exist_ok=True)
    count = export_ledger(ledger, fmt, path)
    _warn(ledger)
    if path is not None:
        click.echo(f"wrote {count} experiments to {path}", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the run's state as JSON on stdout.")
def status(as_json: bool) -> None:
    """Is an evolve run going: which experiment, how far, best and spend so far."""
    import json

    from autoresearch.report import format_status, status_json
    from autoresearch.status import run_status

    _, state, ledger = _read_ledger()
    current = run_status(state)
    if as_json:
        click.echo(json.dumps(status_json(current)))
        return
    records = ledger.records()
    _warn(ledger)
    click.echo(format_status(current, records))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
    help="Port to listen on; 0: any free one.",
)
@click.option(
    "--token",
    help="Require this token on every request (made up and printed when --host is not loopback).",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the dashboard in a browser.")
def serve(host: str, port: int, token: str | None, open_browser: bool) -> None:
    """A live, read-only dashboard of the research in a browser (docs/report.md)."""
    from autoresearch.serve import is_loopback, make_server, new_token

    repo, state, _ = _read_ledger()
    if not is_loopback(host):
        click.echo(
            f"warning: serving on {host}, not only this machine: anyone who can reach it and"
            " has the token sees the research",
            err=True,
        )
        token = token or new_token()
    server = make_server(repo, state, host, port, token)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_address[1]}/" + (f"?token={token}" if token else "")
    click.echo(f"serving {repo} at {url} (Ctrl-C stops)")
    if open_browser:
        import webbrowser

        if not webbrowser.open(url):
            click.echo("no browser could be opened here: open the URL above in one", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        server.stopping.set()
        server.server_close()


def format_summary(record, peak_vram_mb: float) -> str:
    """The original project's summary block, so its tooling can read ours."""

    def num(value, fmt: str) -> str:
        return format(value, fmt) if value is not None else "-"

    rows = [
        ("status", record.status),
        ("val_bpb", num(record.val_bpb, ".6f")),
        ("training_seconds", f"{record.training_seconds:.1f}"),
        ("total_seconds", f"{record.total_seconds:.1f}"),
        ("peak_vram_mb", f"{peak_vram_mb:.1f}"),
        ("mfu_percent", num(record.mfu_percent, ".2f")),
        ("total_tokens_M", f"{record.tokens / 1e6:.1f}"),
        ("num_steps", str(record.num_steps)),
        ("num_params_M", f"{record.num_params / 1e6:.1f}"),
        ("depth", num(record.depth, "d")),
    ]
    return "---\n" + "\n".join(f"{k + ':':<18}{v}" for k, v in rows)


def _check_ready(config) -> None:
    """Refuse before anything starts what would make every experiment fail: data that is
    missing or damaged, or a device this machine does not have (on a Ray cluster the
    nodes' data and devices are theirs: `_experiment_runner` sees to them)."""
    from autoresearch.harness.prepare import load_manifest

    load_data_sources()  # the harness knows only its built-ins by itself
    if config.run.executor == "ray":
        return
    load_manifest(config)  # checks the tokenizer and token files too
    device = config.run.device
    if device in ("cuda", "mps"):
        import torch

        found = torch.cuda.is_available() if device == "cuda" else torch.backends.mps.is_available()
        if not found:
            raise UserError(
                f"'run.device' is {device!r} but this machine has no {device} device:"
                " use --device auto (or cpu)"
            )


@contextlib.contextmanager
def _experiment_runner(config):
    """What trains each experiment: this machine's runner, or (`--executor ray`) a Ray
    cluster's, once every node has the prepared data; its tasks stop when the run ends."""
    if config.run.executor != "ray":
        from autoresearch.runner import run_experiment

        yield run_experiment
        return
    from autoresearch.ray_runner import RayRunner

    ray_runner = RayRunner(config)
    try:
        ray_runner.prepare_nodes(log=lambda line: click.echo(f"ray {line}", err=True))
        yield ray_runner
    finally:
        ray_runner.close()


def _check_compiles(train_py: Path, source: str | None = None, committed: bool = False) -> None:
    """Refuse a train.py that does not parse, with its line, before anything trains.
    `source`: the text to check (the committed one for evolve), else the file's."""
    if source is None:
        try:
            source = train_py.read_text(encoding="utf-8")
        except FileNotFoundError:
            from autoresearch.workspace import current_commit

            in_git = bool(current_commit(train_py.parent).sha)
            how = (
                "restore it with `git checkout -- train.py`"
                if in_git
                else "put one back, or start a research repo with `autoresearch init DIR`"
            )
            raise UserError(f"{train_py} is missing: {how}") from None
    try:
        compile(source, str(train_py), "exec")
    except SyntaxError as e:
        what = "the committed train.py" if committed else "train.py"
        fix = "fix it, commit it" if committed else "fix it"
        raise UserError(f"{what} line {e.lineno}: {e.msg}: {fix} and run again") from None


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of a table.")
def plugins_command(as_json: bool) -> None:
    """List installed plugins: version, hooks, and the proposers each provides."""
    import json

    from autoresearch.plugins import format_plugins, plugin_info

    rows = plugin_info()
    click.echo(json.dumps(rows, indent=2) if as_json else format_plugins(rows))


# Plugins add their commands once the built-in ones exist, so that they cannot replace them.
add_plugin_commands(cli)


def main() -> None:
    """Console entry point: one clear line for user errors, tracebacks only with --debug."""
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # one line, not click's three
        where = e.ctx.command_path if e.ctx else "autoresearch"
        click.echo(f"error: {e.format_message()} (see '{where} --help')", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UserError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:  # the machine's fault, not the input's: a full disk, a permission
        if debug:
            raise
        click.echo(f"error: {os_error_message(e)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
