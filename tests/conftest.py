import sys
from pathlib import Path

import pytest
import torch

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM


# demo/ is a folder of scripts (a Space runs `python app.py` in it): its modules import each other by their file names,
# as the tests do (`import app`, `import chat`); appended, so that no installed package is shadowed
DEMO = Path(__file__).resolve().parents[1] / "demo"
# recipes/transformers/ likewise: its fine-tuning scripts import each other by their file names
RECIPES = DEMO.parent / "recipes" / "transformers"
for folder in (DEMO, RECIPES):
    if str(folder) not in sys.path:
        sys.path.append(str(folder))


@pytest.fixture
def tiny_config() -> UniMoEConfig:
    return UniMoEConfig.from_preset("tiny")


@pytest.fixture
def tiny_model(tiny_config) -> UniMoEForCausalLM:
    torch.manual_seed(0)
    return UniMoEForCausalLM(tiny_config).eval()
