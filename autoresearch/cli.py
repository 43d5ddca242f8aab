"""The `autoresearch` command line: parses, calls the library, prints.

Heavy libraries (torch, litellm, optuna) are imported inside commands so that
`autoresearch --help` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from autoresearch import __version__
from autoresearch.config import DEVICES, load_config
from autoresearch.errors import UserError
from autoresearch.plugins import add_plugin_commands
from autoresearch.workspace import BASELINES, find_repo

LEDGER_FILE = "ledger.jsonl"
RESULTS_FILE = "results.tsv"


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
    manifest = prepare_data(config, log=lambda line: click.echo(line, err=True))
    click.echo(
        f"prepared {manifest.source}: {manifest.train_tokens:,} train and"
        f" {manifest.val_tokens:,} val tokens, vocabulary {manifest.vocab_size}"
    )


@cli.command()
@click.option("--budget", type=float, help="Training seconds (overrides run.budget_seconds).")
@click.option("--seed", type=int, help="Random seed (overrides run.seed).")
@click.option("--device", type=click.Choice(DEVICES), help="Device (overrides run.device).")
@click.option(
    "-m", "--description", help="What this experiment tries (default: the commit subject)."
)
def run(
    budget: float | None, seed: int | None, device: str | None, description: str | None
) -> None:
    """Run one experiment of the research repo's current train.py and record it."""
    from autoresearch.harness.prepare import load_manifest
    from autoresearch.ledger import Ledger
    from autoresearch.progress import LiveProgress
    from autoresearch.runner import run_experiment
    from autoresearch.workspace import TRAIN_FILE, current_commit, state_dir

    repo = find_repo()
    config = load_config(
        repo, {"run.budget_seconds": budget, "run.seed": seed, "run.device": device}
    )
    train_py = repo / TRAIN_FILE
    _check_compiles(train_py)
    load_manifest(config)  # no data prepared: say so before anything starts
    state = state_dir(repo)
    ledger = Ledger(state / LEDGER_FILE)
    exp_id = ledger.next_id()
    commit = current_commit(repo)
    click.echo(f"{exp_id}: training {TRAIN_FILE} for {config.run.budget_seconds:.0f} s", err=True)
    outcome = run_experiment(
        train_py, config, state / "runs" / exp_id, on_event=LiveProgress(config.run.budget_seconds)
    )
    depth = _constants(train_py).get("DEPTH")
    record = outcome.to_record(
        id=exp_id,
        commit=commit.sha,
        depth=depth if isinstance(depth, int) else None,
        seed=config.run.seed,
        proposer="manual",
        description=description
        or ("uncommitted train.py" if commit.dirty else commit.subject or "train.py"),
    )
    ledger.append(record)
    ledger.export_tsv(state / RESULTS_FILE)
    click.echo(format_summary(record, outcome.peak_vram_mb))
    if outcome.status != "keep":
        click.echo(
            f"{outcome.status}: {outcome.reason} (log: {state / 'runs' / exp_id / 'run.log'})",
            err=True,
        )
        sys.exit(1)


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


def _check_compiles(train_py: Path) -> None:
    try:
        source = train_py.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"{train_py} is missing: restore it with `git checkout -- train.py`"
        ) from None
    try:
        compile(source, str(train_py), "exec")
    except SyntaxError as e:
        raise UserError(f"train.py line {e.lineno}: {e.msg}: fix it and run again") from None


def _constants(train_py: Path) -> dict:
    from autoresearch.constants import read_constants

    try:
        return read_constants(train_py.read_text(encoding="utf-8"))
    except (SyntaxError, ValueError):
        return {}


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
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
