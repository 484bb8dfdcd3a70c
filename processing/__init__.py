"""The Uni-MoE processor: text, image, video, speech and sound in one call.

`processing_unimoe.py` (the processor), its siblings `feature_extraction_unimoe.py` (resampling, the audio chunk rule,
Whisper and BEATs features), `media_unimoe.py` (reading media, the input errors) and `text_unimoe.py` (token ids,
truncation, padding, chats), and `pipeline_unimoe.py` are uploaded to the Hub next to the modeling files (they import
no other file of this package); `export.py` writes them, the tokenizer and `chat_template.jinja` into a Hub folder.

    from modeling_unimoe.processing import UniMoEProcessor
"""

from .export import ORIGINAL_PREPROCESSING, add_custom_pipeline, build_processor, save_processor, save_tiny_processor
from .feature_extraction_unimoe import UniMoEBEATsFeatureExtractor
from .media_unimoe import (
    EmptyAudioError,
    MediaDecodeError,
    MediaTooLargeError,
    NotEnoughFramesError,
    PlaceholderCountError,
    PromptTooLongError,
    TooManyChunksError,
    UniMoEProcessingError,
)
from .processing_unimoe import UniMoEProcessor
from .tiny_tokenizer import build_tiny_tokenizer


__all__ = [
    "ORIGINAL_PREPROCESSING",
    "EmptyAudioError",
    "MediaDecodeError",
    "MediaTooLargeError",
    "NotEnoughFramesError",
    "PlaceholderCountError",
    "PromptTooLongError",
    "TooManyChunksError",
    "UniMoEBEATsFeatureExtractor",
    "UniMoEProcessingError",
    "UniMoEProcessor",
    "add_custom_pipeline",
    "build_processor",
    "build_tiny_tokenizer",
    "save_processor",
    "save_tiny_processor",
]
