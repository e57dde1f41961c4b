"""Packaging beside pyproject.toml: the wheel carries the top-level audits/ and fixtures/ folders.

They stay where they are in the repository (the layout is part of the product); the build maps
them into the package as ``refusal_probe/shipped/audits`` and ``refusal_probe/shipped/fixtures``
(``refusal_probe.resources`` finds either), so nothing is copied by hand.
"""

from setuptools import find_packages, setup

SHIPPED = {"refusal_probe.shipped.audits": "audits", "refusal_probe.shipped.fixtures": "fixtures"}

setup(
    packages=[*find_packages(include=["refusal_probe", "refusal_probe.*"]), *SHIPPED],
    package_dir=SHIPPED,
    package_data={
        "refusal_probe": [
            "__init__.pyi",
            "report/templates/*.html",
            "report/templates/*.css",
            "report/*.json",
        ],
        "refusal_probe.shipped.audits": ["*.toml"],
        "refusal_probe.shipped.fixtures": ["*.md", "prompts/**/*", "models/**/*", "redteam/*"],
    },
)
