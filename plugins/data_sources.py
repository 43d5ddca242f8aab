"""The built-in data sources, registered through the same hook a third party uses."""

from __future__ import annotations

from autoresearch import hookimpl


@hookimpl
def register_data_sources(register):
    # Imported here, not at the top: the sources need pyarrow, and listing plugins
    # or parsing the command line must not pay for it.
    from autoresearch.harness.sources import (
        ClimbMixSource,
        FolderSource,
        StdlibSource,
        TinyStoriesSource,
    )

    for source in (StdlibSource(), ClimbMixSource(), TinyStoriesSource(), FolderSource()):
        register(source)
