"""transformers' own common model tests (ModelTesterMixin, ConfigTester, and GenerationTesterMixin where available) run
against Uni-MoE, in transformers' style: a text-only model (like Mixtral's test) and a model with a CLIP tower (like
Llava's test).

transformers' test files are not committed: `tests/models/unimoe/transformers_tests.py` fetches them for the installed transformers
version (the PyPI sdist, cached in `build/transformers-src-<version>/`) and imports them as the package `hf_tests`; the
module skips, with the reason, when that fails. Tests that a native transformers model (Mixtral, Llava) also fails or
skips on this machine for the same reason are listed in KNOWN_NATIVE (skipped with that reason); whatever still fails
is a Uni-MoE defect.

`UNIMOE_NATIVE_CONTROLS=1` adds the same test classes run on native MixtralForCausalLM and LlavaForConditionalGeneration
(the controls that KNOWN_NATIVE comes from).
"""

import os
import time
import unittest

import pytest
import torch

from modeling_unimoe import UniMoEConfig, UniMoEForCausalLM, UniMoEModel
from tests.models.unimoe.transformers_tests import TransformersTestsUnavailable, generation_tests_available, load


try:
    _hf = load()
except TransformersTestsUnavailable as error:
    pytest.skip(f"transformers' common tests unavailable: {error}", allow_module_level=True)

ModelTesterMixin = _hf.test_modeling_common.ModelTesterMixin
ids_tensor = _hf.test_modeling_common.ids_tensor
floats_tensor = _hf.test_modeling_common.floats_tensor
ConfigTester = _hf.test_configuration_common.ConfigTester
GenerationTesterMixin = _hf.generation_test_utils.GenerationTesterMixin
GENERATION_TESTS = generation_tests_available(_hf)

# Tests that the native control fails or skips on this machine (CPU only, torch 2.13) for the same reason: test name ->
# reason (a parameterized test's base name covers all its expansions). Key "*" applies to every test class, a class name
# to that class only. With transformers 5.23.0 the controls (UNIMOE_NATIVE_CONTROLS=1) fail nothing and skip only what
# Uni-MoE skips too, so the tables are empty; refill them from the controls when transformers moves.
KNOWN_NATIVE: dict[str, dict[str, str]] = {
    "*": {},
    "UniMoETextModelTest": {},
    "UniMoEVisionText2TextModelTest": {},
}


_NO_TOWER = "the text-only config has no vision tower: get_image_features / get_video_features raise a ValueError"
# Tests that do not apply to a configuration (not a defect, nothing to compare with a native model): test -> reason.
NOT_APPLICABLE: dict[str, dict[str, str]] = {
    "UniMoETextModelTest": {
        name: _NO_TOWER
        for name in (
            "test_get_image_features_output",
            "test_get_image_features_pooler_output",
            "test_get_image_features_hidden_states",
            "test_get_image_features_attentions",
            "test_get_video_features_output",
            "test_get_video_features_pooler_output",
            "test_get_video_features_hidden_states",
            "test_get_video_features_attentions",
        )
    },
}


def _lookup(table: dict[str, dict[str, str]], cls_name: str, test_name: str) -> str | None:
    for key in ("*", cls_name):
        for name, reason in table.get(key, {}).items():
            if test_name == name or _is_expansion(test_name, name):
                return reason
    return None


def _is_expansion(test_name: str, base: str) -> bool:
    """`test_foo_0_bar` (parameterized.expand's naming) is an expansion of `test_foo`."""
    rest = test_name[len(base) :]
    return test_name.startswith(base) and rest.startswith("_") and rest[1:2].isdigit()


class _SkipKnownNative:
    """Skips the tests listed in KNOWN_NATIVE and NOT_APPLICABLE for this class."""

    def setUp(self):
        cls_name, test_name = type(self).__name__, self._testMethodName
        if reason := _lookup(KNOWN_NATIVE, cls_name, test_name):
            self.skipTest(f"native transformers model fails/skips too: {reason}")
        if reason := _lookup(NOT_APPLICABLE, cls_name, test_name):
            self.skipTest(f"not applicable: {reason}")
        super().setUp()


def _auto_mapping_names():
    """transformers' mixins find a model's task through the auto mapping names (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES &
    co.), which know only native models: labels for the training tests, base-model exceptions, ..."""
    from transformers.models.auto import modeling_auto

    return {
        "MODEL_MAPPING_NAMES": modeling_auto.MODEL_MAPPING_NAMES,
        "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES": modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    }


class _RegisteredInAutoMappings:
    """Adds Uni-MoE to transformers' auto mapping names while the class's tests run (as a native model would be), and
    removes it after."""

    auto_mapping_names: dict[str, str] = {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        names = _auto_mapping_names()
        cls._added = []
        for mapping, class_name in cls.auto_mapping_names.items():
            if "unimoe" not in names[mapping]:
                names[mapping]["unimoe"] = class_name
                cls._added.append(mapping)

    @classmethod
    def tearDownClass(cls):
        names = _auto_mapping_names()
        for mapping in cls._added:
            names[mapping].pop("unimoe", None)
        super().tearDownClass()


class _Timed:
    """Prints each test class's wall time (pytest -s shows it)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._started = time.monotonic()

    @classmethod
    def tearDownClass(cls):
        print(f"\n{cls.__name__}: {time.monotonic() - cls._started:.1f} s")
        super().tearDownClass()


def _generation_stub(cls):
    """Without GenerationTesterMixin (the PyPI sdist lacks tests/generation/), say so once as a skipped test."""
    if not GENERATION_TESTS:

        def test_generation_tester_mixin_available(self):
            self.skipTest(
                "transformers' GenerationTesterMixin is not in the PyPI sdist (tests/generation/ is not shipped); set "
                "TRANSFORMERS_TESTS_DIR to a transformers checkout's tests/ to run the generate tests"
            )

        cls.test_generation_tester_mixin_available = test_generation_tester_mixin_available
    return cls


# ---------------------------------------------------------------------------------------------------------------------
# Text only: UniMoEConfig with a text_config and no towers (modelled on transformers' Mixtral test / CausalLMModelTester)
# ---------------------------------------------------------------------------------------------------------------------
class UniMoETextModelTester:
    config_class = UniMoEConfig
    base_model_class = UniMoEModel
    causal_lm_class = UniMoEForCausalLM

    def __init__(
        self,
        parent,
        batch_size=13,
        seq_length=7,
        is_training=True,
        use_input_mask=True,
        use_labels=True,
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=40,  # a multiple of 8: 16-byte strides for the grouped-mm experts of native MoE models
        hidden_act="silu",
        max_position_embeddings=512,
        initializer_range=0.02,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        num_experts=4,
        num_experts_per_tok=2,
        moe_layers="even",  # layer 0 routed experts, layer 1 a dense MLP
        router_aux_loss_coef=0.01,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.use_input_mask = use_input_mask
        self.use_labels = use_labels
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_layers = moe_layers
        self.router_aux_loss_coef = router_aux_loss_coef
        self.head_dim = hidden_size // num_attention_heads

    @property
    def all_model_classes(self):
        return (self.base_model_class, self.causal_lm_class)

    def get_text_config(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "num_experts": self.num_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "moe_layers": self.moe_layers,
            "router_aux_loss_coef": self.router_aux_loss_coef,
        }

    @property
    def text_config(self) -> dict:
        return self.get_text_config()

    def get_config(self) -> UniMoEConfig:
        return self.config_class(text_config=self.get_text_config())

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_mask = torch.tril(torch.ones_like(input_ids)) if self.use_input_mask else None
        token_labels = ids_tensor([self.batch_size, self.seq_length], self.vocab_size) if self.use_labels else None
        return self.get_config(), input_ids, input_mask, token_labels

    def create_and_check_model(self, config, input_ids, input_mask, token_labels):
        model = self.base_model_class(config).eval()
        result = model(input_ids, attention_mask=input_mask)
        result = model(input_ids)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))

    def create_and_check_for_causal_lm(self, config, input_ids, input_mask, token_labels):
        model = self.causal_lm_class(config).eval()
        result = model(input_ids, attention_mask=input_mask, labels=token_labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.seq_length, self.vocab_size))
        self.parent.assertTrue(torch.isfinite(result.loss))

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, input_mask, _ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": input_mask}


class _UniMoETestBase(_SkipKnownNative, _RegisteredInAutoMappings, _Timed):
    pass


@_generation_stub
class UniMoETextModelTest(_UniMoETestBase, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (UniMoEModel, UniMoEForCausalLM)
    auto_mapping_names = {
        "MODEL_MAPPING_NAMES": "UniMoEModel",
        "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "UniMoEForCausalLM",
    }
    # as Mixtral's test: not every expert gets a token (and a gradient) in one small batch
    test_all_params_have_gradient = False
    _is_composite = False

    def setUp(self):
        super().setUp()
        self.model_tester = UniMoETextModelTester(self)
        self.config_tester = ConfigTester(self, config_class=UniMoEConfig, has_text_modality=False)

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_causal_lm(self):
        self.model_tester.create_and_check_for_causal_lm(*self.model_tester.prepare_config_and_inputs())

    def test_load_balancing_loss(self):
        """As Mixtral's test: the aux loss is returned with output_router_logits, and padding changes it."""
        config, input_dict = self.model_tester.prepare_config_and_inputs_for_common()
        config.text_config.output_router_logits = True
        input_ids = input_dict["input_ids"]
        attention_mask = input_ids.ne(1)
        model = UniMoEForCausalLM(config).eval()
        result = model(input_ids, attention_mask=attention_mask)
        self.assertEqual(result.logits.shape, (*input_ids.shape, config.text_config.vocab_size))
        self.assertIsNotNone(result.aux_loss)
        padded = torch.cat([input_ids, torch.full((input_ids.shape[0], 3), config.text_config.pad_token_id)], 1)
        padded_mask = torch.cat([attention_mask, torch.zeros_like(padded[:, -3:], dtype=torch.bool)], 1)
        padded_result = model(padded, attention_mask=padded_mask.long())
        torch.testing.assert_close(result.aux_loss, padded_result.aux_loss, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# With a vision tower (tiny CLIP): image placeholders in input_ids and pixel_values (modelled on transformers' Llava
# test, LlavaVisionText2TextModelTester)
# ---------------------------------------------------------------------------------------------------------------------
class UniMoEVisionText2TextModelTester:
    def __init__(
        self,
        parent,
        batch_size=3,
        seq_length=7,
        is_training=True,
        image_token_id=3,
        video_token_id=4,
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
        num_video_frames=2,
        use_video=True,
        text_config=None,
        vision_config=None,
    ):
        self.parent = parent
        self.num_video_frames = num_video_frames
        self.use_video = use_video
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.vision_feature_layer = vision_feature_layer
        self.projector_hidden_act = projector_hidden_act
        self.text_config = text_config or {
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 40,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "hidden_act": "silu",
            "max_position_embeddings": 512,
            "initializer_range": 0.02,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_layers": "even",
            "router_aux_loss_coef": 0.01,
        }
        self.vision_config = vision_config or {
            "model_type": "clip_vision_model",
            "image_size": 8,
            "patch_size": 4,
            "num_channels": 3,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "projection_dim": 32,
            "dropout": 0.1,
            "attention_dropout": 0.1,
            "initializer_range": 0.02,
        }
        self.pad_token_id = self.text_config["pad_token_id"]
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.vocab_size = self.text_config["vocab_size"]
        self.hidden_size = self.text_config["hidden_size"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.is_training = is_training
        self.batch_size = batch_size
        self.num_channels = self.vision_config["num_channels"]
        self.image_size = self.vision_config["image_size"]
        self.patch_size = self.vision_config["patch_size"]
        self.num_image_tokens = (self.image_size // self.patch_size) ** 2  # CLIP patches, CLS dropped
        # one image per row, and one video (its frames pooled into as many tokens as an image) if use_video
        self.seq_length = seq_length + self.num_image_tokens * (2 if use_video else 1)
        self.encoder_seq_length = self.seq_length

    def get_config(self) -> UniMoEConfig:
        return UniMoEConfig(
            text_config=self.text_config,
            vision_config=self.vision_config,
            image_token_id=self.image_token_id,
            video_token_id=self.video_token_id,
            vision_feature_layer=self.vision_feature_layer,
            projector_hidden_act=self.projector_hidden_act,
            num_video_frames=self.num_video_frames,
        )

    def prepare_config_and_inputs(self):
        image_shape = [self.num_channels, self.image_size, self.image_size]
        pixel_values = floats_tensor([self.batch_size, *image_shape])
        pixel_values_videos = floats_tensor([self.batch_size, self.num_video_frames, *image_shape])
        return self.get_config(), pixel_values, pixel_values_videos

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, pixel_values_videos = self.prepare_config_and_inputs()
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 1) + 1
        attention_mask = input_ids.ne(1).to(torch.long)
        for placeholder in (self.image_token_id, self.video_token_id):
            input_ids[input_ids == placeholder] = self.pad_token_id
        n = self.num_image_tokens
        input_ids[:, :n] = self.image_token_id  # one image per row
        inputs = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_video:
            input_ids[:, n : 2 * n] = self.video_token_id  # and one video
            inputs["pixel_values_videos"] = pixel_values_videos
        return config, inputs


@_generation_stub
class UniMoEVisionText2TextModelTest(_UniMoETestBase, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (UniMoEModel, UniMoEForCausalLM)
    auto_mapping_names = {
        "MODEL_MAPPING_NAMES": "UniMoEModel",
        "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES": "UniMoEForCausalLM",
    }
    test_all_params_have_gradient = False
    _is_composite = True

    def setUp(self):
        super().setUp()
        self.model_tester = UniMoEVisionText2TextModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=UniMoEConfig,
            has_text_modality=False,
            common_properties=["image_token_id", "vision_feature_layer", "image_seq_length"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_mismatching_num_image_tokens(self):
        """As Llava's test: more or fewer images than placeholders is a ValueError, matching counts work."""
        config, input_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            model(**input_dict)  # one image and one video per row: fine
            with self.assertRaises(ValueError):
                model(**{**input_dict, "pixel_values": input_dict["pixel_values"][-1:]})
            row = {key: value[:1] for key, value in input_dict.items() if key != "attention_mask"}
            doubled_ids = torch.cat([row["input_ids"], row["input_ids"]], 1)  # two images, two videos
            with self.assertRaises(ValueError):
                model(**{**row, "input_ids": doubled_ids})
            model(**{key: torch.cat([value, value], 1 if key == "input_ids" else 0) for key, value in row.items()})


# ---------------------------------------------------------------------------------------------------------------------
# Controls: the same testers and mixins on native transformers models (UNIMOE_NATIVE_CONTROLS=1)
# ---------------------------------------------------------------------------------------------------------------------
if os.environ.get("UNIMOE_NATIVE_CONTROLS"):
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaModel,
        MixtralConfig,
        MixtralForCausalLM,
        MixtralModel,
    )

    class MixtralModelTester(UniMoETextModelTester):
        config_class = MixtralConfig
        base_model_class = MixtralModel
        causal_lm_class = MixtralForCausalLM

        def get_config(self):
            text = self.get_text_config()
            text.pop("moe_layers")
            return MixtralConfig(**text, head_dim=self.head_dim)

    @_generation_stub
    class MixtralNativeControlTest(
        _SkipKnownNative, _Timed, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase
    ):
        all_model_classes = (MixtralModel, MixtralForCausalLM)
        test_all_params_have_gradient = False

        def setUp(self):
            super().setUp()
            self.model_tester = MixtralModelTester(self)
            self.config_tester = ConfigTester(self, config_class=MixtralConfig, hidden_size=37)

        def test_config(self):
            self.config_tester.run_common_tests()

    class LlavaModelTester(UniMoEVisionText2TextModelTester):
        def __init__(self, parent, **kwargs):
            super().__init__(parent, use_video=False, **kwargs)
            self.text_config = {
                "model_type": "mixtral",  # a Llava whose language model is Mixtral: the closest native to Uni-MoE
                **{k: v for k, v in self.text_config.items() if k != "moe_layers"},
                "head_dim": self.hidden_size // self.num_attention_heads,
            }

        def get_config(self):
            return LlavaConfig(
                text_config=self.text_config,
                vision_config=self.vision_config,
                image_token_id=self.image_token_id,
                vision_feature_layer=self.vision_feature_layer,
                vision_feature_select_strategy="default",
                projector_hidden_act=self.projector_hidden_act,
                image_seq_length=self.num_image_tokens,
            )

    @_generation_stub
    class LlavaNativeControlTest(_SkipKnownNative, _Timed, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
        all_model_classes = (LlavaModel, LlavaForConditionalGeneration)
        test_all_params_have_gradient = False
        _is_composite = True

        def setUp(self):
            super().setUp()
            self.model_tester = LlavaModelTester(self)
            self.config_tester = ConfigTester(
                self,
                config_class=LlavaConfig,
                has_text_modality=False,
                common_properties=["image_token_id", "vision_feature_layer", "image_seq_length"],
            )

        def test_config(self):
            self.config_tester.run_common_tests()
