"""Peak memory of the whole machine during a benchmark (shared by the bench scripts)."""

from __future__ import annotations

from pathlib import Path


class MachineMemory:
    """Peak memory in use on the whole machine (MemTotal - MemAvailable, sampled every 0.5 s):
    the client, the workers and any child process together, which no single RSS shows."""

    def __init__(self) -> None:
        import threading

        self.peak_gib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            info = {k: int(v.split()[0]) for k, v in (
                line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())}
            used = (info["MemTotal"] - info["MemAvailable"]) / 2**20
            self.peak_gib = max(self.peak_gib, used)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak_gib, 1)
