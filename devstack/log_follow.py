"""Following the local stack's function logs: the new complete lines of each ``<log_dir>/*.log`` since the
last read, polled on a thread of its own. The console echo (workers.LogEcho) and the metrics exporter
(metrics.LogTail) both follow the logs this way."""

from __future__ import annotations

import threading
from pathlib import Path


class LogFollower:
    """Calls `poll` every `interval` seconds once started; `new_lines(path)` gives what a poll reads."""

    def __init__(self, log_dir: Path, *, interval: float, name: str) -> None:
        self.log_dir = log_dir
        self.interval = interval
        self._offsets: dict[Path, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        # From the current end: a restarted stack neither replays old logs nor counts them again. A file that
        # appears later is read from its start.
        for path in self.log_dir.glob("*.log"):
            self._offsets[path] = path.stat().st_size
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        raise NotImplementedError

    def logs(self) -> list[Path]:
        return sorted(self.log_dir.glob("*.log"))

    def new_lines(self, path: Path) -> list[str]:
        """The lines written to `path` since the last call, up to its last newline (a line being written is
        read whole at the next call)."""
        offset = self._offsets.get(path, 0)
        try:
            if path.stat().st_size < offset:
                offset = 0  # truncated (a developer emptied it): read it again from its start
            with path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offsets[path] = offset + end + 1
        return data[: end + 1].decode("utf-8", "replace").splitlines()
