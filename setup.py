"""Packages: setup.cfg's ``find:`` (every package under ``mega_deap/``) plus the top-level ``adapters/``
and its subpackages, installed as ``mega_deap.adapters``. The metadata stays in setup.cfg."""

from setuptools import find_packages, setup

adapters = ["mega_deap." + name for name in find_packages(include=["adapters", "adapters.*"])]
setup(packages=find_packages(include=["mega_deap", "mega_deap.*"]) + adapters)
