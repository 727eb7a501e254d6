"""Package discovery only (everything else is in pyproject.toml).

What runs in the cloud lives at the top level, `functions/`, where a researcher looks for it; it is installed as
the `fedkeeper.functions` package so that a non-editable install still carries the function sources.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["fedkeeper", "fedkeeper.*"]) + ["fedkeeper.functions"],
    package_dir={"fedkeeper.functions": "functions"},
)
