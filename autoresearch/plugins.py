"""The plugin manager: entry-point loading, and the registries filled through hooks.

Every plugin, built-in or not, is found through the `autoresearch`
entry-point group, so the built-ins prove the path a third party takes.
`AUTORESEARCH_PLUGINS` (comma-separated distribution or entry-point names)
limits which *external* plugins load; an empty value loads none of them.
Built-ins always load.

A plugin that fails to import is named in one log line and remembered for
`autoresearch plugins`; the others still load. A hookimpl whose name or
arguments match no hookspec (a typo) is a `UserError`: silently ignoring it
would leave the user wondering why their plugin does nothing.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from autoresearch import hookspecs
from autoresearch.errors import UserError, did_you_mean
from autoresearch.proposal import Proposer

ENTRY_POINT_GROUP = hookspecs.PROJECT
PLUGINS_ENV = "AUTORESEARCH_PLUGINS"
BUILTIN_PACKAGE = "autoresearch.default_plugins"
PROPOSER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")  # no ':' — it separates the model part

log = logging.getLogger(__name__)

Factory = Callable[[dict], Proposer]


@dataclass(frozen=True)
class ProposerSpec:
    """A registered proposer: `factory(options)` makes one."""

    name: str
    factory: Factory
    description: str
    plugin: str  # the plugin that registered it


@dataclass(frozen=True)
class PluginOrigin:
    """Where a plugin came from, for `autoresearch plugins`."""

    dist: str | None
    version: str | None
    builtin: bool


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus what `autoresearch plugins` reports."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, PluginOrigin] = {}
        self.errors: dict[str, str] = {}  # plugin name -> one-line error (import or hook failure)
        self._proposers: dict[str, ProposerSpec] | None = None
        self._lock = threading.Lock()

    def register(self, plugin: object, name: str | None = None) -> str | None:
        with self._lock:
            self._proposers = None  # the registry is rebuilt from the new set of plugins
        return super().register(plugin, name=name)

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        with self._lock:
            self._proposers = None
        return super().unregister(plugin, name=name)


_manager: PluginManager | None = None
_manager_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = build_plugin_manager()
        return _manager


def reset_plugin_manager() -> None:
    """Forget the cached manager (tests, or after installing a plugin in-process)."""
    global _manager
    with _manager_lock:
        _manager = None


def build_plugin_manager(allowed: str | None = None) -> PluginManager:
    """A fresh manager with the built-ins and the allowed external plugins loaded.

    `allowed` overrides the `AUTORESEARCH_PLUGINS` environment variable.
    """
    if allowed is None:
        allowed = os.environ.get(PLUGINS_ENV)
    wanted = None if allowed is None else {_normalise(n) for n in allowed.split(",") if n.strip()}
    pm = PluginManager()
    # Built-ins first: they are registered first, so their proposers win a name clash.
    for ep, origin in sorted(_entry_points(), key=lambda pair: not pair[1].builtin):
        if (
            not origin.builtin
            and wanted is not None
            and not (
                _normalise(ep.name) in wanted or (origin.dist and _normalise(origin.dist) in wanted)
            )
        ):
            continue
        _load_entry_point(pm, ep, origin)
    check_hooks(pm)
    return pm


def check_hooks(pm: pluggy.PluginManager) -> None:
    """Raise a `UserError` naming the plugin when a hookimpl matches no hookspec."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        known = [name for name in vars(hookspecs) if _is_hookspec(name)]
        unknown = [
            (impl.plugin_name, name)
            for name, caller in vars(pm.hook).items()
            if isinstance(caller, pluggy.HookCaller) and not caller.has_spec()
            for impl in caller.get_hookimpls()
        ]
        if not unknown:  # pragma: no cover - pluggy raised for a reason we do not know
            raise UserError(f"a plugin failed validation: {e}") from None
        plugin, hook = unknown[0]
        raise UserError(
            f"plugin {plugin!r} implements unknown hook {hook!r}{did_you_mean(hook, known)};"
            f" fix the plugin, or leave it out with {PLUGINS_ENV}=<the plugins you want>"
        ) from None


def _load_entry_point(pm: PluginManager, ep: metadata.EntryPoint, origin: PluginOrigin) -> None:
    if pm.has_plugin(ep.name):
        if pm.origins.get(ep.name) != origin:
            _plugin_error(pm, ep.name, origin, f"another plugin is already called {ep.name!r}")
        return  # the same entry point seen twice (e.g. an editable install on sys.path twice)
    try:
        plugin = ep.load()
    except (Exception, SystemExit) as e:  # a plugin's import must never take the CLI down
        _plugin_error(pm, ep.name, origin, f"failed to import: {_one_line(e)}")
        return
    try:
        pm.register(plugin, name=ep.name)
    except pluggy.PluginValidationError as e:
        # A hookimpl whose arguments are not the hookspec's: a typo, fail loudly.
        details = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
        raise UserError(
            f"plugin {ep.name!r} is invalid: {details}; fix the plugin, or leave it out"
            f" with {PLUGINS_ENV}=<the plugins you want>"
        ) from None
    except ValueError as e:  # the same module registered under another name
        _plugin_error(pm, ep.name, origin, _one_line(e))
        return
    pm.origins[ep.name] = origin


def _plugin_error(pm: PluginManager, name: str, origin: PluginOrigin, message: str) -> None:
    pm.errors[name] = message
    pm.origins.setdefault(name, origin)
    where = f" ({origin.dist} {origin.version})" if origin.dist else ""
    log.warning("autoresearch: plugin %r%s %s; it is skipped", name, where, message)


def _entry_points() -> list[tuple[metadata.EntryPoint, PluginOrigin]]:
    """Every entry point of the group, from every distribution on sys.path.

    `metadata.entry_points()` keeps only the first distribution of a name, so a
    stale `autoresearch.egg-info` in the working directory would hide the
    installed built-ins; reading all of them and dropping repeats avoids that.
    """
    seen: set[tuple[str, str]] = set()
    found = []
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP and (ep.name, ep.value) not in seen:
                seen.add((ep.name, ep.value))
                origin = PluginOrigin(dist.metadata["Name"], dist.version, _is_builtin(ep))
                found.append((ep, origin))
    return found


def _is_builtin(ep: metadata.EntryPoint) -> bool:
    return ep.value.split(":")[0].startswith(BUILTIN_PACKAGE + ".")


def _normalise(name: str) -> str:
    """PEP 503 normalisation, so `My_Plugin` selects `my-plugin`."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _is_hookspec(name: str) -> bool:
    return hasattr(getattr(hookspecs, name), "autoresearch_spec")


def call_each(pm: PluginManager, hook: str, **kwargs: Any) -> None:
    """Call every implementation of `hook` in registration order, isolating failures.

    pluggy's own call stops at the first exception; for register and notify
    hooks one broken plugin must not hide the others, and the failure must
    name the plugin.
    """
    for impl in getattr(pm.hook, hook).get_hookimpls():
        _call_isolated(pm, hook, impl, kwargs)


def _call_isolated(pm: PluginManager, hook: str, impl: Any, kwargs: dict[str, Any]) -> None:
    try:
        # pluggy lets an implementation take a subset of the hookspec's arguments.
        impl.function(*(kwargs[arg] for arg in impl.argnames))
    except UserError:
        raise
    except Exception as e:
        message = f"failed in {hook}: {_one_line(e)}"
        pm.errors[impl.plugin_name] = message
        log.warning("autoresearch: plugin %r %s", impl.plugin_name, message)


# ---------------------------------------------------------------------------
# Registries filled through hooks
# ---------------------------------------------------------------------------


def proposers(pm: PluginManager | None = None) -> dict[str, ProposerSpec]:
    """Every registered proposer by name, built-ins first."""
    pm = pm if pm is not None else get_plugin_manager()
    with pm._lock:
        if pm._proposers is None:
            pm._proposers = _collect_proposers(pm)
        return dict(pm._proposers)


def _collect_proposers(pm: PluginManager) -> dict[str, ProposerSpec]:
    found: dict[str, ProposerSpec] = {}

    def register(plugin: str, name: str, factory: Factory, description: str = "") -> None:
        if not isinstance(name, str) or not PROPOSER_NAME.match(name):
            raise ValueError(f"proposer name {name!r} must match {PROPOSER_NAME.pattern}")
        if not callable(factory):
            raise ValueError(f"the factory of proposer {name!r} is not callable")
        if name in found:
            raise ValueError(f"proposer {name!r} is already registered by {found[name].plugin!r}")
        found[name] = ProposerSpec(name, factory, str(description), plugin)

    for impl in pm.hook.register_proposers.get_hookimpls():
        bound = functools.partial(register, impl.plugin_name)
        _call_isolated(pm, "register_proposers", impl, {"register": bound})
    return found


def check_option_names(proposer: str, options: dict, known: Iterable[str]) -> None:
    """Refuse an option `proposer` does not have, naming the closest one: for plugin authors."""
    known = list(known)
    for key in options:
        if key == "model" and key not in known:  # from `--proposer NAME:MODEL`
            raise UserError(
                f"the {proposer} proposer takes no model part: write --proposer {proposer},"
                f" not {proposer}:{options[key]}"
            )
        if key not in known:
            raise UserError(
                f"unknown option {key!r} for the {proposer} proposer{did_you_mean(key, known)};"
                f" valid options: {', '.join(known)}"
            )


def make_proposer(
    spec: str, options: dict | None = None, pm: PluginManager | None = None
) -> Proposer:
    """The proposer named by `spec` (`name` or `name:model`), made with `options`.

    The part after the first colon reaches the factory as `options["model"]`.
    """
    name, colon, model = spec.strip().partition(":")
    registered = proposers(pm)
    if name not in registered:
        available = ", ".join(sorted(registered)) or "none"
        hint = "" if registered else "; reinstall autoresearch (pip install -e .) for the built-ins"
        raise UserError(
            f"unknown proposer {name!r}{did_you_mean(name, registered)}; available: {available}"
            + hint
        )
    options = dict(options or {})
    if colon:
        if not model:
            raise UserError(f"proposer {spec!r} has an empty model after ':'; write {name}:<model>")
        options["model"] = model
    try:
        proposer = registered[name].factory(options)
    except UserError:
        raise
    except (ValueError, TypeError) as e:
        raise UserError(f"proposer {spec!r}: bad options: {_one_line(e)}") from None
    if not isinstance(proposer, Proposer):
        raise UserError(
            f"proposer {name!r} (plugin {registered[name].plugin!r}) made a"
            f" {type(proposer).__name__}, which has no name and propose(); report it to its author"
        )
    return proposer


def load_data_sources(pm: PluginManager | None = None) -> dict[str, Any]:
    """Hand the data sources that plugins register through `register_data_sources` to the
    harness's registry (`harness.sources.SOURCES`); return them by name.

    The harness knows its built-ins by itself and never loads plugins, so a command that
    resolves `data.source` calls this first for the sources of third-party plugins."""
    from autoresearch.harness import sources  # pyarrow: only when data is actually needed

    pm = pm if pm is not None else get_plugin_manager()
    found: dict[str, Any] = {}

    def register(source: Any) -> None:
        missing = [a for a in ("name", "description", "fetch") if not hasattr(source, a)]
        if missing:
            raise ValueError(f"data source {source!r} has no {', '.join(missing)}")
        found[source.name] = source
        sources.register_source(source)

    call_each(pm, "register_data_sources", register=register)
    return found


def notify_experiment_finished(record: Any, pm: PluginManager | None = None) -> None:
    """Tell every plugin that `record` was stored; a failing notifier is logged, never raised."""
    call_each(pm if pm is not None else get_plugin_manager(), "experiment_finished", record=record)


def add_plugin_commands(cli: Any, pm: PluginManager | None = None) -> None:
    """Let plugins add click commands to `cli`; they cannot replace its own commands.

    Runs while `autoresearch.cli` is imported, before its one-line error
    handling is active, so a broken plugin is logged here; the commands that
    need plugins raise the same error properly when they run.
    """
    try:
        pm = pm if pm is not None else get_plugin_manager()
    except UserError as e:
        log.warning("autoresearch: %s", e)
        return
    own = dict(cli.commands)
    call_each(pm, "register_commands", cli=cli)
    for name, command in own.items():
        if cli.commands.get(name) is not command:
            log.warning("autoresearch: a plugin's %r command is ignored: the name is taken", name)
            cli.commands[name] = command


def plugin_info(pm: PluginManager | None = None) -> list[dict[str, Any]]:
    """One dict per plugin: name, version, builtin, hooks, proposers, error."""
    pm = pm if pm is not None else get_plugin_manager()
    by_plugin: dict[str, list[str]] = {}
    for spec in proposers(pm).values():
        by_plugin.setdefault(spec.plugin, []).append(spec.name)
    rows = []
    names: Iterable[str] = [name for name, _ in pm.list_name_plugin()]
    for name in [*names, *(n for n in pm.errors if not pm.has_plugin(n))]:
        origin = pm.origins.get(name, PluginOrigin(None, None, False))
        plugin = pm.get_plugin(name)
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or []) if plugin else []
        rows.append(
            {
                "name": name,
                "version": origin.version,
                "builtin": origin.builtin,
                "hooks": hooks,
                "proposers": sorted(by_plugin.get(name, [])),
                "error": pm.errors.get(name),
            }
        )
    rows.sort(key=lambda row: (not row["builtin"], row["name"]))
    return rows


def format_plugins(rows: list[dict[str, Any]]) -> str:
    """`plugin_info()` as a plain table, with any error under its plugin."""
    header = ("plugin", "version", "hooks", "proposers")
    table = [header] + [
        (
            row["name"],
            row["version"] or "-",
            ", ".join(row["hooks"]) or "-",
            ", ".join(row["proposers"]) or "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    for line, row in zip(table, [None, *rows], strict=True):
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        lines.append("  ".join(cells).rstrip())
        if row and row["error"]:
            lines.append(f"  error: {row['error']}")
    return "\n".join(lines)
