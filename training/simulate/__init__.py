"""Synthetic loyalty world: a population of members with hidden traits, and that truth.

``generate/`` writes a world folder (the tables of docs/data_contract.md, and the import files
a program would hand over, in ``program/``) with ``simulate_world(WorldConfig(...), out_dir)``;
``onboard`` imports those files through the product's import path; ``truth`` is the hidden model
outcomes are drawn from. This package is the only reader of a world's hidden truth: ``oracle`` adds figures against
it to a held-out evaluation (training.pipeline calls it only when ``oracle.available(world_dir)``),
``live`` answers the live API as members with those traits would. ``rct`` draws synthetic
randomized campaign files with known effects (``bench/uplift_rct.py`` and the uplift tests).

May import: training.data, training.evaluation, serving (a simulated program talks to the
product through its public paths). Nothing imports it except the pipeline's oracle hook, the
CLI's ``simulate``/``demo``/``experiments simulate-live`` and benchmarks.
"""

from training.simulate.generate.config import WorldConfig
from training.simulate.generate.world import simulate_world

__all__ = ["WorldConfig", "simulate_world"]
