"""Built-in plugins (installed as `autoresearch.default_plugins`).

Each module here is listed under `[project.entry-points.autoresearch]` in
pyproject.toml and loaded exactly like a third-party plugin; modules that are
not listed there (shared helpers) are not plugins.
"""
