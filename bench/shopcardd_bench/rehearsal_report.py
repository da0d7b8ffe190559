"""The rehearsal's timeline (sampled once a second while the sale runs and drains) and its report:
report.md with every check and figure, timeline.png with claims/s and p99, the outbox and queue
backlog, the store lag, and a mark where each fault happened."""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from .figures import percentile


def runtime_of(env: dict[str, str]) -> Any:
    """The backend's composition root on the rehearsal's settings (to read the gate and store)."""
    from shopcardd_backend.runtime import Runtime
    from shopcardd_backend.settings import Settings

    saved = os.environ.copy()
    os.environ.clear()
    os.environ.update(env)
    try:
        settings = Settings.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Runtime(settings)


class Timeline:
    """Samples of (time, outbox events, messages queued, vouchers stored) once a second."""

    def __init__(self, top: Any, tally: Any, answers: Any) -> None:
        import pymongo

        from .pipeline import StoredProbe

        self.top, self.tally, self.answers = top, tally, answers
        self.runtime = runtime_of(top.env)
        self.mongo: Any = pymongo.MongoClient(top.mongodb_uri, serverSelectionTimeoutMS=2000)
        self.probe = StoredProbe(self.mongo["shopcardd"]["vouchers"], answers)
        self.samples: list[tuple[float, int | None, int | None, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._printed = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.runtime.close()
        self.mongo.close()

    def outbox(self) -> int | None:
        try:
            return len(self.runtime.outbox.read_outbox(limit=5000))
        except Exception:  # a gate mid-failover: no sample, not a failure
            return None

    def queued(self, jobs: tuple[str, ...] = ("persist", "notify", "analytics")) -> int | None:
        from shopcardd_backend.queue.rabbitmq import queue_depth

        for node in self.top.rabbit.nodes:
            if node.proc is None:
                continue
            try:
                return sum(queue_depth(node.url, job) for job in jobs)
            except Exception:  # this node is down or starting: ask the next
                continue
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stored = self.probe()
            except Exception:
                stored = self.probe.stored
            self.samples.append((time.time(), self.outbox(), self.queued(), stored))
            self._stop.wait(1.0)

    def progress(self, elapsed: float, total: float) -> None:
        """One line every 5 s: the phase, claims/s and p99 of the last 5 s, the backlog."""
        if elapsed - self._printed < 5 or not self.samples:
            return
        self._printed = elapsed
        now = time.time()
        with self.tally.lock:
            recent = [a for a in self.tally.attempts if a.at >= now - 5]
        won = [a for a in recent if a.status in (200, 201)]
        _, outbox, queued, stored = self.samples[-1]
        print(
            f"  t={elapsed:4.0f}/{total:g} s  {self.top.phase[:48]:48}  {len(won) / 5:6.0f} claims/s  "
            f"p99 {percentile([a.seconds for a in won], 0.99) * 1000:5.0f} ms  outbox {outbox}  "
            f"queued {queued}  stored {stored}/{len(self.answers.times)}",
            flush=True,
        )


def _per_second(tally: Any, start: float) -> tuple[list[float], list[float], list[float]]:
    buckets: dict[int, list[float]] = defaultdict(list)
    for attempt in tally.attempts:
        if attempt.status in (200, 201):
            buckets[int(attempt.at - start)].append(attempt.seconds)
    seconds = sorted(buckets)
    return (
        [float(s) for s in seconds],
        [float(len(buckets[s])) for s in seconds],
        [percentile(buckets[s], 0.99) * 1000 for s in seconds],
    )


def plot(path: Path, timeline: Timeline, start: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .pipeline import store_lags

    fig, (rate, backlog, lag) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    xs, per_second, p99 = _per_second(timeline.tally, start)
    rate.plot(xs, per_second, label="claims answered/s", color="tab:blue")
    rate.set_ylabel("claims/s")
    twin = rate.twinx()
    twin.plot(xs, p99, label="p99 ms", color="tab:red", linewidth=0.8)
    twin.set_ylabel("p99 ms")
    times = [s[0] - start for s in timeline.samples]
    backlog.plot(
        times, [s[1] if s[1] is not None else float("nan") for s in timeline.samples], label="outbox"
    )
    backlog.plot(
        times, [s[2] if s[2] is not None else float("nan") for s in timeline.samples], label="queued"
    )
    backlog.set_ylabel("events")
    backlog.legend(loc="upper left")
    samples = [(s[0], s[3]) for s in timeline.samples]
    lags = store_lags(timeline.answers.times, samples)
    answered = [t - start for t in timeline.answers.times[: len(lags)]]
    lag.plot(answered, [x * 1000 for x in lags], ",", color="tab:green")
    lag.set_ylabel("claim -> stored ms")
    lag.set_xlabel("seconds since the sale opened")
    for when, what in timeline.top.marks:
        for axis in (rate, backlog, lag):
            axis.axvline(when - start, color="grey", linewidth=0.6, linestyle="--")
        rate.annotate(what[:40], (when - start, 0), rotation=90, fontsize=6, va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    folder: Path,
    checks: Any,
    top: Any,
    timeline: Timeline,
    faults: list[Any],
    args: argparse.Namespace,
    passed: int,
    failed: int,
) -> None:
    start = next((when for when, what in top.marks if what == "sale open"), time.time())
    plot(folder / "timeline.png", timeline, start)
    lines = [
        "# Rehearsal report",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: `shopcardd-bench rehearsal --seconds {args.seconds} "
        f"--api {args.api} --in-flight {args.in_flight}`, load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        f"**{passed} passed, {failed} failed**",
        "",
        "## Checks and figures",
        "",
        *[f"- {line}" for line in checks.lines],
        "",
        "## Faults (as scheduled, seconds after the sale opened)",
        "",
        *[f"- t+{fault.at:.1f} s: {fault.what}" for fault in faults],
        "",
        "## What happened (marks on the timeline)",
        "",
        *[f"- t+{when - start:.1f} s: {what}" for when, what in top.marks],
        "",
        "## Answers other than 2xx/409",
        "",
        *(checks.errors or ["none"]),
        "",
        "![timeline](timeline.png)",
        "",
    ]
    (folder / "report.md").write_text("\n".join(lines))
