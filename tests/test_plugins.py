"""The plugin system: entry-point discovery, filtering, failures, and every hook."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from autoresearch import Proposal, hookimpl
from autoresearch import plugins as plugin_system
from autoresearch.errors import UserError
from autoresearch.plugins import (
    PLUGINS_ENV,
    add_plugin_commands,
    build_plugin_manager,
    load_data_sources,
    make_proposer,
    notify_experiment_finished,
    plugin_info,
    proposers,
)
from autoresearch.testing import (
    ScriptedProposer,
    ScriptExhausted,
    installed_plugins,
    make_request,
    scripted_plugin,
)

GOOD_PLUGIN = """
from autoresearch import Proposal, hookimpl

class Echo:
    name = "echo"

    def __init__(self, options):
        self.options = options

    def propose(self, request):
        return Proposal(request.parent_source + "\\n# echo\\n", "echo " + repr(self.options))

@hookimpl
def register_proposers(register):
    register("echo", Echo, "returns the parent with a comment added")
"""


class FakeSite:
    """A folder on sys.path holding fake installed distributions."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        monkeypatch.syspath_prepend(str(root))
        self.modules: list[str] = []

    def install(self, dist: str, version: str, modules: dict[str, str],
                entry_points: dict[str, str]) -> None:
        for module, code in modules.items():
            (self.root / f"{module}.py").write_text(textwrap.dedent(code))
            self.modules.append(module)
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        )
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[autoresearch]\n{lines}")


@pytest.fixture
def site(tmp_path, monkeypatch):
    fake = FakeSite(tmp_path / "site", monkeypatch)
    yield fake
    for module in fake.modules:  # the next test may reuse a module name with other code
        sys.modules.pop(module, None)


@pytest.fixture(autouse=True)
def no_env_filter(monkeypatch):
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    plugin_system.reset_plugin_manager()
    yield
    plugin_system.reset_plugin_manager()


# ---------------------------------------------------------------------------
# Discovery and loading
# ---------------------------------------------------------------------------


def test_builtins_are_registered_through_the_entry_point_group():
    groups = {ep.name: ep.value for ep in metadata.entry_points(group="autoresearch")}
    assert groups["random"] == "autoresearch.default_plugins.random_proposer"
    assert groups["optuna"] == "autoresearch.default_plugins.optuna_proposer"
    pm = build_plugin_manager()
    found = proposers(pm)
    assert found["random"].plugin == "random"
    assert found["optuna"].plugin == "optuna"
    rows = {row["name"]: row for row in plugin_info(pm)}
    assert rows["random"]["builtin"] and rows["random"]["version"] == metadata.version(
        "autoresearch"
    )


def test_external_plugin_is_discovered_and_its_proposer_works(site):
    site.install("fakeplugin", "0.1", {"fakeplugin_mod": GOOD_PLUGIN},
                 {"fake": "fakeplugin_mod"})
    pm = build_plugin_manager()
    assert proposers(pm)["echo"].plugin == "fake"
    proposer = make_proposer("echo:some-model", {"temperature": 0.5}, pm)
    proposal = proposer.propose(make_request("X = 1\n"))
    assert proposal.source == "X = 1\n\n# echo\n"
    assert proposal.description == "echo {'temperature': 0.5, 'model': 'some-model'}"
    row = next(r for r in plugin_info(pm) if r["name"] == "fake")
    assert row == {"name": "fake", "version": "0.1", "builtin": False,
                   "hooks": ["register_proposers"], "proposers": ["echo"], "error": None}


@pytest.mark.parametrize(
    ("allowed", "loaded"),
    [
        (None, True),  # unset: everything installed loads
        ("", False),  # empty: no external plugin
        ("fakeplugin", True),  # by distribution name
        ("FakePlugin", True),  # normalised like package names
        ("other, fake", True),  # by entry-point name, in a list
        ("other", False),
    ],
)
def test_env_var_limits_external_plugins_but_never_builtins(site, monkeypatch, allowed, loaded):
    site.install("fakeplugin", "0.1", {"fakeplugin_env": GOOD_PLUGIN},
                 {"fake": "fakeplugin_env"})
    if allowed is not None:
        monkeypatch.setenv(PLUGINS_ENV, allowed)
    pm = build_plugin_manager()
    assert ("echo" in proposers(pm)) is loaded
    assert {"random", "optuna"} <= set(proposers(pm))


def test_a_plugin_that_fails_to_import_is_named_and_the_others_load(site, caplog):
    site.install("brokenplugin", "0.2", {"broken_mod": "import no_such_module_xyz\n"},
                 {"broken": "broken_mod"})
    site.install("fakeplugin", "0.1", {"fakeplugin_ok": GOOD_PLUGIN}, {"fake": "fakeplugin_ok"})
    with caplog.at_level(logging.WARNING, logger="autoresearch.plugins"):
        pm = build_plugin_manager()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "'broken'" in warnings[0] and "no_such_module_xyz" in warnings[0]
    assert "\n" not in warnings[0]
    assert "echo" in proposers(pm)
    row = next(r for r in plugin_info(pm) if r["name"] == "broken")
    assert row["version"] == "0.2"
    assert "ModuleNotFoundError" in row["error"]


def test_a_misspelled_hookimpl_fails_loudly(site):
    site.install("typoplugin", "0.1", {"typo_mod": """
        from autoresearch import hookimpl

        @hookimpl
        def register_proposer(register):
            register("never", None, "")
    """}, {"typo": "typo_mod"})
    with pytest.raises(UserError) as raised:
        build_plugin_manager()
    message = str(raised.value)
    assert "'typo'" in message and "'register_proposer'" in message
    assert "did you mean 'register_proposers'" in message
    assert PLUGINS_ENV in message
    # The escape hatch the message names does work.
    assert "random" in proposers(build_plugin_manager(allowed=""))


def test_a_misspelled_hook_argument_fails_loudly(site):
    site.install("argplugin", "0.1", {"arg_mod": """
        from autoresearch import hookimpl

        @hookimpl
        def register_proposers(registr):
            pass
    """}, {"argtypo": "arg_mod"})
    with pytest.raises(UserError, match="'argtypo' is invalid.*registr"):
        build_plugin_manager()


# ---------------------------------------------------------------------------
# make_proposer
# ---------------------------------------------------------------------------


def test_unknown_proposer_lists_the_available_ones():
    with pytest.raises(UserError) as raised:
        make_proposer("radnom", {}, build_plugin_manager())
    message = str(raised.value)
    assert "unknown proposer 'radnom'" in message
    assert "did you mean 'random'" in message
    assert "optuna" in message and "random" in message
    assert "\n" not in message


class _Factories:
    @hookimpl
    def register_proposers(self, register):
        register("picky", self.picky, "refuses options")
        register("garbage", lambda options: object(), "returns no proposer")

    @staticmethod
    def picky(options):
        if options:
            raise ValueError(f"unknown option {next(iter(options))!r}")
        return ScriptedProposer(name="picky")


def test_bad_options_and_bad_factories_are_one_line_user_errors():
    pm = build_plugin_manager(allowed="")
    with installed_plugins(_Factories(), pm=pm):
        assert make_proposer("picky", {}, pm).name == "picky"
        with pytest.raises(UserError, match="proposer 'picky': bad options: .*'colour'"):
            make_proposer("picky", {"colour": 1}, pm)
        with pytest.raises(UserError, match="empty model"):
            make_proposer("picky:", {}, pm)
        with pytest.raises(UserError, match="made a object"):
            make_proposer("garbage", {}, pm)


# ---------------------------------------------------------------------------
# One test per hook
# ---------------------------------------------------------------------------


class _Clash:
    @hookimpl
    def register_proposers(self, register):
        register("random", lambda options: None, "tries to take a built-in name")
        register("clash-ok", lambda options: ScriptedProposer(name="clash-ok"), "")


class _Raises:
    @hookimpl
    def register_proposers(self, register):
        raise RuntimeError("boom")


def test_hook_register_proposers(caplog):
    pm = build_plugin_manager(allowed="")
    with caplog.at_level(logging.WARNING), installed_plugins(_Clash(), _Raises(), pm=pm):
        found = proposers(pm)
        assert found["random"].plugin == "random"  # the built-in keeps its name
        assert "clash-ok" not in found  # the clash stopped that plugin's registration
        errors = {row["name"]: row["error"] for row in plugin_info(pm) if row["error"]}
        assert len(errors) == 2
        assert any("already registered by 'random'" in e for e in errors.values())
        assert any("RuntimeError: boom" in e for e in errors.values())
        assert found["optuna"].description
    assert "clash-ok" not in proposers(pm)  # unregistering rebuilt the registry


class _Commands:
    @hookimpl
    def register_commands(self, cli):
        @cli.command()
        def hello():
            """Say hello."""
            click.echo("hello from a plugin")

        @cli.command("init")
        def fake_init():
            click.echo("hijacked")


def test_hook_register_commands(caplog):
    @click.group()
    def group():
        pass

    @group.command()
    def init():
        click.echo("the real init")

    pm = build_plugin_manager(allowed="")
    with caplog.at_level(logging.WARNING), installed_plugins(_Commands(), pm=pm):
        add_plugin_commands(group, pm)
    runner = CliRunner()
    assert runner.invoke(group, ["hello"]).output == "hello from a plugin\n"
    assert runner.invoke(group, ["init"]).output == "the real init\n"
    assert any("'init' command is ignored" in r.getMessage() for r in caplog.records)


class _Corpus:
    name = "plugin-corpus"
    description = "a corpus from a plugin"

    def fetch(self, settings, dest, log):
        log("fetched")


class _Sources:
    @hookimpl
    def register_data_sources(self, register):
        register(_Corpus())


def test_hook_register_data_sources(monkeypatch):
    from autoresearch.harness import sources

    monkeypatch.setattr(sources, "SOURCES", {})  # start empty: the hook must fill it
    pm = build_plugin_manager(allowed="")
    with installed_plugins(_Sources(), pm=pm):
        found = load_data_sources(pm)
    assert {"stdlib", "climbmix", "tinystories", "folder", "plugin-corpus"} <= set(found)
    assert sources.get_source("plugin-corpus") is found["plugin-corpus"]
    assert isinstance(sources.get_source("stdlib"), sources.StdlibSource)


def test_prepare_hands_the_sources_of_plugins_to_the_harness(monkeypatch, tmp_path):
    from autoresearch.cli import cli
    from autoresearch.harness import sources
    from autoresearch.workspace import init_repo

    monkeypatch.setattr(sources, "SOURCES", dict(sources.SOURCES))  # the built-ins only
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(init_repo(tmp_path / "research", "tiny"))
    with installed_plugins(_Sources()):
        result = CliRunner().invoke(cli, ["prepare", "--source", "plugin-corpus"])
    assert "fetched" in result.output  # found and fetched: the shards it made are its own affair
    assert isinstance(result.exception, UserError)
    assert "source 'plugin-corpus' made no train or no val shards" in str(result.exception)


class _Notifier:
    def __init__(self):
        self.records = []

    @hookimpl
    def experiment_finished(self, record):
        self.records.append(record)


class _BrokenNotifier:
    @hookimpl
    def experiment_finished(self, record):
        raise ConnectionError("tracker is down")


def test_hook_experiment_finished(caplog):
    pm = build_plugin_manager(allowed="")
    first, last = _Notifier(), _Notifier()
    with caplog.at_level(logging.WARNING), installed_plugins(
        first, _BrokenNotifier(), last, pm=pm
    ):
        notify_experiment_finished({"id": "c0001", "status": "keep"}, pm)
    assert first.records == last.records == [{"id": "c0001", "status": "keep"}]
    assert any("tracker is down" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------
# autoresearch plugins
# ---------------------------------------------------------------------------


def test_plugins_command_table_and_json(site):
    from autoresearch.cli import cli

    site.install("fakeplugin", "0.1", {"fakeplugin_cli": GOOD_PLUGIN}, {"fake": "fakeplugin_cli"})
    site.install("brokenplugin", "0.2", {"broken_cli": "raise RuntimeError('nope')\n"},
                 {"broken": "broken_cli"})
    plugin_system.reset_plugin_manager()
    runner = CliRunner()
    table = runner.invoke(cli, ["plugins"])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == ["plugin", "version", "hooks", "proposers"]
    assert any(line.split() == ["fake", "0.1", "register_proposers", "echo"] for line in lines)
    assert any(line.split()[:2] == ["random", metadata.version("autoresearch")] for line in lines)
    assert "error: failed to import: RuntimeError: nope" in table.output

    result = runner.invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["fake"]["proposers"] == ["echo"]
    assert rows["optuna"]["hooks"] == ["register_proposers"]
    assert rows["data_sources"]["hooks"] == ["register_data_sources"]
    assert rows["broken"]["error"].startswith("failed to import")


# ---------------------------------------------------------------------------
# autoresearch.testing
# ---------------------------------------------------------------------------


def test_scripted_proposer_replays_its_script():
    proposer = ScriptedProposer([
        "A = 1\n",
        ("A = 2\n", "two"),
        Proposal("A = 3\n", "three"),
        TimeoutError("slow model"),
        lambda request: (request.parent_source + "B = 1\n", "from a callable"),
    ])
    pm = build_plugin_manager(allowed="")
    with installed_plugins(scripted_plugin(proposer), pm=pm):
        made = make_proposer("scripted", {"ignored": True}, pm)
        assert made is proposer
        request = make_request("A = 0\n")
        assert made.propose(request) == Proposal("A = 1\n", "scripted proposal 1")
        assert made.propose(request).description == "two"
        assert made.propose(request).source == "A = 3\n"
        with pytest.raises(TimeoutError):
            made.propose(request)
        assert made.propose(request) == Proposal("A = 0\nB = 1\n", "from a callable")
        with pytest.raises(ScriptExhausted):
            made.propose(request)
    assert len(proposer.requests) == 6 and proposer.remaining == 0
    assert "scripted" not in proposers(pm)
