"""The runtime contract: what every other part agrees on, with no behaviour of its own.

``vocabulary`` (tiers, categories, reward types: codes are list positions, append only),
``schemas`` (HTTP request and response bodies), ``events`` (event, decision and exposure
records as the API takes them and the event store keeps them), ``model_meta`` (what an exported
model says about its inputs, checked before it serves).

May import: pydantic and the standard library only. Imported by every other package.
"""
