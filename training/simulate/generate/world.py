"""`simulate_world`: write one synthetic loyalty world (see docs/data_contract.md).

Members and their traits are drawn once; engagement, offers and assignments are then generated
in member chunks and appended to parquet files, so memory stays flat as `members` grows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from training.simulate.generate.catalog import (
    CATEGORIES,
    EVENT_TYPES,
    VOCABULARY,
    challenge_catalog,
    reward_catalog,
)
from training.simulate.generate.config import DAY_US, WorldConfig
from training.simulate.generate.engagement import (
    background_purchases,
    daily_visits,
    visit_and_social_events,
)
from training.simulate.generate.logs import (
    AssignmentLog,
    ChallengeArrays,
    DecisionGrid,
    OfferLog,
    simulate_assignments,
    simulate_offers,
)
from training.simulate.generate.members import sample_members
from training.simulate.generate.program import IMPORT_EVENTS_SCHEMA, program_events
from training.simulate.generate.tables import (
    ASSIGNMENTS_SCHEMA,
    EVENTS_SCHEMA,
    OFFERS_SCHEMA,
    TIMESTAMP,
    TRUTH_ASSIGNMENTS_SCHEMA,
    TRUTH_OFFERS_SCHEMA,
    EventColumns,
    ParquetSink,
)
from training.simulate.truth import PREF_COLUMNS, MemberArrays, RewardArrays, response_arrays

# Part of the generator (changing it changes the output for a seed), not a tuning knob.
CHUNK_MEMBERS = 20_000

_MEMBER_STREAM, _CHUNK_STREAM = 0, 1
#: Sub-folder of the world holding its import files (members, events, catalog).
PROGRAM_DIR = "program"

MEMBERS_SCHEMA = pa.schema(
    [
        ("member_id", pa.int64()),
        ("signup_date", TIMESTAMP),
        ("tier", pa.string()),
        ("region", pa.string()),
        ("consent", pa.bool_()),
    ]
)
PROGRAM_MEMBERS_SCHEMA = pa.schema(
    [
        ("member_id", pa.string()),
        ("joined_at", TIMESTAMP),
        ("tier", pa.string()),
        ("region", pa.string()),
        ("consent", pa.bool_()),
    ]
)
TRAITS_SCHEMA = pa.schema(
    [
        ("member_id", pa.int64()),
        ("player_type", pa.string()),
        ("price_sensitivity", pa.float64()),
        ("activity", pa.float64()),
        ("skill", pa.float64()),
        *[(column, pa.float64()) for column in PREF_COLUMNS],
    ]
)
REWARDS_SCHEMA = pa.schema(
    [
        ("reward_id", pa.string()),
        ("name", pa.string()),
        ("reward_type", pa.string()),
        ("category", pa.string()),
        ("cost", pa.float64()),
        ("min_tier", pa.string()),
        ("event_timestamp", TIMESTAMP),
    ]
)
CHALLENGES_SCHEMA = pa.schema(
    [
        ("challenge_id", pa.string()),
        ("name", pa.string()),
        ("kind", pa.string()),
        ("unit", pa.string()),
        ("duration_days", pa.int64()),
        ("min_target", pa.float64()),
        ("max_target", pa.float64()),
        ("target_step", pa.float64()),
        ("points", pa.int64()),
        ("event_timestamp", TIMESTAMP),
    ]
)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent generator per (seed, stream...), stable across numpy sessions."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=stream))


def _write_frame(frame: pd.DataFrame, schema: pa.Schema, path: Path) -> int:
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


class _WorldWriter:
    """The chunked outputs of a world, with running ids and row counts."""

    def __init__(self, out_dir: Path) -> None:
        self.events = ParquetSink(out_dir / "events.parquet", EVENTS_SCHEMA)
        self.offers = ParquetSink(out_dir / "offers.parquet", OFFERS_SCHEMA)
        self.assignments = ParquetSink(out_dir / "assignments.parquet", ASSIGNMENTS_SCHEMA)
        # What a real program would import: the product reads the world only through these.
        self.program_events = ParquetSink(out_dir / PROGRAM_DIR / "events.parquet",
                                          IMPORT_EVENTS_SCHEMA)
        self.truth_offers = ParquetSink(out_dir / "truth" / "offers.parquet", TRUTH_OFFERS_SCHEMA)
        self.truth_assignments = ParquetSink(
            out_dir / "truth" / "assignments.parquet", TRUTH_ASSIGNMENTS_SCHEMA
        )

    def sinks(self) -> dict[str, ParquetSink]:
        return {
            "events": self.events,
            "offers": self.offers,
            "assignments": self.assignments,
            f"{PROGRAM_DIR}/events": self.program_events,
            "truth/offers": self.truth_offers,
            "truth/assignments": self.truth_assignments,
        }

    def close(self) -> None:
        for sink in self.sinks().values():
            sink.close()


def simulate_world(config: WorldConfig, out_dir: Path, progress: bool = True) -> dict[str, int]:
    """Simulate a world into `out_dir` and return the row count of every file written.

    Deterministic: the same `config` writes identical files. Keys of the result are the file
    names without `.parquet` (`members`, `events`, ..., `truth/offers`, ...).
    """
    out_dir = Path(out_dir)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    (out_dir / PROGRAM_DIR).mkdir(exist_ok=True)
    (out_dir / "world.json").unlink(missing_ok=True)  # a stale one would vouch for this run
    rewards = reward_catalog(config.start)
    challenges = challenge_catalog(config.start)
    member_rng = _rng(config.seed, _MEMBER_STREAM)
    members, traits = sample_members(member_rng, config.members, config.start)

    _write_program_catalog(out_dir / PROGRAM_DIR, rewards, challenges)
    counts = {
        "members": _write_frame(members, MEMBERS_SCHEMA, out_dir / "members.parquet"),
        f"{PROGRAM_DIR}/members": _write_frame(
            program_members(members), PROGRAM_MEMBERS_SCHEMA,
            out_dir / PROGRAM_DIR / "members.parquet"),
        "rewards": _write_frame(rewards, REWARDS_SCHEMA, out_dir / "rewards.parquet"),
        "challenges": _write_frame(challenges, CHALLENGES_SCHEMA, out_dir / "challenges.parquet"),
        "truth/member_traits": _write_frame(
            traits, TRAITS_SCHEMA, out_dir / "truth" / "member_traits.parquet"
        ),
    }
    population = MemberArrays.from_frames(traits, members)
    del members, traits
    reward_arrays = RewardArrays.from_frame(rewards)
    templates = ChallengeArrays.from_frame(challenges)
    reward_ids = rewards["reward_id"].tolist()
    challenge_ids = challenges["challenge_id"].tolist()

    writer = _WorldWriter(out_dir)
    starts = range(0, config.members, CHUNK_MEMBERS)
    try:
        for index, first in enumerate(
            tqdm(starts, desc="simulate", unit="chunk", disable=not progress)
        ):
            chunk = population.subset(slice(first, first + CHUNK_MEMBERS))
            events, offers, assignments = _simulate_chunk(
                _rng(config.seed, _CHUNK_STREAM, index), chunk, reward_arrays, templates, config
            )
            writer.events.write(events.to_table(EVENT_TYPES, CATEGORIES, reward_ids))
            writer.program_events.write(program_events(
                events, EVENT_TYPES, CATEGORIES, reward_ids, challenge_ids,
                writer.program_events.rows,
                _offer_arrays(offers, writer.offers.rows + 1, config),
                _assignment_arrays(assignments, writer.assignments.rows + 1, templates)))
            offer_table, offer_truth = offers.tables(writer.offers.rows + 1, reward_ids)
            writer.offers.write(offer_table)
            writer.truth_offers.write(offer_truth)
            assignment_table, assignment_truth = assignments.tables(
                writer.assignments.rows + 1, challenge_ids
            )
            writer.assignments.write(assignment_table)
            writer.truth_assignments.write(assignment_truth)
    finally:
        writer.close()
    counts.update({name: sink.rows for name, sink in writer.sinks().items()})
    # Written last: a world.json means the world is complete.
    (out_dir / "world.json").write_text(json.dumps(config.to_world_json(), indent=2) + "\n")
    return counts


def _write_program_catalog(folder: Path, rewards: pd.DataFrame, challenges: pd.DataFrame) -> None:
    """The catalog as a program imports it (`rewards catalog import`): vocabulary first."""
    (folder / "vocabulary.json").write_text(json.dumps(VOCABULARY.as_dict(), indent=2) + "\n")
    for frame, name in ((rewards, "rewards"), (challenges, "challenges")):
        frame.rename(columns={"event_timestamp": "created_at"}).to_parquet(
            folder / f"{name}.parquet", index=False)


def program_members(members: pd.DataFrame) -> pd.DataFrame:
    """The members import file: string ids and the profile a program keeps."""
    return pd.DataFrame({"member_id": members["member_id"].astype(str),
                         "joined_at": members["signup_date"], "tier": members["tier"],
                         "region": members["region"], "consent": members["consent"]})


def _offer_arrays(offers: OfferLog, first_id: int, config: WorldConfig) -> dict[str, np.ndarray]:
    n = offers.ts.size
    return {"id": np.arange(first_id, first_id + n), "member_id": offers.member_id,
            "ts": offers.ts, "end": offers.ts + config.attribution_window_days * DAY_US,
            "reward": offers.reward, "treated": offers.treated,
            "propensity": offers.propensity}


def _assignment_arrays(assignments: AssignmentLog, first_id: int,
                       templates: ChallengeArrays) -> dict[str, np.ndarray]:
    n = assignments.ts.size
    return {"id": np.arange(first_id, first_id + n), "member_id": assignments.member_id,
            "ts": assignments.ts,
            "end": assignments.ts + templates.duration_days[assignments.template] * DAY_US,
            "template": assignments.template, "target": assignments.target,
            "propensity": np.broadcast_to(assignments.propensity, (n,))}


def _simulate_chunk(
    rng: np.random.Generator,
    m: MemberArrays,
    rewards: RewardArrays,
    templates: ChallengeArrays,
    config: WorldConfig,
) -> tuple[EventColumns, OfferLog, AssignmentLog]:
    """Engagement, offer log and assignment log of one chunk of members."""
    start_us, days = config.start_us, config.days
    window = config.attribution_window_days
    parts = visit_and_social_events(rng, m, daily_visits(rng, m, days), start_us)

    offer_grid = DecisionGrid.draw(rng, len(m), days, config.offer_interval_days, window, start_us)
    response = response_arrays(m, rewards, config.margin, window)
    offers, offer_events = simulate_offers(rng, m, rewards, response, offer_grid, config)
    parts += offer_events

    background = background_purchases(rng, m, days, start_us, window)
    rows = np.searchsorted(m.member_id, background.member_id)
    outside = ~offer_grid.covers(rows, background.ts, window * DAY_US)
    # Inside attribution windows purchases come from the offer outcome, not the background.
    parts.append(background.select(outside))

    assignment_grid = DecisionGrid.draw(
        rng, len(m), days, config.challenge_interval_days, int(templates.duration_days.max()),
        start_us,
    )
    assignments, completions = simulate_assignments(rng, m, templates, assignment_grid)
    parts.append(completions)
    return EventColumns.concat(parts), offers, assignments
