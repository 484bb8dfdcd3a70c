"""The model card (README.md) of a converted folder: Hub metadata, how to load it, how it was converted and how it
differs from the original."""

from pathlib import Path

from .mapping import Variant
from .processor_files import placeholder_ids


MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

Uni-MoE ([arXiv 2405.11273](https://arxiv.org/abs/2405.11273)): a LLaMA-2-7B / Vicuna language model whose
feed-forward blocks are a mixture of experts, with CLIP (images, video), {{ audio_desc }} towers. This folder is the
released **{{ variant }}** checkpoint ({{ description }}) converted to a single transformers model:
the LoRA adapters are merged, the towers are included and every weight loads with `from_pretrained`.

```python
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("{{ repo_id }}", trust_remote_code=True)
```

## Conversion

Converted with `python -m hub_export.convert --variant {{ variant }}` from{% for name, repo in sources %}
{{ name }} `{{ repo }}`{% if not loop.last %},{% endif %}{% endfor %}, plus the encoder checkpoints the original loads at
run time. The converter replays the original load order (base weights, non-LoRA trainables, LoRA merge
`W += alpha / r * B @ A`, audio connector, routers last{% if deepspeed %}; expert FFNs and their built-in LoRA
before the merge{% endif %}) and checks that every source tensor is used or deliberately dropped.

- Weights: {{ dtype }}, {{ num_params }} parameters.
- Placeholder tokens `<image>`, `<audio>`, `<video>` are added to the vocabulary (ids {{ placeholder_ids }}); the
  original spliced negative ids instead. Their embedding and output rows are the vocabulary mean and `generate()`
  never produces them (the model's default `suppress_tokens`).
- Generation defaults follow the original inference script: sampling at temperature 0.2, up to
  {{ max_new_tokens }} new tokens.

## Differences from the original

- Model: none; the converter's `--verify` compares logits with the original load order (fp32, about 3e-6).
- Preprocessing: the processor reproduces the original's (per-piece prompt tokenization around placeholders,
  480,001-sample speech pieces, sound chunks padded with their last sample, python-soxr resampling at high quality),
  except that a sound longer than 20 chunks is refused unless `truncate_sound=True` (the original keeps the first 20
  chunks without a word) and video frames are decoded directly (the original round-trips them through JPEG).{% if deepspeed %}
- Routing: deterministic top-2. The original's DeepSpeed gate samples the second expert with Gumbel noise
  (`top2_2nd_expert_sampling`, also at inference), so its answers vary between runs; with that sampling off its
  routing equals this model's.{% endif %}

## Evaluation

This checkpoint runs in [lmms-eval](https://github.com/EvolvingLMMs-Lab/lmms-eval) 0.7.3 through the `uni_moe` model
of the uni-moe package (an `lmms_eval.models` entry point). From a clone of the uni-moe repository:

```bash
pip install -e ".[media,quantization]" "lmms-eval==0.7.3" "filelock<4"
lmms-eval --model uni_moe \
    --model_args pretrained={{ repo_id }},max_new_tokens=original \
    --tasks ok_vqa_val2014,vqav2_val,mmbench_en_dev,pope,activitynetqa \
    --batch_size 8 --log_samples --output_path results/
```

Answers are greedy, with the original's vicuna_v1 prompt (the processor's chat template) and, with
`max_new_tokens=original`, its generation lengths (512 new tokens for image questions and sounds, 1024 for video,
speech and text). Add `load_in_4bit=True` or `load_in_8bit=True` to `--model_args` for bitsandbytes loading.
The uni-moe README lists the lmms-eval task of each of the paper's benchmarks and the paper's numbers beside them.

## License

{{ license_note }}
"""

LICENSE_NOTE = (
    "As released by the authors: the checkpoints are intended and licensed for research use only and are restricted "
    "to uses that follow the license agreements of LLaMA and Vicuna (Uni-MoE README, 'Usage and License Notices')."
)


def write_model_card(
    folder: Path, variant: Variant, config, dtype, num_params: int, repo_id: str | None, license: str
):
    """Write `folder/README.md` for the converted `variant` (`repo_id` names the Hub repo in the loading example)."""
    from huggingface_hub import ModelCard, ModelCardData

    hub = variant.hub_ids
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="any-to-any",
        license=license,
        license_name="uni-moe-research-only" if license == "other" else None,
        license_link="https://github.com/HITsz-TMG/UMOE-Scaling-Unified-Multimodal-LLMs"
        if license == "other"
        else None,
        base_model=[hub[k] for k in ("base", "experts", "finetuned") if k in hub],
        tags=["moe", "mixture-of-experts", "multimodal", "custom_code", "uni-moe", "llava", "vision", "audio", "video"]
        + (["speech"] if variant.audio == "speech" else ["sound"]),
    )
    card = ModelCard.from_template(
        card_data,
        template_str=MODEL_CARD_TEMPLATE,
        title=f"Uni-MoE {variant.name} (transformers)",
        variant=variant.name,
        description=variant.description,
        audio_desc="Whisper (speech)" if variant.audio == "speech" else "BEATs (sound events)",
        repo_id=repo_id or f"<org>/uni-moe-{variant.name}",
        sources=[(k, v) for k, v in hub.items()],
        deepspeed=variant.deepspeed_moe,
        dtype=str(dtype).replace("torch.", ""),
        num_params=f"{num_params / 1e9:.2f} B" if num_params > 1e8 else f"{num_params:,}",
        placeholder_ids=", ".join(str(i) for i in placeholder_ids(config).values()),
        max_new_tokens=variant.max_new_tokens,
        license_note=LICENSE_NOTE,
    )
    card.save(folder / "README.md")
