"""Refusing a long audio file: time and peak memory of the processor's header check against decoding the file.

    python -m benchmarks.media_limits [--minutes 60] [--runs 3]

The file is the case from the field: silence, 48 kHz stereo FLAC (one hour is 673 KB on disk and 1.4 GB as float32
samples), written once into a temporary folder. Each measurement runs in a fresh interpreter that first imports the
processor and loads `checkpoints/uni-moe-tiny`'s processor (the same setup for every row), then resets its peak-RSS
mark (Linux `/proc/self/clear_refs`), makes the one call and reports the call's wall time and its peak RSS above the
RSS just before the call. Rows:

- *processor, sound path*: `processor(text="<sound>", sound=file)`, refused with `TooManyChunksError` (its header
  says 3600 s; the tiny checkpoint takes 20 chunks of 3 s);
- *processor, speech path*: `processor(text="<audio>", audio=file)`, refused with `PromptTooLongError` (more than
  its context of 2048 tokens holds);
- *peer: soundfile.read*: `soundfile.read(file, dtype="float32")`, the whole file decoded (what any decode-then-check
  path has to do first; the processor's earlier path did that and then resampled and chunked it).

Ratios are ours / peer: below 1 is less time or memory than decoding. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "uni-moe-tiny"
ROWS = {
    "sound": "processor, sound path (refused)",
    "speech": "processor, speech path (refused)",
    "peer": "peer: soundfile.read of the whole file",
}

CHILD = r"""
import json, re, sys, time
case, path, checkpoint = sys.argv[1:4]
import numpy, soundfile
from modeling_unimoe.processing.media_unimoe import UniMoEProcessingError
from modeling_unimoe.processing.processing_unimoe import UniMoEProcessor

processor = UniMoEProcessor.from_pretrained(checkpoint)

def status(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # the peak mark (VmHWM) restarts from the current RSS
outcome = "decoded"
start = time.perf_counter()
try:
    if case == "peer":
        data, rate = soundfile.read(path, dtype="float32")
        outcome = f"decoded {data.shape[0]} x {data.shape[1]} samples"
    else:
        processor(text="<sound>" if case == "sound" else "<audio>", **{"sound" if case == "sound" else "audio": path})
except UniMoEProcessingError as error:
    outcome = type(error).__name__
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_above": status("VmHWM") - before, "before": before, "outcome": outcome}))
"""


def write_silence(path: Path, minutes: int, rate: int = 48_000) -> None:
    import numpy as np
    import soundfile

    block = np.zeros((rate * 60, 2), np.int16)
    with soundfile.SoundFile(str(path), "w", samplerate=rate, channels=2, format="FLAC") as out:
        for _ in range(minutes):
            out.write(block)


def measure(case: str, path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, case, str(path), str(CHECKPOINT)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    if proc.returncode:
        raise RuntimeError(f"{case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=60, help="length of the silent FLAC (default 60)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per row (default 3, interleaved)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "silence.flac"
        write_silence(path, args.minutes)
        size = path.stat().st_size
        results = {case: [] for case in ROWS}
        for _ in range(args.runs):
            for case in ROWS:
                results[case].append(measure(case, path))
    peer_time = statistics.median(r["seconds"] for r in results["peer"])
    peer_peak = max(r["peak_above"] for r in results["peer"])
    print(
        f"{args.minutes} min of silence, 48 kHz stereo FLAC, {size / 1e3:.0f} KB; {args.runs} fresh processes per "
        f"row; RSS before the call (imports + processor): {results['sound'][0]['before'] / 2**20:.0f} MB\n"
    )
    print("| call | outcome | time (median) | peak RSS above before (max) | time / peer | peak / peer |")
    print("|---|---|---|---|---|---|")
    for case, label in ROWS.items():
        seconds = statistics.median(r["seconds"] for r in results[case])
        peak = max(r["peak_above"] for r in results[case])
        print(
            f"| {label} | {results[case][0]['outcome']} | {seconds * 1e3:.1f} ms | {peak / 2**20:.1f} MB | "
            f"{seconds / peer_time:.4f} | {peak / max(peer_peak, 1):.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
