"""Entities: who and what features describe."""

from feast import Entity, ValueType

member = Entity(
    name="member",
    join_keys=["member_id"],
    value_type=ValueType.STRING,
    description="A loyalty-program member (the program's own id: 1-64 of [A-Za-z0-9_.:-]).",
)

reward = Entity(
    name="reward",
    join_keys=["reward_id"],
    value_type=ValueType.STRING,
    description="A reward in the catalog.",
)

challenge = Entity(
    name="challenge",
    join_keys=["challenge_id"],
    value_type=ValueType.STRING,
    description="A challenge template (its target is chosen per member).",
)
