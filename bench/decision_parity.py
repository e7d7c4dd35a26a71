"""Do two builds answer alike? Seeded decisions from the real app, dumped as JSON and compared.

A refactor of the request path should change its speed, not its answers. `dump` starts the app
in-process (FastAPI TestClient, the data folder's champions and online store, a fresh event
store, exploration seeded) and asks it for a fixed, seeded set of requests:

- personalized answers for ``--members`` members, some with exclusions or small ``k``;
- cold starts (ids absent from the world);
- ``--repeats`` members asked again, so frequency caps and novelty rules see the first answers.

Every answer is kept except what differs by design between runs (decision ids). `compare`
prints the first differences and exits 1 when any answer differs. To compare two builds, run
this script against the same data folder with each build's code first on ``PYTHONPATH`` (the
dump records which ``serving`` package answered):

    git worktree add /tmp/old <rev>
    export REWARDS_DATA_DIR=$PWD/data REWARDS_MODELS_DIR=$PWD/models  # both builds: same models
    PYTHONPATH=/tmp/old .venv/bin/python bench/decision_parity.py dump --out /tmp/old.json
    .venv/bin/python bench/decision_parity.py dump --out /tmp/new.json
    .venv/bin/python bench/decision_parity.py compare /tmp/old.json /tmp/new.json

Floats are compared with a relative tolerance (``--rtol``, default 1e-9), so a change in
summation order shows as a difference only when it is larger than rounding.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

VOLATILE = ("decision_id",)


def requests(member_ids: np.ndarray, rewards: list[str], n_members: int, n_repeats: int,
             seed: int) -> list[dict[str, Any]]:
    """The seeded request bodies, in the order they are sent."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(member_ids, size=min(n_members, len(member_ids)), replace=False)
    bodies: list[dict[str, Any]] = []
    for i, member in enumerate(chosen.tolist()):
        body: dict[str, Any] = {"member_id": str(int(member))}
        if i % 5 == 1:
            body["exclude"] = rng.choice(rewards, size=3, replace=False).tolist()
        if i % 7 == 2:
            body["k_rewards"], body["k_challenges"] = 1, 1
        bodies.append(body)
    absent = int(member_ids.max()) + 1
    bodies += [{"member_id": str(absent + i)} for i in range(max(2, n_members // 100))]
    bodies += [{"member_id": str(int(m))} for m in chosen[:n_repeats].tolist()]
    return bodies


def dump(out: Path, n_members: int, n_repeats: int, seed: int) -> None:
    from fastapi.testclient import TestClient

    import serving
    from serving.config import ServeSettings, get_store_settings
    from serving.main import create_app

    store = get_store_settings()
    members = pd.read_parquet(store.world_dir / "members.parquet")["member_id"].to_numpy()
    rewards = pd.read_parquet(store.world_dir / "rewards.parquet")["reward_id"].tolist()
    bodies = requests(np.sort(members), rewards, n_members, n_repeats, seed)
    answers = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = ServeSettings(events_url=f"sqlite:///{Path(tmp) / 'events.db'}",
                                 model_poll_seconds=0, seed=seed, auth_disabled=True)
        with TestClient(create_app(store, settings)) as client:
            for body in bodies:
                r = client.post("/v1/recommendations", json=body)
                answer = r.json()
                if isinstance(answer, dict):
                    for key in VOLATILE:
                        answer.pop(key, None)
                answers.append({"request": body, "status": r.status_code, "answer": answer})
                # the next request must see this decision (frequency caps, novelty)
                client.app.state.services.decision_writer.submit([]).result(timeout=10)
    code = str(Path(serving.__file__).parent)
    out.write_text(json.dumps({"seed": seed, "code": code, "answers": answers}, indent=1))
    print(json.dumps({"out": str(out), "code": code, "requests": len(answers),
                      "non_200": sum(a["status"] != 200 for a in answers)}))


def differences(a: Any, b: Any, rtol: float, path: str = "") -> list[str]:
    """Paths where two JSON values differ (floats within ``rtol`` are equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in {'first' if k in a else 'second'}"
               for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], rtol, f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, rtol, f"{path}[{i}]")]
    if isinstance(a, float) or isinstance(b, float):
        if (isinstance(a, int | float) and isinstance(b, int | float)
                and not isinstance(a, bool) and not isinstance(b, bool)
                and math.isclose(a, b, rel_tol=rtol, abs_tol=rtol)):
            return []
    elif a == b:
        return []
    return [f"{path}: {a!r} vs {b!r}"]


def compare(first: Path, second: Path, rtol: float, show: int = 20) -> int:
    a, b = (json.loads(p.read_text()) for p in (first, second))
    if [x["request"] for x in a["answers"]] != [x["request"] for x in b["answers"]]:
        print("the two dumps asked different requests (another seed or data folder?)")
        return 2
    diffs = [f"request {i} ({x['request']}){d}"
             for i, (x, y) in enumerate(zip(a["answers"], b["answers"], strict=True))
             for d in differences(x, y, rtol)]
    print("\n".join(diffs[:show]))
    print(json.dumps({"requests": len(a["answers"]), "differences": len(diffs)}))
    return 1 if diffs else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--members", type=int, default=300)
    d.add_argument("--repeats", type=int, default=150)
    d.add_argument("--seed", type=int, default=11)
    c = sub.add_parser("compare")
    c.add_argument("first", type=Path)
    c.add_argument("second", type=Path)
    c.add_argument("--rtol", type=float, default=1e-9)
    args = parser.parse_args()
    if args.what == "dump":
        dump(args.out, args.members, args.repeats, args.seed)
    else:
        sys.exit(compare(args.first, args.second, args.rtol))


if __name__ == "__main__":
    main()
