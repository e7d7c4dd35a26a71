"""Run a local test module's tests again on the production profile.

``reuse("integration/test_api.py")`` loads that module under a private name and returns its
tests, fixtures and helpers; a production module puts them in its own namespace and then
redefines the fixtures that open stores. Pytest resolves fixtures from where a test is
collected, so the same test functions, with the same assertions, run against the servers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]


def reuse(relative: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    path = TESTS / relative
    name = "reused_" + relative.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [n for n in exclude if not hasattr(module, n)]
    if missing:
        raise NameError(f"{relative} has no {missing}: update the exclusions")
    return {k: v for k, v in vars(module).items()
            if not k.startswith("__") and k != "pytestmark" and k not in exclude}
