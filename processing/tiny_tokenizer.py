# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""The tokenizer of the `tiny` preset: a 512-token byte-level BPE trained on text this project owns.

Not uploaded to the Hub as code: `save_tiny_processor` (processing/export.py) writes the trained tokenizer as
`tokenizer.json`. Training is deterministic (same corpus, same order, no sampling), so the tokenizer is rebuilt rather
than checked in; `tests/processing/test_processing.py` checks that two builds are identical.

    from modeling_unimoe.processing.tiny_tokenizer import build_tiny_tokenizer
    tokenizer = build_tiny_tokenizer()          # PreTrainedTokenizerFast, vocab 512
"""

from transformers import PreTrainedTokenizerFast


# Ids 0..6, in this order, as the `tiny` preset's config expects (pad = unk = 0, as in LLaMA).
TINY_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<image>", "<audio>", "<video>", "<sound>")
TINY_VOCAB_SIZE = 512
TINY_CONTEXT_LENGTH = 2048  # the tiny preset's max_position_embeddings

VICUNA_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions."
)

# The questions and answers of the project's synthetic tasks (shapes, motion, beeps, tones, spoken digits, sums).
_QUESTIONS = (
    "What color is the shape?",
    "What shape is this?",
    "How many shapes are there?",
    "Which way does the shape move?",
    "How many beeps are there?",
    "Is the tone high or low?",
    "What number is said?",
    "What is the sound?",
    "Describe the image.",
    "Describe the video.",
    "What do you hear?",
)
_ANSWERS = (
    "red green blue yellow white black orange purple circle square triangle star "
    "zero one two three four five six seven eight nine ten left right up down high low yes no"
).split()
_NUMBER_WORDS = "zero one two three four five six seven eight nine".split()


def tiny_corpus() -> list[str]:
    """The training text, in a fixed order: the vicuna_v1 frame, the task questions, and one short dialogue per
    question / answer pair, plus the sums "What is A plus B?" for A, B in 0..9."""
    lines = [VICUNA_SYSTEM_PROMPT, "USER:", "ASSISTANT:"]
    lines += list(_QUESTIONS) + _ANSWERS
    for question in _QUESTIONS:
        for answer in _ANSWERS:
            lines.append(f"{VICUNA_SYSTEM_PROMPT} USER: {question} ASSISTANT: {answer}")
    for a in range(10):
        for b in range(10):
            lines.append(f"USER: What is {a} plus {b}? ASSISTANT: {_NUMBER_WORDS[(a + b) % 10]}")
            lines.append(f"What is {_NUMBER_WORDS[a]} plus {_NUMBER_WORDS[b]}?")
    return lines


def build_tiny_tokenizer(model_max_length: int = TINY_CONTEXT_LENGTH) -> PreTrainedTokenizerFast:
    """Train the tiny byte-level BPE (vocab exactly 512, special tokens at ids 0..6) and wrap it as a fast tokenizer
    that adds `<s>` in front like LLaMA's, pads with `<unk>` (id 0) and knows `<image>`, `<audio>`, `<video>`,
    `<sound>` as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tiny_corpus(), trainer=trainer)
    if backend.get_vocab_size() != TINY_VOCAB_SIZE:
        raise RuntimeError(
            f"The tiny BPE trained to {backend.get_vocab_size()} tokens instead of {TINY_VOCAB_SIZE}: the corpus in "
            "processing/tiny_tokenizer.py is too small for that many merges. Add text to `tiny_corpus`."
        )
    # ByteLevel post-processing keeps offsets right; then `<s>` in front, as LLaMA's tokenizer does.
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    for token_id, token in enumerate(TINY_SPECIAL_TOKENS):
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise RuntimeError(f"{token} got id {tokenizer.convert_tokens_to_ids(token)}, expected {token_id}.")
    return tokenizer
