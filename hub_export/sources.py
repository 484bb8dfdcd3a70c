"""The files of a release, gathered in the original loader's order.

`gather_sources` checks the folders the command line names, finds every checkpoint file of the variant (base shards,
fine-tuned files, 8e expert files, encoder towers) and opens them lazily as `Sources`: one `TensorFile` per label, the
stages in load order, the LLaVA-style model config and the PEFT adapter config. A missing folder or file is a
`ConversionError` that names the flag and what was expected.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ._tensors import TensorFile
from .errors import ConversionError
from .mapping import EXPERT_FILES_8E, Variant


@dataclass
class Sources:
    """Every file of the conversion, by label, in load order, with the stage (file kind) of each."""

    files: dict = field(default_factory=dict)  # label -> TensorFile
    stages: list = field(default_factory=list)  # [(stage, label)]
    model_config: dict = field(default_factory=dict)
    model_config_path: Path | None = None
    adapter_config: dict | None = None
    expert_files: list = field(default_factory=list)  # 8e: [(global expert, e2 label, stage-2 FFN label)]

    def add(self, stage: str, path: Path, label: str, **kwargs) -> str:
        if label not in self.files:
            self.files[label] = TensorFile(path, label, **kwargs)
        self.stages.append((stage, label))
        return label

    def close(self):
        for f in self.files.values():
            f.close()


def _require_dir(path, flag: str, what: str) -> Path:
    if path is None:
        raise ConversionError(f"{flag} is required: pass the folder of {what}.")
    path = Path(path)
    if not path.is_dir():
        raise ConversionError(f"{flag} {path} is not a folder. Expected the downloaded folder of {what}.")
    return path


def _require_file(folder: Path, name: str, flag: str, what: str) -> Path:
    path = folder / name
    if not path.is_file():
        present = sorted(p.name for p in folder.iterdir())
        raise ConversionError(
            f"{flag} {folder} has no {name} ({what}). Received a folder with: {present[:20]}. Download the missing "
            "file from the release, or point the flag at the right folder."
        )
    return path


def read_json(path: Path) -> dict:
    """A JSON file of the release, or a ConversionError that says to download it again."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not valid JSON ({error}). Download it again.") from None


def base_shards(base: Path) -> list[Path]:
    """The base checkpoint's `pytorch_model-0000X-of-0000N.bin` files, all of them or an error naming the missing."""
    index = base / "pytorch_model.bin.index.json"
    if index.is_file():
        names = sorted(set(read_json(index).get("weight_map", {}).values()))
    else:
        names = sorted(p.name for p in base.glob("pytorch_model*.bin"))
        counts = {int(m[2]) for n in names if (m := re.fullmatch(r"pytorch_model-(\d+)-of-(\d+)\.bin", n))}
        if len(counts) == 1:
            total = counts.pop()
            names = sorted(set(names) | {f"pytorch_model-{i:05d}-of-{total:05d}.bin" for i in range(1, total + 1)})
    if not names:
        raise ConversionError(
            f"--base {base} has no weights: expected pytorch_model-0000X-of-0000N.bin shards (with "
            "pytorch_model.bin.index.json) or pytorch_model.bin. Point --base at the downloaded base checkpoint."
        )
    missing = [n for n in names if not (base / n).is_file()]
    if missing:
        raise ConversionError(
            f"--base {base} is incomplete: missing shard(s) {missing} of the {len(names)} the checkpoint lists. "
            "Download the missing file(s) again."
        )
    return [base / n for n in names]


def gather_sources(variant: Variant, base, finetuned, clip, whisper, beats=None, experts=None) -> Sources:
    base = _require_dir(base, "--base", "the base checkpoint")
    finetuned = _require_dir(finetuned, "--finetuned", "the fine-tuned (e2) checkpoint")
    clip = _require_dir(clip, "--clip", "CLIP ViT-L/14-336 in transformers' format")
    src = Sources()
    try:
        _gather(src, variant, base, finetuned, clip, whisper, beats, experts)
    except BaseException:
        src.close()
        raise
    return src


def _gather(src: Sources, variant, base, finetuned, clip, whisper, beats, experts):
    if variant.deepspeed_moe:
        # their README: "replace the content of config.json with 8config.json" in the shared speech base
        cfg_path = base / "8config.json" if (base / "8config.json").is_file() else finetuned / "config.json"
    else:
        cfg_path = _require_file(finetuned, "config.json", "--finetuned", "the model config")
    src.model_config_path = cfg_path
    src.model_config = read_json(_require_file(cfg_path.parent, cfg_path.name, "--base/--finetuned", "config"))

    adapter_cfg = _require_file(finetuned, "adapter_config.json", "--finetuned", "the PEFT LoRA adapter config")
    src.adapter_config = read_json(adapter_cfg)
    adapter_weights = finetuned / "adapter_model.bin"
    if not adapter_weights.is_file() and (finetuned / "adapter_model.safetensors").is_file():
        adapter_weights = finetuned / "adapter_model.safetensors"
    if not adapter_weights.is_file():
        _require_file(finetuned, "adapter_model.bin", "--finetuned", "the PEFT LoRA adapter weights")

    shards = base_shards(base)
    non_lora = _require_file(finetuned, "non_lora_trainables.bin", "--finetuned", "the non-LoRA trained weights")
    aligner = _require_file(finetuned, "mm_audio_aligner.bin", "--finetuned", "the audio connector")
    gates = finetuned / "mlp_gates.bin"

    def add_base():
        for shard in shards:
            src.add("base", shard, f"base/{shard.name}")

    def add_towers():
        add_tower_file(src, "clip", clip, "--clip", "CLIP")
        if variant.audio == "speech":
            add_tower_file(src, "whisper", _require_dir(whisper, "--whisper", "whisper-small"), "--whisper", "Whisper")
        else:
            if beats is None:
                raise ConversionError(
                    "--beats is required for the audio variant: pass the BEATs checkpoint file (BEATs_iter3_plus_AS2M.pt)."
                )
            src.add("beats", Path(beats), f"beats/{Path(beats).name}", subdict="model")

    if not variant.deepspeed_moe:
        add_base()
        src.add("non_lora_trainables", non_lora, "finetuned/non_lora_trainables.bin")
        src.add("adapter", adapter_weights, f"finetuned/{adapter_weights.name}")
        src.add("mm_audio_aligner", aligner, "finetuned/mm_audio_aligner.bin")
        if gates.is_file():
            src.add("mlp_gates", gates, "finetuned/mlp_gates.bin")
        add_towers()
        return

    experts = _require_dir(experts, "--experts", "the 8e stage-2 expert FFNs (Uni-MoE-8e-Experts)")
    add_base()
    for g in range(variant.num_experts):
        e2 = _require_file(finetuned, f"{g}_mlp_experts.bin", "--finetuned", f"expert {g} with its built-in LoRA")
        ffn = _require_file(experts, f"{EXPERT_FILES_8E[g]}.bin", "--experts", f"the stage-2 FFN of expert {g}")
        e2_label = src.add("expert_lora", e2, f"finetuned/{e2.name}")
        ffn_label = src.add("expert_ffn", ffn, f"experts/{ffn.name}")
        src.expert_files.append((g, e2_label, ffn_label))
    add_towers()
    src.add("non_lora_trainables", non_lora, "finetuned/non_lora_trainables.bin")
    if gates.is_file():
        src.add("mlp_gates", gates, "finetuned/mlp_gates.bin")
    if (finetuned / "fm_adapter.bin").is_file():
        src.add("fm_adapter", finetuned / "fm_adapter.bin", "finetuned/fm_adapter.bin")
    src.add("adapter", adapter_weights, f"finetuned/{adapter_weights.name}")
    src.add("mm_audio_aligner", aligner, "finetuned/mm_audio_aligner.bin")


def add_tower_file(src: Sources, stage: str, folder: Path, flag: str, what: str):
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            src.add(stage, folder / name, f"{stage}/{name}")
            return
    index = [folder / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")]
    for idx in index:
        if idx.is_file():
            for name in sorted(set(read_json(idx)["weight_map"].values())):
                path = folder / name
                if not path.is_file():
                    raise ConversionError(f"{flag} {folder} is incomplete: {name} (listed in {idx.name}) is missing.")
                src.add(stage, path, f"{stage}/{name}")
            return
    raise ConversionError(
        f"{flag} {folder} has no {what} weights: expected model.safetensors or pytorch_model.bin (transformers' "
        "format, as downloaded from the Hub)."
    )
