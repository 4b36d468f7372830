"""Maps the layer folders at the repository root to `medagent.<layer>` packages.

Packages are discovered by walking the folders, so a new sub-package can never be silently
dropped from a regular (non-editable) install. `medagent` stays an implicit namespace package.
"""

import os

from setuptools import setup

LAYERS = ("cli", "service", "agent", "tools", "specialists", "evals", "training")

packages = []
for layer in LAYERS:
    for root, dirs, files in os.walk(layer):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        if "__init__.py" in files:
            packages.append("medagent." + root.replace(os.sep, "."))

setup(packages=packages, package_dir={f"medagent.{layer}": layer for layer in LAYERS})
