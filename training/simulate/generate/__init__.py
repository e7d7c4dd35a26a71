"""How a synthetic world is generated: its catalog, members, daily engagement and the
randomized offer and challenge logs, written as the tables of docs/data_contract.md.

May import: ``training.simulate.truth`` (outcomes are drawn from the hidden model) and
``serving.contract``. Nothing outside ``training.simulate`` imports these modules directly:
``training.simulate`` exposes ``WorldConfig`` and ``simulate_world``.
"""
