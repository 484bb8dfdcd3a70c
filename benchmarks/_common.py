"""Shared helpers of the speed benchmarks: machine facts, interleaved timing, markdown tables."""

import contextlib
import datetime
import fcntl
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers


def fix_threads(threads: int | None = None) -> int:
    """Pin torch's intra-op threads (default: what torch picked for this machine) so every peer gets the same."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    return threads


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags) or "no AVX2"
    except OSError:
        pass
    return "?"


def machine_line(threads: int) -> str:
    return (
        f"{os.cpu_count()} cores ({cpu_model()}; {cpu_flags()}), torch {torch.__version__} with {threads} threads, "
        f"transformers {transformers.__version__}, {datetime.date.today().isoformat()}"
    )


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, max_calls: dict[str, int] | None = None, first_round: int = 0
) -> dict[str, list[float]]:
    """Time each callable `rounds` times, interleaved (A B C, B C A, C A B, ...: every peer takes every position in
    the rotation); a peer named in `max_calls` only takes part in its first that-many rounds. Returns the seconds of
    every call."""
    names = list(fns)
    max_calls = max_calls or {}
    times = {name: [] for name in names}
    for r in range(first_round, first_round + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if r >= max_calls.get(name, r + 1):
                continue
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def rounds_for(seconds_per_round: float, budget: float, min_rounds: int, max_rounds: int) -> int:
    return max(min_rounds, min(max_rounds, int(budget / max(seconds_per_round, 1e-6))))


def median(values: list[float]) -> float:
    return statistics.median(values)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def append_markdown(path: str, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else ""
    sep = (
        ""
        if not existing
        else ("\n" if existing.endswith("\n\n") else ("\n\n" if not existing.endswith("\n") else "\n"))
    )
    path.write_text(existing + sep + text.rstrip("\n") + "\n")


def replace_markdown_section(path: str, text: str) -> None:
    """Write `text` (starting with its `## ` header line) into the markdown file at `path`: in place of the section
    with the same header if there is one (up to the next `## ` header), else appended with `append_markdown`."""
    path = Path(path)
    header = text.split("\n", 1)[0].rstrip()
    existing = path.read_text() if path.exists() else ""
    lines = existing.split("\n")
    if header not in lines:
        append_markdown(path, text)
        return
    start = lines.index(header)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    parts = ["\n".join(lines[:start]).strip("\n"), text.strip("\n"), "\n".join(lines[end:]).strip("\n")]
    path.write_text("\n\n".join(part for part in parts if part) + "\n")


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_ticks() -> tuple[int, int]:
    """(busy ticks of the whole machine, ticks of this process), both in clock ticks."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system (idle iowait) irq softirq steal
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime + stime


class OtherLoad:
    """CPU cores kept busy by other processes (everything but this one) between `start()` and `cores()`."""

    def __init__(self):
        self.start()

    def start(self):
        try:
            self._t, (self._busy, self._own) = time.perf_counter(), _cpu_ticks()
        except (OSError, ValueError, IndexError):
            self._t = None

    def cores(self) -> float | None:
        if self._t is None:
            return None
        busy, own = _cpu_ticks()
        seconds = max(time.perf_counter() - self._t, 1e-3)
        return max(0.0, ((busy - self._busy) - (own - self._own)) / _TICK / seconds)


def wait_until_quiet(max_wait: float, threshold: float = 0.15, sample: float = 0.5, log=print) -> float | None:
    """Wait (at most `max_wait` s) until other processes use less than `threshold` cores over a `sample`-second
    window; returns the last measured other-process load."""
    deadline = time.perf_counter() + max_wait
    warned = False
    while True:
        load = OtherLoad()
        time.sleep(sample)
        cores = load.cores()
        if cores is None or cores < threshold or time.perf_counter() >= deadline:
            return cores
        if not warned:
            log(f"other processes are using {cores:.1f} cores; waiting up to {max_wait:.0f} s for a quiet machine")
            warned = True


LOCK_PATH = Path(tempfile.gettempdir()) / "uni-moe-benchmarks.lock"


@contextlib.contextmanager
def machine_lock():
    """Exclusive lock shared by every benchmark using this module: two benchmarks never time at the same time (each
    would see the other as load and throw its rounds away)."""
    with open(LOCK_PATH, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Measurement:
    """Times of interleaved rounds kept by `measure_quietly`, with how disturbed they were."""

    def __init__(self, names):
        self.times = {name: [] for name in names}
        self.kept_rounds = 0
        self.dropped_rounds = 0
        self.busy_seconds = 0.0  # other-process core-seconds during the kept rounds
        self.seconds = 0.0  # wall seconds of the kept rounds

    @property
    def other_cores(self) -> float:
        return self.busy_seconds / self.seconds if self.seconds else 0.0


def measure_quietly(
    steps: dict[str, Callable[[], object]],
    rounds: int,
    max_wait: float,
    max_other: float = 0.25,
    log=print,
    max_calls: dict[str, int] | None = None,
    min_chunk_seconds: float = 2.0,
    give_up_after: float = 1800.0,
) -> Measurement:
    """`interleaved(steps, rounds)` on a quiet machine. Rounds run in chunks of at least `min_chunk_seconds` (one
    round at least); a chunk during which other processes kept more than `max_other` cores busy is thrown away and
    run again once the machine is quiet (waiting at most `max_wait` s each time). After `give_up_after` s of such
    retries disturbed chunks are kept (`other_cores` then shows it). `max_wait=0` keeps every chunk."""
    result = Measurement(steps)
    started = time.perf_counter()
    while result.kept_rounds < rounds:
        with machine_lock():
            if max_wait:
                wait_until_quiet(max_wait, log=log)
            load = OtherLoad()
            chunk_start, first = time.perf_counter(), result.kept_rounds
            chunk = {name: [] for name in steps}
            r = first
            while r < rounds and (r == first or time.perf_counter() - chunk_start < min_chunk_seconds):
                for name, values in interleaved(steps, 1, max_calls, first_round=r).items():
                    chunk[name] += values
                r += 1
            seconds = time.perf_counter() - chunk_start
            other = load.cores() or 0.0
        if max_wait and other > max_other and time.perf_counter() - started < give_up_after:
            result.dropped_rounds += r - first
            log(f"other processes used {other:.2f} cores during {r - first} round(s); running them again")
            time.sleep(random.uniform(0.5, 3.0))  # let whatever disturbed us get ahead
            continue
        for name, values in chunk.items():
            result.times[name] += values
        result.kept_rounds = r
        result.busy_seconds += other * seconds
        result.seconds += seconds
    return result


_PROBE = """
import resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
if proc.returncode:
    sys.stderr.write(proc.stderr)
    sys.exit(proc.returncode)
print(seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def run_probed(cmd: list[str], cwd) -> tuple[float, float]:
    """Run `cmd` under a small probe process: (seconds, peak RSS in bytes of `cmd` alone). ru_maxrss of children is a
    running maximum, and a child spawned straight from a large process starts with its RSS, so every measurement gets
    its own probe. A failing `cmd` raises RuntimeError with the tail of its stderr."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, *cmd], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    seconds, rss = (float(x) for x in proc.stdout.split()[-2:])
    return seconds, rss
