"""In-process cost of one decision: Recommender.recommend on the data folder's champions.

No HTTP, no stores on the path: the request path's own Python (candidate rows, one onnxruntime
call per model, scoring, rules). Used to compare two builds on one machine, run alternately with
each build's code first on ``PYTHONPATH`` (it imports the layout before and after issue 19), as
in BENCHMARKS.md:

    REWARDS_DATA_DIR=/path/to/data PYTHONPATH=$TREE .venv/bin/python bench/bench_decide.py
"""
import json, time
from datetime import UTC, datetime
from serving.config import get_store_settings, get_serve_settings
try:
    from serving.stores.catalog import load_store_catalog
    from serving.stores.features import open_store, service_feature_names
    from serving.stores.models import ChampionSource, load_onnx
    from serving.decisioning.recommend import Recommender, MemberFacts
    from serving.decisioning.rules import load_rules
    from serving.decisioning.candidates import DIFFICULTY_DERIVED, REWARD_DERIVED
    from serving.batch.scoring import latest_member_features
    build = "new"
except ImportError:
    from serving.recommend import Catalog, Recommender, MemberFacts
    from serving.feature_store import open_store, service_feature_names
    from serving.models import ChampionSource, load_onnx
    from serving.rules import load_rules
    from serving.candidates import DIFFICULTY_DERIVED, REWARD_DERIVED
    from serving.batch import latest_member_features
    load_store_catalog = None  # older builds read the catalog files
    build = "old"
store, serve = get_store_settings(), get_serve_settings()
fs = open_store(store)
src = ChampionSource(store.tracking_uri, store.models)
models = {}
for name, svc, der in (("reward", "propensity_v1", REWARD_DERIVED), ("difficulty", "difficulty_v1", DIFFICULTY_DERIVED)):
    v, p = src.champion(name)
    models[name] = load_onnx(p, service_feature_names(fs, svc), der)
catalog = (load_store_catalog(serve.events(store)) if load_store_catalog
           else Catalog.from_offline(serve.catalog(store), store.features_dir))
rec = Recommender(catalog, load_rules(serve.rules(store)), seed=1)
members = latest_member_features(store.features_dir / "member_features.parquet").sample(2000, random_state=0)
names = [c for c in members.columns if c not in ("member_id", "event_timestamp")]
rows = [{k: float(v) for k, v in zip(names, r)} for r in members[names].itertuples(index=False)]
now = datetime(2026, 4, 1, tzinfo=UTC)
def run():
    t0 = time.perf_counter()
    for i, f in enumerate(rows):
        rec.recommend(MemberFacts(member_id=str(i), features=f, consent=True), models["reward"], models["difficulty"],
                      k_rewards=3, k_challenges=3, channel="app", exclude=set(), now=now, cost_multiplier=1.0)
    return (time.perf_counter() - t0) / len(rows) * 1e6
run()
best = min(run() for _ in range(5))
print(json.dumps({"build": build, "us_per_decide_best_of_5": round(best, 1)}))
