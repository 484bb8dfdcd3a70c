"""Write a complete Hub folder for a randomly initialised Uni-MoE model of a named preset.

Example:
    python -m hub_export.build --preset tiny --out build/uni-moe-tiny-random --check

`--overwrite` replaces only a folder an export command of this package wrote (see `hub_export.output`); any other
existing folder, the current folder, its ancestors, the home folder and the repository root are refused with a
one-line error (exit status 2).
"""

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM
from modeling_unimoe.configuration_unimoe import PRESETS
from modeling_unimoe.processing.export import add_custom_pipeline, save_tiny_processor

from .output import OutputFolderError, atomic_output_dir, check_output_dir


def build(preset: str, out: str | Path, seed: int = 0, max_shard_size: str = "2GB", overwrite: bool = False) -> Path:
    """Build the preset with random weights (seeded) and save it as a Hub folder at `out`.

    The `tiny` preset also gets its processor (own BPE tokenizer, chat template) and the custom pipeline; the released
    presets use the LLaMA tokenizer, which `hub_export.convert` takes from the release.
    """
    check_output_dir(out, overwrite)  # before the model is built: a released preset takes minutes
    config = UniMoEConfig.from_preset(preset)
    torch.manual_seed(seed)
    model = UniMoEForCausalLM(config)
    with atomic_output_dir(out, overwrite=overwrite, tool="hub_export.build") as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if preset == "tiny":
            save_tiny_processor(config, tmp)
            add_custom_pipeline(tmp)
    return Path(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-size", default="2GB")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder written by an export command"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="then load the folder through the Auto classes with trust_remote_code in a fresh process and generate",
    )
    args = parser.parse_args(argv)
    try:
        out = build(
            args.preset, args.out, seed=args.seed, max_shard_size=args.max_shard_size, overwrite=args.overwrite
        )
    except OutputFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    if args.check:
        return subprocess.run([sys.executable, "-m", "hub_export.check", str(out)]).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
