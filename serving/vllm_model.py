"""Uni-MoE as a vLLM model (out-of-tree, registered by `serving.vllm_plugin` through `vllm.general_plugins`).

Runs only inside vLLM's venv (build/venvs/vllm, `python -m serving.venv`). The language model is vLLM's own LLaMA
(`LlamaModel`: paged attention, tensor-parallel linears) with `UniMoEAttention` (which pads head sizes the attention
kernels do not support) and, in MoE layers, the experts in vLLM's fused-MoE layer (`FusedMoEFactory`: fused kernels,
tensor / expert parallelism); the media towers and connectors are the package's transformers modules
(`modeling_unimoe.UniMoEModel` without its language model), run once per item when a prompt is first scheduled.

Checkpoint keys are the Hub folder's (`model.language_model.*`, `model.vision_tower.*`, `lm_head.*`, experts as
`mlp.experts.N.{gate,up,down}_proj`); `UniMoEForCausalLM.hf_to_vllm_mapper` maps them onto this module tree.

Media: images and videos (`<image>` / `<video>`, `image_seq_length` tokens each), audio (`<audio>`: the processor's
audio path, speech through Whisper or, in models without a speech tower, sound through BEATs) and, in models with both
towers, sound (`<sound>`, the `sound` modality: offline `multi_modal_data={"sound": ...}`; vLLM's chat API has one
audio kind, which is `<audio>`). Audio is cut into the processor's chunks, query tokens per chunk. The processing side
runs the model folder's own `UniMoEProcessor` on the media (with a placeholder-only text: vLLM tokenizes the prompt),
so the model inputs are exactly those transformers' `generate` gets.
"""

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import CacheConfig, VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.fused_moe import FusedMoEFactory, GateLinear
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, extract_layer_index, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import (
    AudioProcessorItems,
    MultiModalDataItems,
    MultiModalDataParser,
    ProcessorBatchItems,
)
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.sequence import IntermediateTensors


ARCHITECTURE = "UniMoEForCausalLM"
SAMPLING_RATE = 16000  # of both audio towers

# q/k/v into vLLM's fused qkv_proj and the dense MLPs' gate/up into gate_up_proj; expert weights
# (`mlp.experts.N.gate_proj`) keep their names: the fused-MoE layer loads them itself
_TEXT_STACKED = WeightsMapper(
    orig_to_new_stacked={
        ".q_proj": (".qkv_proj", "q"),
        ".k_proj": (".qkv_proj", "k"),
        ".v_proj": (".qkv_proj", "v"),
        ".mlp.gate_proj": (".mlp.gate_up_proj", 0),
        ".mlp.up_proj": (".mlp.gate_up_proj", 1),
    }
)


# --- language model --------------------------------------------------------------------------------------------------


def attention_head_size(head_dim: int) -> int:
    """The head size the attention kernels run at: `head_dim` itself, or on vLLM's CPU build (whose attention supports
    a fixed list of head sizes) the smallest supported size above it."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return head_dim
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim in supported:
        return head_dim
    larger = [size for size in supported if size > head_dim]
    if not larger:
        raise ValueError(
            f"This model's attention head size is {head_dim}; vLLM's CPU attention supports {supported} and no larger "
            "size to pad it to. Serve it on a GPU build of vLLM."
        )
    return min(larger)


class UniMoEAttention(nn.Module):
    """LLaMA self-attention (vLLM's fused qkv_proj, rotary embedding, paged `Attention`, o_proj).

    Where the kernels do not support the model's head size (vLLM's CPU build: 32, 64, 80, ...; not 16), q, k and v
    are zero-padded per head to the next supported size and the attention output is cut back: the zero dimensions add
    nothing to q . k, so with the softmax scale of the real head size (`head_dim ** -0.5`, passed explicitly) the
    attention weights are unchanged, and v's zero dimensions give zero outputs, which are dropped. The KV cache then
    holds the padded size."""

    def __init__(
        self,
        config,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        max_position_embeddings: int = 8192,
        quant_config: QuantizationConfig | None = None,
        bias: bool = False,
        bias_o_proj: bool = False,
        cache_config: CacheConfig | None = None,
        prefix: str = "",
        attn_type: str | None = None,
    ) -> None:
        super().__init__()
        tp_size = get_tensor_model_parallel_world_size()
        if num_heads % tp_size or (num_kv_heads % tp_size and tp_size % num_kv_heads):
            raise ValueError(
                f"Tensor parallel size {tp_size} does not divide the model's {num_heads} attention heads "
                f"({num_kv_heads} key/value heads): pick a --tensor-parallel-size that does."
            )
        self.num_heads = num_heads // tp_size
        self.num_kv_heads = max(1, num_kv_heads // tp_size)
        self.head_dim = getattr(config, "head_dim", None) or hidden_size // num_heads
        self.padded_head_dim = attention_head_size(self.head_dim)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = QKVParallelLinear(
            hidden_size=hidden_size,
            head_size=self.head_dim,
            total_num_heads=num_heads,
            total_num_kv_heads=num_kv_heads,
            bias=bias,
            quant_config=quant_config,
            prefix=f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(
            input_size=num_heads * self.head_dim,
            output_size=hidden_size,
            bias=bias_o_proj,
            quant_config=quant_config,
            prefix=f"{prefix}.o_proj",
        )
        self.rotary_emb = get_rope(
            self.head_dim,
            max_position=max_position_embeddings,
            rope_parameters=getattr(config, "rope_parameters", None),
            is_neox_style=True,
        )
        self.attn = Attention(
            self.num_heads,
            self.padded_head_dim,
            self.head_dim**-0.5,  # the real head size's scale, also when padded
            num_kv_heads=self.num_kv_heads,
            cache_config=cache_config,
            quant_config=quant_config,
            prefix=f"{prefix}.attn",
        )

    def _pad(self, states: torch.Tensor, heads: int) -> torch.Tensor:
        states = states.view(-1, heads, self.head_dim)  # [tokens, heads, head_dim]
        states = nn.functional.pad(states, (0, self.padded_head_dim - self.head_dim))  # [tokens, heads, padded]
        return states.reshape(-1, heads * self.padded_head_dim)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        if self.padded_head_dim != self.head_dim:
            q, k, v = self._pad(q, self.num_heads), self._pad(k, self.num_kv_heads), self._pad(v, self.num_kv_heads)
        attn_output = self.attn(q, k, v)  # [tokens, heads * padded]
        if self.padded_head_dim != self.head_dim:
            attn_output = attn_output.view(-1, self.num_heads, self.padded_head_dim)[..., : self.head_dim]
            attn_output = attn_output.reshape(-1, self.q_size)  # [tokens, heads * head_dim]
        output, _ = self.o_proj(attn_output)
        return output


class UniMoESparseMoeBlock(nn.Module):
    """Router `gate` (hidden -> num_experts, no bias) + SwiGLU experts in vLLM's fused-MoE layer.

    Routing equals the transformers model's: top-k of the router logits, softmax over the k selected (= softmax over
    all experts renormalised to the top-k: `renormalize=True`)."""

    def __init__(self, config, quant_config=None, prefix: str = ""):
        super().__init__()
        self.gate = GateLinear(config.hidden_size, config.num_experts, prefix=f"{prefix}.gate")
        self.experts = FusedMoEFactory(
            num_experts=config.num_experts,
            top_k=config.num_experts_per_tok,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            renormalize=True,
            has_bias=bool(getattr(config, "mlp_bias", False)),
            quant_config=quant_config,
            prefix=f"{prefix}.experts",
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        hidden_states = hidden_states.view(-1, shape[-1])  # [tokens, hidden]
        router_logits, _ = self.gate(hidden_states)  # [tokens, num_experts]
        return self.experts(hidden_states=hidden_states, router_logits=router_logits).view(shape)


class UniMoEDecoderLayer(LlamaDecoderLayer):
    """vLLM's LLaMA decoder layer with `UniMoEAttention`; in the config's MoE layers (`moe_layer_indices`) the MLP is
    a sparse MoE block."""

    def __init__(self, vllm_config: VllmConfig, prefix: str = "", config=None):
        super().__init__(vllm_config=vllm_config, prefix=prefix, config=config, attn_layer_type=UniMoEAttention)
        config = config or vllm_config.model_config.hf_config
        if extract_layer_index(prefix) in config.moe_layer_indices:
            self.mlp = UniMoESparseMoeBlock(config, self.get_quant_config(vllm_config), prefix=f"{prefix}.mlp")


class UniMoETextModel(LlamaModel):
    hf_to_vllm_mapper = _TEXT_STACKED


class UniMoETextForCausalLM(LlamaForCausalLM):
    """The language model and its head, built from the text config (`config.text_config`)."""

    hf_to_vllm_mapper = _TEXT_STACKED

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=UniMoEDecoderLayer)

    def _init_model(self, vllm_config: VllmConfig, prefix: str = "", layer_type=UniMoEDecoderLayer):
        return UniMoETextModel(vllm_config=vllm_config, prefix=prefix, layer_type=layer_type)


# --- media processing ------------------------------------------------------------------------------------------------


class SoundProcessorItems(AudioProcessorItems):
    """Waveforms for `<sound>` (models with both a speech and a sound tower): audio items of their own modality."""

    def __init__(self, data) -> None:
        ProcessorBatchItems.__init__(self, data, "sound")


class UniMoEDataParser(MultiModalDataParser):
    """vLLM's parser plus the `sound` modality (parsed and resampled as audio)."""

    def _parse_sound_data(self, data):
        items = self._parse_audio_data(data)
        return SoundProcessorItems(items.data) if isinstance(items, AudioProcessorItems) else items

    def _get_subparsers(self):
        return {**super()._get_subparsers(), "sound": self._parse_sound_data}


class UniMoEProcessingInfo(BaseProcessingInfo):
    def get_data_parser(self) -> MultiModalDataParser:
        # audio at 16 kHz mono, resampled with python-soxr (what the processor's own resampling uses)
        return UniMoEDataParser(
            target_sr=SAMPLING_RATE,
            target_channels=1,
            audio_resample_method="soxr",
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def audio_paths(self) -> dict[str, str]:
        """The audio modalities and the tower each feeds: `audio` -> "speech" (Whisper) or, in models without a speech
        tower, "sound" (BEATs); `sound` -> "sound" in models with both towers."""
        return dict(self.get_hf_processor().audio_paths)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        processor = self.get_hf_processor()
        has_vision = getattr(self.get_hf_config(), "vision_config", None) is not None
        limits = {}
        for modality in ("image", "video"):
            if has_vision and getattr(processor, f"{modality}_token", None):
                limits[modality] = None
        for modality in self.audio_paths():
            limits[modality] = None
        return limits

    def placeholder_token_id(self, modality: str) -> int:
        processor = self.get_hf_processor()
        return processor.tokenizer.convert_tokens_to_ids(getattr(processor, f"{modality}_token"))

    def tokens_per_chunk(self, modality: str) -> int:
        processor = self.get_hf_processor()
        if self.audio_paths()[modality] == "speech":
            return processor.num_speech_query_tokens
        return processor.num_sound_query_tokens

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        processor = self.get_hf_processor()
        paths = self.audio_paths()
        tokens = {}
        for modality in self.get_supported_mm_limits():
            if modality in paths:
                # a sound has at most `max_sound_chunks` chunks; speech at most what the context holds
                per_chunk = self.tokens_per_chunk(modality)
                max_chunks = processor.max_sound_chunks if paths[modality] == "sound" else seq_len // per_chunk
                tokens[modality] = per_chunk * max_chunks
            else:
                tokens[modality] = processor.image_seq_length
        return tokens


class UniMoEDummyInputsBuilder(BaseDummyInputsBuilder[UniMoEProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        processor = self.info.get_hf_processor()
        return "".join(getattr(processor, f"{modality}_token") * count for modality, count in mm_counts.items())

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions | None = None
    ):
        processor = self.info.get_hf_processor()
        mm_options = mm_options or {}
        data = {}
        if mm_counts.get("image", 0) or mm_counts.get("video", 0):
            size = self.info.get_hf_config().vision_config.image_size
        if mm_counts.get("image", 0):
            data["image"] = self._get_dummy_images(
                width=size, height=size, num_images=mm_counts["image"], overrides=mm_options.get("image")
            )
        if mm_counts.get("video", 0):
            data["video"] = self._get_dummy_videos(
                width=size,
                height=size,
                num_frames=processor.num_video_frames,
                num_videos=mm_counts["video"],
                overrides=mm_options.get("video"),
            )
        for modality in self.info.audio_paths():
            if mm_counts.get(modality, 0):
                data[modality] = self._get_dummy_audios(
                    length=processor.feature_extractor.n_samples,  # one chunk
                    num_audios=mm_counts[modality],
                    overrides=mm_options.get(modality),
                )
        return data


class UniMoEMultiModalProcessor(BaseMultiModalProcessor[UniMoEProcessingInfo]):
    """Runs the folder's UniMoEProcessor on a request's media, with one placeholder per item as its text (vLLM
    tokenizes the prompt itself); the placeholder counts per item come from the processor's replacement offsets."""

    def _get_hf_mm_text(self, mm_counts: Mapping[str, int]) -> str | None:
        return self.dummy_inputs.get_dummy_text(mm_counts)

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        processor = self.info.get_hf_processor(**hf_kwargs)
        hf_data = dict(hf_data)
        if "sounds" in hf_data:  # vLLM names a modality's items "<modality>s"; the processor's argument is `sound`
            hf_data["sound"] = hf_data.pop("sounds")
        # called directly (not through vLLM's wrapper, which restates the whole input), so that a bad item is
        # refused with the processor's own message (a ValueError: HTTP 400 in the server)
        out = processor(**hf_data, return_tensors="pt", return_text_replacement_offsets=True)
        counts: dict[str, list[int]] = {}
        for entry in out.pop("text_replacement_offsets")[0]:
            counts.setdefault(entry["type"], []).append(len(entry["replacement"]) // len(entry["text"]))
        for modality, tokens in counts.items():
            out[f"{modality}_num_tokens"] = torch.tensor(tokens)
            if modality in self.info.audio_paths():
                out[f"{modality}_num_chunks"] = torch.tensor(tokens) // self.info.tokens_per_chunk(modality)
        for key in ("input_ids", "attention_mask"):  # of the placeholder-only text
            out.pop(key, None)
        return out

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        fields = {
            "pixel_values": MultiModalFieldConfig.batched("image"),
            "image_num_tokens": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            "pixel_values_videos": MultiModalFieldConfig.batched("video"),
            "video_num_tokens": MultiModalFieldConfig.batched("video", keep_on_cpu=True),
        }
        # speech (Whisper log-mel) or sound (BEATs fbank) chunks: several rows per audio item
        for modality, path in self.info.audio_paths().items():
            chunks = hf_inputs.get(f"{modality}_num_chunks", torch.empty(0, dtype=torch.long))
            keys = ("input_features",) if path == "speech" else ("sound_features", "sound_features_mask")
            fields.update({key: MultiModalFieldConfig.flat_from_sizes(modality, chunks) for key in keys})
            fields[f"{modality}_num_tokens"] = MultiModalFieldConfig.batched(modality, keep_on_cpu=True)
            fields[f"{modality}_num_chunks"] = MultiModalFieldConfig.batched(modality, keep_on_cpu=True)
        return fields

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        updates = []
        for modality in self.info.get_supported_mm_limits():
            token_id = self.info.placeholder_token_id(modality)
            items = out_mm_kwargs.get(modality, [])

            def replacement(item_idx: int, items=items, modality=modality, token_id=token_id):
                return [token_id] * int(items[item_idx][f"{modality}_num_tokens"].data)

            updates.append(PromptReplacement(modality=modality, target=[token_id], replacement=replacement))
        return updates


# --- the model -------------------------------------------------------------------------------------------------------


def _media_encoders(config) -> nn.Module:
    """The package's `UniMoEModel` (towers, connectors and their feature getters) without its language model."""
    from modeling_unimoe import UniMoEConfig
    from modeling_unimoe.modeling_unimoe import UniMoEModel

    encoder_config = UniMoEConfig.from_dict(copy.deepcopy(config.to_dict()))
    encoder_config.text_config.num_hidden_layers = 0  # the language model is vLLM's
    encoder_config.text_config.moe_layers = []
    encoders = UniMoEModel(encoder_config)
    del encoders.language_model
    return encoders.eval()


def _batched(values) -> torch.Tensor:
    """A batched field ([items, ...]) as one tensor: vLLM passes a list of per-item tensors where shapes differ."""
    return values if isinstance(values, torch.Tensor) else torch.stack(list(values))


def _flat(values) -> torch.Tensor:
    """A flat field (rows of all items, e.g. audio chunks) as one tensor: vLLM may pass a list of per-item rows."""
    return values if isinstance(values, torch.Tensor) else torch.cat(list(values))


@MULTIMODAL_REGISTRY.register_processor(
    UniMoEMultiModalProcessor, info=UniMoEProcessingInfo, dummy_inputs=UniMoEDummyInputsBuilder
)
class UniMoEForCausalLM(nn.Module, SupportsMultiModal, SupportsPP):
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.language_model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
            "model.": "encoders.",
        },
        # weight-normed convolutions (BEATs' positional conv) are saved as weight_g / weight_v; torch's weight_norm
        # parametrization (which the module uses) holds them as original0 / original1
        orig_to_new_suffix={
            ".weight_g": ".parametrizations.weight.original0",
            ".weight_v": ".parametrizations.weight.original1",
        },
    )
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality in ("image", "video", "audio", "sound"):
            return f"<{modality}>"
        raise ValueError(f"Uni-MoE takes image, video, audio and sound items; got {modality!r}.")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        text_config = config.get_text_config()
        if getattr(text_config, "capacity_factor", None) is not None:
            raise ValueError(
                f"This model's text_config.capacity_factor is {text_config.capacity_factor}: expert capacity drops "
                "tokens depending on what else is in the batch, which a continuously batching server cannot "
                "reproduce. Set `capacity_factor` to null in config.json (dropless routing, as in inference) to "
                "serve it with vLLM."
            )
        self.config = config
        self.encoders = _media_encoders(config)
        # media placeholders are inputs, never outputs (the transformers model suppresses them in generate, too)
        self.placeholder_ids = sorted(set(self.encoders.config.placeholder_token_ids.values()))
        self.configure_mm_token_handling(text_config.vocab_size, self.placeholder_ids)
        self.language_model = UniMoETextForCausalLM(
            vllm_config=vllm_config.with_hf_config(text_config, architectures=["LlamaForCausalLM"]),
            prefix=maybe_prefix(prefix, "language_model"),
        )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def get_language_model(self) -> nn.Module:
        return self.language_model

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """The LLM embeddings of each item ([tokens of the item, hidden]), in prompt order; vLLM calls this once per
        modality, with that modality's fields."""
        embeddings = []
        for key, encode in (
            ("pixel_values", self.encoders.get_image_features),
            ("pixel_values_videos", self.encoders.get_video_features),
        ):
            if kwargs.get(key) is not None:
                features = encode(_batched(kwargs[key]), return_dict=True).pooler_output  # [items, tokens, hidden]
                embeddings.extend(features.unbind(0))
        # audio chunks of all items -> [chunks, tokens per chunk, hidden], through Whisper or BEATs
        if kwargs.get("input_features") is not None:
            audio = self.encoders.get_speech_features(_flat(kwargs["input_features"]), return_dict=True).pooler_output
        elif kwargs.get("sound_features") is not None:
            mask = kwargs.get("sound_features_mask")
            audio = self.encoders.get_sound_features(
                _flat(kwargs["sound_features"]),
                sound_features_mask=None if mask is None else _flat(mask),
                return_dict=True,
            ).pooler_output
        else:
            return embeddings
        chunks = next(
            kwargs[f"{m}_num_chunks"] for m in ("audio", "sound") if kwargs.get(f"{m}_num_chunks") is not None
        )
        chunks = _batched(chunks).flatten().tolist()
        embeddings.extend(item.flatten(0, 1) for item in audio.split(chunks))  # [chunks * tokens per chunk, hidden]
        return embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = self.language_model.compute_logits(hidden_states)
        if logits is not None and self.placeholder_ids:
            logits[..., self.placeholder_ids] = float("-inf")
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
