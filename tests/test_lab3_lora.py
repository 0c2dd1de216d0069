"""LoRA through PEFT: adapters exactly on the named modules, the parameter count formula, merge = unmerged."""
from __future__ import annotations

import re

import pytest
import torch

from trainables.lab3.lora import PRESETS, adapted_modules, apply_lora, param_counts, target_regex

D, LAYERS, LABELS = 64, 2, 2  # trainables.lab3.text_models.tiny_distilbert_config


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_classifier(seed: int = 0):
    from transformers import AutoModelForSequenceClassification

    from trainables.lab3.text_models import tiny_distilbert_config

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_distilbert_config(vocab_size=50))


def tiny_clip():
    from transformers import CLIPModel

    from trainables.lab3.clip_models import tiny_clip_config

    torch.manual_seed(0)
    return CLIPModel(tiny_clip_config(vocab_size=40))


ROLE_NAMES = {"qv": {"q_lin", "v_lin"}, "qkv": {"q_lin", "k_lin", "v_lin"},
              "qkvo": {"q_lin", "k_lin", "v_lin", "out_lin"}, "all": {"q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"}}


@pytest.mark.parametrize("preset", PRESETS)
def test_only_the_named_modules_get_adapters(preset):
    model = apply_lora(tiny_classifier(), rank=4, alpha=8, targets=preset)
    names = adapted_modules(model)
    expected = {f"layer.{i}.{'attention' if r not in ('lin1', 'lin2') else 'ffn'}.{r}"
                for i in range(LAYERS) for r in ROLE_NAMES[preset]}
    assert {re.sub(r"^.*transformer\.", "", n) for n in names} == expected
    assert len(names) == len(expected)
    # nothing but adapters and the new head trains
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "classifier.modules_to_save" in n for n in trainable), trainable


@pytest.mark.parametrize("rank", [1, 4, 16])
def test_trainable_parameter_count_is_the_lora_formula(rank):
    model = apply_lora(tiny_classifier(), rank=rank, alpha=16, targets="qkv")
    # r * (d_in + d_out) per adapted Linear (A: r x d_in, B: d_out x r), 3 per layer, plus the
    # new head trained whole: pre_classifier (D x D + D) and classifier (D x 2 + 2).
    head = (D * D + D) + (D * LABELS + LABELS)
    assert param_counts(model)["trainable_params"] == LAYERS * 3 * rank * (D + D) + head


def test_clip_adapters_follow_the_tower_choice_and_count():
    from transformers import CLIPModel  # noqa: F401  (import check)

    for towers, expect in (("vision", {"vision_model"}), ("text", {"text_model"}), ("both", {"vision_model", "text_model"})):
        model = apply_lora(tiny_clip(), rank=2, alpha=4, targets="qv", towers=towers)
        names = adapted_modules(model)
        assert {n.split(".")[2] for n in names} == expect  # base_model.model.<tower>....
        assert all(n.endswith(("q_proj", "v_proj")) for n in names)
        # 2 layers x 2 projections (64 -> 64) per tower, rank 2; no head
        assert param_counts(model)["trainable_params"] == len(expect) * 2 * 2 * 2 * (64 + 64)


def test_merged_and_unmerged_models_give_the_same_logits():
    model = apply_lora(tiny_classifier(), rank=4, alpha=8, targets="all", init_weights=False).eval()
    base = tiny_classifier().eval()
    ids = torch.randint(5, 50, (3, 12))
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        assert not torch.allclose(unmerged, base(input_ids=ids).logits, atol=1e-4)  # the adapters do act
        merged = model.merge_and_unload()(input_ids=ids).logits
    assert not adapted_modules(model.get_base_model())
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_regex_and_presets_reject_unknown_names():
    assert re.fullmatch(target_regex("distilbert", "qv"), "distilbert.transformer.layer.3.attention.q_lin")
    assert not re.fullmatch(target_regex("distilbert", "qv"), "distilbert.transformer.layer.3.attention.k_lin")
    assert re.fullmatch(target_regex("bert", "all"), "bert.encoder.layer.0.output.dense")
    assert not re.fullmatch(target_regex("bert", "qkv"), "bert.encoder.layer.0.attention.output.dense")
    with pytest.raises(ValueError, match="lora_targets"):
        target_regex("distilbert", "qz")
    with pytest.raises(ValueError, match="model type"):
        target_regex("gpt2", "qv")
