"""The hooks a plugin can implement, in the style of pytest and the `llm` tool.

A plugin is a module (or object) with functions decorated by `hookimpl` whose
names are the hook names below. Register-style hooks receive a callback, so a
plugin adds as many things as it likes and never returns anything.
"""

from __future__ import annotations

import pluggy

PROJECT = "autoresearch"  # the pluggy project name and the entry-point group

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_proposers(register):
    """Register proposer factories: register(name, factory, description)."""


@hookspec
def register_commands(cli):
    """Add commands to the autoresearch command line: cli is its click group."""


@hookspec
def register_data_sources(register):
    """Register data sources: register(source) with a DataSource (name, description, fetch)."""


@hookspec
def experiment_finished(record):
    """Called after each experiment is recorded; for notifiers and trackers."""
