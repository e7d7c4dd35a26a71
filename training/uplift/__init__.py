"""Uplift modelling on any randomized dataset: checks, learners, policy, report.

``rewards uplift evaluate`` in modules named for its steps: ``data`` (read, rows, feature
columns), ``balance`` (leakage and randomization check), ``learners`` (T/S/X/DR/linear and the
plain baselines), ``crossfit`` (out-of-fold scores, choice inside the folds), ``policy`` (best
arm and its value), ``report``/``summary``/``render`` (JSON, terminal, HTML), ``evaluate`` (the
steps in order). Works on a user's file: never reads the simulator's truth.

May import: ``serving.experiments.stats`` (the metric definitions shared with the experiment
reports).
"""
