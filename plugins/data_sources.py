"""The built-in data sources, registered through the same hook a third party uses.

The harness has them without any plugin (it resolves the cache paths of a run where no
plugin is loaded); registered here too, they are listed with the plugins and take the
path a third party's source takes.
"""

from __future__ import annotations

from autoresearch import hookimpl


@hookimpl
def register_data_sources(register):
    # Imported here, not at the top: the sources need pyarrow, and listing plugins
    # or parsing the command line must not pay for it.
    from autoresearch.harness.sources import BUILTIN_SOURCES

    for source in BUILTIN_SOURCES:
        register(source)
