# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Regenerate the spoken-digit clips of the synthetic suite: training/assets/speech/<digit>_<speaker>.flac.

    apt-get install -y espeak-ng            # Debian's package; the checked-in clips were made with espeak-ng 1.51
    python -m modeling_unimoe.training.make_speech_assets

10 digits ("zero" ... "nine") x 48 speakers. Speaker k is the espeak accent `ACCENTS[k % 8]` with the voice variant
`VARIANTS[(k + k // 24) % 12]` (so all 48 pairs differ), a speed of 125-195 words per minute and a pitch of 25-75
drawn from `numpy.random.default_rng(0)`. espeak-ng's 22.05 kHz output is resampled to 16 kHz (`synthetic_media.resample`),
trimmed to the speech plus 30 ms each side, peak-normalised to 0.9 and stored as 16-bit mono FLAC. `speakers.json`
records each speaker's settings and split (`synthetic_media.SPEECH_SPEAKERS`: 0-15 and 24-47 train, 16-19 validation, 20-23
test), so validation and test clips use accent / variant / speed / pitch combinations that training never hears.

The output is deterministic for a given espeak-ng and libsndfile version (espeak-ng is deterministic; run twice, the
files are byte-identical); another espeak-ng version may change the sound slightly, not the task.
"""

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from .synthetic import NUMBER_WORDS
from .synthetic_media import NUM_SPEAKERS, SAMPLING_RATE, SPEECH_DIR, SPEECH_SPEAKERS, resample


ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")


def speakers() -> list[dict]:
    rng = np.random.default_rng(0)
    split_of = {k: split for split, ks in SPEECH_SPEAKERS.items() for k in ks}
    return [
        {
            "speaker": k,
            "voice": f"{ACCENTS[k % len(ACCENTS)]}+{VARIANTS[(k + k // 24) % len(VARIANTS)]}",
            "speed": int(rng.integers(125, 196)),
            "pitch": int(rng.integers(25, 76)),
            "split": split_of[k],
        }
        for k in range(NUM_SPEAKERS)
    ]


def speak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's rendering of `word`, at 16 kHz, trimmed and peak-normalised (float64)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "clip.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), word],
            check=True,
            capture_output=True,
        )
        wave, rate = soundfile.read(wav, dtype="float64")
    wave = resample(wave, rate, SAMPLING_RATE).astype(np.float64)
    loud = np.flatnonzero(np.abs(wave) > 0.02 * np.abs(wave).max())
    margin = int(0.03 * SAMPLING_RATE)
    wave = wave[max(loud[0] - margin, 0) : loud[-1] + margin]
    return 0.9 * wave / np.abs(wave).max()


def main(out_dir: Path = SPEECH_DIR) -> None:
    version = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True).stdout
    version = version.split(":")[1].split()[0]  # "eSpeak NG text-to-speech: 1.51  Data at: ..." -> "1.51"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = speakers()
    for entry in table:
        for digit, word in enumerate(NUMBER_WORDS):
            wave = speak(word, entry["voice"], entry["speed"], entry["pitch"])
            soundfile.write(out_dir / f"{digit}_{entry['speaker']:02d}.flac", wave, SAMPLING_RATE, subtype="PCM_16")
    manifest = {"espeak_ng": version, "sampling_rate": SAMPLING_RATE, "speakers": table}
    (out_dir / "speakers.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    print(f"wrote {len(table) * len(NUMBER_WORDS)} clips to {out_dir} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
