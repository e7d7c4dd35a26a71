"""How good a model is, measured on held-out data only.

Held-out metrics, off-policy estimates from logged randomized decisions and plots (uplift on
any randomized file lives in ``training.uplift``). Nothing here reads the simulator's hidden
truth: oracle figures are added by ``training.simulate`` when a truth folder exists.

May import: ``training.data``, ``training.models``, ``serving.decisioning``,
``serving.experiments``.
"""
