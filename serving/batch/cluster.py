"""A Dask client for the scale-out engines (batch scoring here, LightGBM training in training/).

The same code runs on a throwaway LocalCluster (tests, one machine) and on any running
scheduler (``REWARDS_DASK_SCHEDULER`` or ``--scheduler tcp://host:8786``): only the address
changes. Dask is imported lazily: the API never needs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed import Client


#: Local workers keep their data in memory: a LightGBM training task holds its network socket
#: as a task result, which cannot be pickled, so spilling it to disk fails the fit (seen at 1M
#: members with 4 GiB workers). Workers still pause and are restarted near their limit.
_NO_SPILL = {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False}


@contextmanager
def dask_client(address: str | None = None, n_workers: int = 2, threads_per_worker: int = 1,
                processes: bool = True, memory_limit: str = "auto") -> Iterator[Client]:
    """Connect to ``address``, or start a LocalCluster that is closed on exit.

    Local workers default to one thread each so that LightGBM and onnxruntime inside them do
    not oversubscribe the cores (they are told the worker's thread count), and to an equal
    share of the machine's memory ("auto"), since client and workers share one machine.
    """
    import dask
    from distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            yield client
        return
    with dask.config.set(_NO_SPILL), LocalCluster(
            n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
            memory_limit=memory_limit, dashboard_address=None, host="127.0.0.1") as cluster, \
            Client(cluster) as client:
        yield client


def worker_threads(client: Client) -> int:
    """Threads of the smallest worker: what one task may use without oversubscribing it."""
    threads = client.nthreads()
    if not threads:
        raise RuntimeError("the Dask cluster has no workers")
    return max(1, min(threads.values()))
