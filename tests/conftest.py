import pytest
import torch

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM


@pytest.fixture
def tiny_config() -> UniMoEConfig:
    return UniMoEConfig.from_preset("tiny")


@pytest.fixture
def tiny_model(tiny_config) -> UniMoEForCausalLM:
    torch.manual_seed(0)
    return UniMoEForCausalLM(tiny_config).eval()
