"""vLLM plugin entry point (pyproject.toml: `[project.entry-points."vllm.general_plugins"]`).

vLLM calls `register()` in every process it starts (API server, engine core, workers) when this package is installed
in its environment. It registers `UniMoEForCausalLM` (the architecture named in a Uni-MoE folder's config.json) with
vLLM's model registry; the model module (`serving.vllm_model`) is imported lazily, when a Uni-MoE folder is loaded.
"""

ARCHITECTURE = "UniMoEForCausalLM"


def register() -> None:
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"serving.vllm_model:{ARCHITECTURE}")
