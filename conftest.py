"""Root conftest: registers the refusal-probe plugin for `pytest audits/` and `pytest tests/`.

The plugin is registered here only (pyproject declares no pytest11 entry point, so it is never
loaded twice). Outside this repository use ``pytest -p refusal_probe.pytest_plugin.plugin``.
"""

pytest_plugins = ["refusal_probe.pytest_plugin.plugin", "pytester"]
