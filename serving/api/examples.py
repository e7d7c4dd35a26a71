"""Example request bodies, published in the OpenAPI document (``/docs`` shows them).

They are part of the contract: the unit tests check each one against the published schema and
the server's model, and the contract fuzzer sends them first (its examples phase), so the
success paths that random data rarely reaches (an experiment whose arm shares sum to 1) are
exercised too.
"""

from __future__ import annotations

from typing import Any

from fastapi.openapi.models import Example


def _examples(**bodies: tuple[str, Any]) -> dict[str, Example]:
    return {name: Example(summary=summary, value=value)
            for name, (summary, value) in bodies.items()}


RECOMMENDATION = _examples(
    app=("a member opening the app", {"member_id": "M-000172"}),
    email=("an email with two rewards and one challenge, for a member without history yet",
           {"member_id": "6f1c2b9e-8a2d-4a47-9d4e-1b2c3d4e5f60", "channel": "email",
            "k_rewards": 2, "k_challenges": 1, "context": {"tier": "Gold"},
            "exclude": ["R01"]}),
)
BATCH = _examples(
    campaign=("a CRM campaign", {"member_ids": ["M-000172", "M-000173", "42"],
                                 "channel": "crm", "k_rewards": 1, "k_challenges": 0}),
)
EVENTS = _examples(
    journey=("a member's day: a visit, an offer shown, a purchase using it, points", {
        "events": [
            {"event_id": "ev-1001", "event_type": "visit", "member_id": "M-000172",
             "timestamp": "2026-03-02T09:00:00Z"},
            {"event_id": "ev-1002", "event_type": "impression", "member_id": "M-000172",
             "timestamp": "2026-03-02T09:00:05Z", "reward_id": "R01",
             "decision_id": "d-7f3a", "propensity": 0.8},
            {"event_id": "ev-1003", "event_type": "purchase", "member_id": "M-000172",
             "timestamp": "2026-03-02T09:20:00+01:00", "amount": 54.9, "category": "home",
             "quantity": 2, "reward_id": "R01", "decision_id": "d-7f3a",
             "properties": {"store": "Lyon 2"}},
            {"event_id": "ev-1004", "event_type": "points_earned", "member_id": "M-000172",
             "timestamp": "2026-03-02T09:20:00+01:00", "points": 55},
        ]}),
    challenge=("a challenge offered, progressed and completed", {
        "events": [
            {"event_id": "ev-2001", "event_type": "impression", "member_id": "M-000173",
             "timestamp": "2026-03-02T10:00:00Z", "challenge_id": "C03", "target": 3.0},
            {"event_id": "ev-2002", "event_type": "challenge_progress", "member_id": "M-000173",
             "timestamp": "2026-03-04T18:00:00Z", "challenge_id": "C03", "value": 2.0},
            {"event_id": "ev-2003", "event_type": "challenge_completed",
             "member_id": "M-000173", "timestamp": "2026-03-05T12:00:00Z",
             "challenge_id": "C03", "points": 100},
        ]}),
    history=("an old history: a tier change in 1997, then consent withdrawn", {
        "events": [
            {"event_id": "h-1997-1", "event_type": "tier_change", "member_id": "42",
             "timestamp": "1997-06-30T23:59:59-04:00", "tier": "Silver"},
            {"event_id": "h-1997-2", "event_type": "redemption", "member_id": "42",
             "timestamp": "1997-07-02T10:00:00-04:00", "reward_id": "R05", "cost": 4.5,
             "points": -200},
            {"event_id": "h-2026-3", "event_type": "consent_withdrawn", "member_id": "42",
             "timestamp": "2026-01-15T08:00:00Z"},
        ]}),
)
MEMBER = _examples(
    profile=("a member's profile from the CRM", {
        "joined_at": "2019-05-01", "tier": "Gold", "region": "north", "consent": True,
        "attributes": {"birth_year": 1980, "newsletter": False, "home_store": "Lyon 2"}}),
)
EXPERIMENT = _examples(
    holdout=("80 % personalized, 20 % held out, for a month", {
        "name": "Spring uplift", "arms": [{"name": "model", "share": 0.8},
                                          {"name": "holdout", "share": 0.2}],
        "start": "2026-03-01T00:00:00Z", "end": "2026-04-01T00:00:00Z",
        "primary_metric": "redemption", "attribution_window_days": 7}),
)
