"""Root conftest: pytester for the plugin's own tests.

The refusal-probe plugin itself is loaded by its pytest11 entry point (pyproject.toml) whenever
the package is installed, here as in any other project, so it is registered once.
"""

pytest_plugins = ["pytester"]
