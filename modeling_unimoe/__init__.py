"""uni-moe: Uni-MoE (arXiv 2405.11273) as a Hugging Face transformers model.

    from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM, UniMoEProcessor

Importing this package also registers the classes with transformers' Auto classes, so a saved folder loads with
`AutoModelForCausalLM.from_pretrained(path)` here even without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from .configuration_beats import UniMoEBEATsConfig
from .configuration_unimoe import UniMoEConfig, UniMoETextConfig
from .modeling_unimoe import UniMoEForCausalLM, UniMoEModel, UniMoEPreTrainedModel, UniMoETextModel
from .processing import UniMoEProcessor


for _config in (UniMoEConfig, UniMoETextConfig, UniMoEBEATsConfig):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
AutoModel.register(UniMoEConfig, UniMoEModel, exist_ok=True)
for _auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
    _auto.register(UniMoEConfig, UniMoEForCausalLM, exist_ok=True)
AutoProcessor.register(UniMoEConfig, UniMoEProcessor, exist_ok=True)

__all__ = [
    "UniMoEBEATsConfig",
    "UniMoEConfig",
    "UniMoEForCausalLM",
    "UniMoEModel",
    "UniMoEPreTrainedModel",
    "UniMoEProcessor",
    "UniMoETextConfig",
    "UniMoETextModel",
]
