"""Convert a released Uni-MoE v1 checkpoint (base + fine-tuned [+ 8e experts] + encoder checkpoints) into a Hub folder.

The original assembles its model at load time (Uni_MoE_*/model/all_builder.py): base weights, then
non_lora_trainables.bin, then the PEFT LoRA adapter merged in, then mm_audio_aligner.bin, then mlp_gates.bin, and
finally the CLIP / Whisper / BEATs towers reloaded from their own files. The 8-expert model adds its experts (stage-2
FFNs + built-in LoRA, one file per global expert) right after the base, loads the towers before non_lora_trainables
and its routers before the merge. This converter replays that order tensor by tensor (last writer wins, LoRA merged as
W += alpha / r * B @ A into the weight present at merge time), checks that every source tensor is used, overwritten
in that order or explicitly dropped, that every target tensor is filled with the right shape, and only then streams
the result into sharded safetensors inside a temporary folder that is moved into place when complete.

The steps live in their own modules: `hub_export.sources` gathers the files, `hub_export.plan` builds the config and
the plan, `hub_export.write` writes the weights, config and code, `hub_export.model_card` the README; this module runs
them in order, pushes the folder to the Hub and is the command line.

Example:
    python -m hub_export.convert --variant speech-4e \\
        --base checkpoints/Uni-MoE-speech-base --finetuned checkpoints/Uni-MoE-speech-e2 \\
        --clip checkpoints/clip-vit-large-patch14-336 --whisper checkpoints/whisper-small \\
        --out build/uni-moe-speech-4e --max-shard-size 5GB --verify
"""

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ._tensors import parse_size
from .errors import ConversionError
from .mapping import VARIANTS
from .model_card import write_model_card
from .output import OutputFolderError, atomic_output_dir, check_output_dir
from .plan import Accounting, plan_release, resolve_dtype, resolve_variant
from .processor_files import find_tokenizer_dir, save_processor_files
from .verify import verify
from .write import write_config_and_code, write_weights


# -- entry points ---------------------------------------------------------------------------------------------------
@dataclass
class ConversionResult:
    out: Path
    config: object
    accounting: Accounting
    num_tensors: int
    total_bytes: int
    source_bytes: int
    seconds: float


def convert(
    variant: str,
    base,
    finetuned,
    clip,
    out,
    whisper=None,
    beats=None,
    experts=None,
    dtype: str = "auto",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    progress: bool = True,
    repo_id: str | None = None,
    license: str = "other",
    log=print,
) -> ConversionResult:
    """Convert one release into a Hub folder at `out` (written atomically). Raises ConversionError on bad input."""
    start = time.perf_counter()
    spec = resolve_variant(variant)
    max_shard_bytes = parse_size(max_shard_size)
    out = Path(out)
    check_output_dir(out, overwrite)  # OutputFolderError before any work
    with plan_release(spec, base, finetuned, clip, whisper, beats, experts) as plan:
        src, targets, acc = plan.sources, plan.targets, plan.accounting
        message = acc.error_message(targets)
        if message:
            raise ConversionError(message)
        out_dtype = resolve_dtype(dtype, src, targets)
        tokenizer_dir = find_tokenizer_dir(Path(base), Path(finetuned))
        source_bytes = sum(f.path.stat().st_size for f in src.files.values())
        log(
            f"Plan for {spec.name}: {len(targets)} target tensors; {acc.used} source tensors used, {acc.superseded} "
            f"overwritten in the original load order, {sum(map(len, acc.dropped.values()))} dropped:"
        )
        for reason, keys in acc.dropped.items():
            log(f"  - dropped {len(keys)} ({reason}), e.g. {keys[0]}")
        with atomic_output_dir(out, overwrite=overwrite, tool="hub_export.convert") as tmp:
            writer = write_weights(tmp, targets, src, out_dtype, max_shard_bytes, progress)
            write_config_and_code(tmp, plan.config, out_dtype, spec)
            save_processor_files(plan.config, tokenizer_dir, tmp)
            num_params = sum(math.prod(s) for s in plan.shapes.values())
            write_model_card(tmp, spec, plan.config, out_dtype, num_params, repo_id, license)
    seconds = time.perf_counter() - start
    log(f"Wrote {out} ({len(writer.names)} shard(s), {writer.total_size / 1e6:.1f} MB) in {seconds:.1f} s")
    return ConversionResult(out, plan.config, acc, len(targets), writer.total_size, source_bytes, seconds)


def push_folder(folder, repo_id: str, endpoint: str | None = None, token: str | None = None, private: bool = False):
    """Upload a converted folder with huggingface_hub (create_repo + upload_folder)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(endpoint=endpoint, token=token)
    where = endpoint or api.endpoint
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model")
    except OfflineModeIsEnabled:
        raise ConversionError(
            f"Cannot push to {repo_id}: the Hub is disabled (HF_HUB_OFFLINE=1). The converted folder {folder} is "
            f"complete; upload it later with `hf upload {repo_id} {folder}` or re-run with --push when online."
        ) from None
    except HfHubHTTPError as error:
        raise ConversionError(
            f"The Hub at {where} refused the upload to {repo_id}: {str(error).splitlines()[0]}. Check the repo id and "
            f"that your token (HF_TOKEN or `hf auth login`) may write to it. The folder {folder} is complete."
        ) from None
    except Exception as error:  # network failures surface as httpx / OS errors
        if _is_connection_error(error):
            raise ConversionError(
                f"Could not reach the Hub at {where} to push {repo_id} ({type(error).__name__}: {error}). Received no "
                f"answer; expected a reachable endpoint. The converted folder {folder} is complete: upload it later "
                f"with `hf upload {repo_id} {folder}` or re-run with --push when online."
            ) from None
        raise


def _is_connection_error(error: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(error)}
    return bool(
        names & {"ConnectError", "ConnectionError", "ConnectTimeout", "ConnectionRefusedError", "gaierror"}
    ) or any(isinstance(e, (ConnectionError, OSError)) for e in _chain(error))


def _chain(error):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert a released Uni-MoE v1 checkpoint into a Hub-ready transformers folder.",
        epilog=__doc__[__doc__.index("Example:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variant", required=True, help=f"one of {sorted(VARIANTS)}")
    parser.add_argument("--base", required=True, help="base checkpoint folder (e.g. Uni-MoE-speech-base)")
    parser.add_argument("--finetuned", required=True, help="fine-tuned folder (e.g. Uni-MoE-speech-e2)")
    parser.add_argument("--experts", help="8e only: the stage-2 expert FFNs folder (Uni-MoE-8e-Experts)")
    parser.add_argument("--clip", required=True, help="clip-vit-large-patch14-336 folder (transformers format)")
    parser.add_argument("--whisper", help="whisper-small folder (transformers format); speech variants")
    parser.add_argument("--beats", help="BEATs_iter3_plus_AS2M.pt; audio variant")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16 or float16")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB or 500MB")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder written by an export command"
    )
    parser.add_argument("--license", default="other", help="model card license id (default: other, research only)")
    parser.add_argument("--push", metavar="ORG/NAME", help="then upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the pushed repo as private")
    parser.add_argument(
        "--verify", action="store_true", help="then compare logits of the converted folder with the source"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = convert(
            args.variant,
            args.base,
            args.finetuned,
            args.clip,
            args.out,
            whisper=args.whisper,
            beats=args.beats,
            experts=args.experts,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            repo_id=args.push,
            license=args.license,
        )
        if args.verify:
            verify(
                result.out, args.variant, args.base, args.finetuned, args.clip, args.whisper, args.beats, args.experts
            )
        if args.push:
            info = push_folder(result.out, args.push, private=args.private)
            print(f"Pushed {result.out} to {args.push}: {info}")
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OutputFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
