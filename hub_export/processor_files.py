"""The tokenizer and chat-template files of a converted Uni-MoE folder.

`save_processor_files` is the one seam the converter calls for everything text/processor-side. It converts the
release's LLaMA sentencepiece tokenizer into a transformers fast tokenizer with `<image>`, `<audio>`, `<video>` as
special tokens right after the original vocabulary, then hands it to the processing package's `save_processor`
(processor_config.json with its auto_map and the original's preprocessing settings, chat template, processing code).
"""

from pathlib import Path

from modeling_unimoe.processing.export import ORIGINAL_PREPROCESSING, save_processor

from .errors import ConversionError


PLACEHOLDER_TOKENS = ("<image>", "<audio>", "<video>")  # ids V, V + 1, V + 2 after the V-token LLaMA vocabulary
CONTEXT_LENGTH = 4096  # LLaMA-2 / Vicuna-7B-v1.5


def find_tokenizer_dir(*folders) -> Path:
    """The first folder holding a LLaMA tokenizer (`tokenizer.model` or `tokenizer.json`)."""
    for folder in folders:
        if folder is not None and any((Path(folder) / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):
            return Path(folder)
    raise ConversionError(
        f"No tokenizer found: none of {[str(f) for f in folders if f is not None]} has tokenizer.model or "
        "tokenizer.json. The release ships the LLaMA tokenizer with the base and fine-tuned checkpoints; download "
        "those files too."
    )


def placeholder_ids(config) -> dict[str, int]:
    """The id of each of `PLACEHOLDER_TOKENS`: the original's `<audio>` feeds the variant's audio tower (speech or
    sound)."""
    ids = config.placeholder_token_ids
    return {"<image>": ids["image"], "<audio>": ids.get("speech", ids.get("sound")), "<video>": ids["video"]}


def save_processor_files(config, tokenizer_source_dir, out_dir) -> None:
    """Write the tokenizer (with the placeholder tokens and the chat template) for `config` into `out_dir`."""
    try:
        from transformers import LlamaTokenizer

        tokenizer = LlamaTokenizer.from_pretrained(str(tokenizer_source_dir))
    except (ImportError, ValueError, OSError) as error:
        raise ConversionError(
            f"Could not read the LLaMA tokenizer in {tokenizer_source_dir}: {error}. Converting the sentencepiece "
            "tokenizer.model needs the `sentencepiece` and `protobuf` packages (pip install sentencepiece protobuf)."
        ) from None
    text_vocab = config.get_text_config().vocab_size - len(PLACEHOLDER_TOKENS)
    if len(tokenizer) != text_vocab:
        raise ConversionError(
            f"The tokenizer in {tokenizer_source_dir} has {len(tokenizer)} tokens but the checkpoint's embedding has "
            f"{text_vocab} rows. Expected the tokenizer that was released with this checkpoint."
        )
    tokenizer.add_special_tokens({"additional_special_tokens": list(PLACEHOLDER_TOKENS)})
    wanted = placeholder_ids(config)
    got = dict(zip(PLACEHOLDER_TOKENS, tokenizer.convert_tokens_to_ids(list(PLACEHOLDER_TOKENS)), strict=True))
    if got != wanted:
        raise ConversionError(f"Placeholder tokens got ids {got}; the config expects {wanted}.")
    tokenizer.pad_token = tokenizer.unk_token  # as in the original (pad = unk, id 0)
    tokenizer.model_max_length = CONTEXT_LENGTH
    # tokenizer, processor_config.json (with the preprocessing the released models were trained with: per-piece
    # prompt tokenization, 480,001-sample speech pieces, repeat-padded sound chunks), chat template, processing code
    save_processor(config, tokenizer, out_dir, **ORIGINAL_PREPROCESSING)
