"""Uplift modelling on any randomized dataset: checks, learners, policy, report."""
