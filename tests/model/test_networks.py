"""models: backbones from timm, stage-1 / combined models, the shared-feature ensemble, the rule."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from napari_allbag.model.networks import (
    CLASS_NAMES,
    BackboneWeightsError,
    CombinedHead,
    CombinedModel,
    Ensemble,
    Preprocess,
    Stage1Model,
    UnknownBackboneError,
    create_backbone,
    decide,
    resolve_backbone,
)
from tests.model_factory import make_tiny_models


def _crops(n=5, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=generator)


def test_resolve_backbone_reads_timm_pretrained_config():
    config = resolve_backbone("inception_resnet_v2")
    assert (config.img_size, config.mean, config.std) == (299, (0.5,) * 3, (0.5,) * 3)
    resnet = resolve_backbone("resnet10t")
    assert resnet.img_size == 176
    assert resnet.mean == pytest.approx((0.485, 0.456, 0.406))
    custom = resolve_backbone("resnet10t", img_size=64, mean=(0.1, 0.2, 0.3), std=(1, 1, 1))
    assert (custom.img_size, custom.mean, custom.std) == (64, (0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    assert type(custom).from_dict(custom.to_dict()) == custom


def test_unknown_backbone_names_close_matches():
    with pytest.raises(UnknownBackboneError) as caught:
        resolve_backbone("inception_resnet_v3")
    assert "inception_resnet_v2" in caught.value.suggestions
    assert "inception_resnet_v2" in str(caught.value)
    with pytest.raises(UnknownBackboneError):
        create_backbone("not_a_model_at_all", pretrained=False)


def test_stage1_model_is_backbone_pool_and_two_class_head():
    model = Stage1Model(create_backbone("test_resnet", pretrained=False)).eval()
    x = torch.randn(3, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape == (3, model.num_features)
    assert torch.equal(model(x), model.forward_head(features))
    assert model(x).shape == (3, len(CLASS_NAMES))


def test_combined_head_follows_the_paper():
    head = CombinedHead(96, 80)
    layers = list(head.mlp)
    assert isinstance(head.bn_a, nn.BatchNorm1d) and head.bn_a.num_features == 96
    assert isinstance(head.bn_b, nn.BatchNorm1d) and head.bn_b.num_features == 80
    linear = [m for m in layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [
        (176, 1024),
        (1024, 1024),
        (1024, 2),
    ]
    assert [m.p for m in layers if isinstance(m, nn.Dropout)] == [0.6, 0.6]
    assert sum(isinstance(m, nn.ReLU) for m in layers) == 2
    assert head.eval()(torch.randn(4, 96), torch.randn(4, 80)).shape == (4, 2)


def test_frozen_combined_model_keeps_backbones_fixed_in_training_mode():
    model_a, model_b, head, _ = make_tiny_models()
    combined = CombinedModel(model_a, model_b, head, freeze_backbones=True).train()
    assert not any(p.requires_grad for p in model_a.backbone.parameters())
    assert not model_a.backbone.training and not model_b.backbone.training
    assert combined.training and head.training
    assert all(p.requires_grad for p in head.parameters())


def test_preprocess_normalises_on_the_device_side_and_resizes():
    config = resolve_backbone("test_resnet", img_size=64, mean=(0.2, 0.4, 0.6), std=(0.5, 0.25, 2))
    preprocess = Preprocess(config)
    crops = _crops(2, 64)
    out = preprocess(crops)
    expected = (
        crops.permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    ) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    assert out.shape == (2, 3, 64, 64)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, expected, atol=1e-5)
    bigger = preprocess(_crops(2, 80))
    assert bigger.shape == (2, 3, 64, 64)
    # NCHW float input in 0..1 gives the same as uint8 NHWC
    assert torch.allclose(preprocess(crops.permute(0, 3, 1, 2).float() / 255), out, atol=1e-5)


@pytest.mark.parametrize("own_backbones", [False, True])
def test_ensemble_equals_the_three_models_run_separately(own_backbones):
    model_a, model_b, head, config = make_tiny_models(seed=1, own_backbones=own_backbones)
    preprocess = Preprocess(config)
    ensemble = Ensemble(model_a, model_b, head, preprocess).eval()
    combined = head if own_backbones else CombinedModel(model_a, model_b, head)
    combined.eval()
    crops = _crops(6, 72)
    with torch.no_grad():
        probs = ensemble(crops)
        pixels = preprocess(crops)
        separate = torch.stack(
            [
                model_a(pixels).softmax(-1),
                model_b(pixels).softmax(-1),
                combined(pixels).softmax(-1),
            ],
            dim=1,
        )
    assert probs.shape == (6, 3, 2)
    assert torch.allclose(probs, separate, atol=1e-6)
    assert ensemble.backbone_passes == (4 if own_backbones else 2)
    # the three models do not agree with each other (the test would be empty otherwise)
    assert not torch.allclose(probs[:, 0], probs[:, 2], atol=1e-4)


def test_ensemble_runs_each_backbone_once():
    model_a, model_b, head, config = make_tiny_models()
    ensemble = Ensemble(model_a, model_b, CombinedModel(model_a, model_b, head), Preprocess(config))
    calls = []
    for name, model in (("a", model_a), ("b", model_b)):
        model.backbone.register_forward_hook(lambda *_, name=name: calls.append(name))
    with torch.no_grad():
        ensemble.eval()(_crops(3))
    assert sorted(calls) == ["a", "b"]


def test_decide_takes_the_single_highest_probability():
    probs = np.array(
        [
            [[0.60, 0.40], [0.30, 0.70], [0.45, 0.55]],  # 0.70 ALL from model-B
            [[0.95, 0.05], [0.40, 0.60], [0.45, 0.55]],  # two of three say ALL, HEM 0.95 wins
            [[0.20, 0.80], [0.10, 0.90], [0.97, 0.03]],  # combined's HEM 0.97 beats 0.90
            [[0.50, 0.50], [0.49, 0.51], [0.48, 0.52]],  # 0.52 ALL
        ],
        dtype=np.float32,
    )
    labels, confidence = decide(probs)
    assert labels.tolist() == [1, 0, 0, 1]
    assert confidence == pytest.approx([0.70, 0.95, 0.97, 0.52])
    torch_labels, torch_conf = decide(torch.from_numpy(probs))
    assert torch_labels.tolist() == [1, 0, 0, 1]
    assert torch.allclose(torch_conf, torch.from_numpy(confidence))
    one_label, one_conf = decide(probs[2])
    assert int(one_label) == 0 and float(one_conf) == pytest.approx(0.97)
    empty_labels, empty_conf = decide(np.zeros((0, 3, 2), np.float32))
    assert empty_labels.shape == empty_conf.shape == (0,)


def test_local_weights_replace_the_download(tmp_path):
    source = timm.create_model("test_resnet", pretrained=False)  # with its classifier
    weights = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    backbone = create_backbone("test_resnet", pretrained=True, weights_path=weights).eval()
    reference = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    reference.load_state_dict(
        {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    )
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(backbone(x), reference(x))


class _LeavesAMark:
    """Unpickling this creates a file: proof that a pickle was (or was not) opened."""

    def __init__(self, mark):
        self.mark = str(mark)

    def __reduce__(self):
        return (open, (self.mark, "w"))


def test_pickle_weights_are_refused_without_being_opened(tmp_path):
    mark = tmp_path / "unpickled"
    pth = tmp_path / "weights.pth"
    torch.save({"state_dict": _LeavesAMark(mark)}, pth)
    with pytest.raises(BackboneWeightsError) as caught:
        create_backbone("test_resnet", pretrained=False, weights_path=pth)
    message = str(caught.value)
    assert "weights.pth" in message and "never unpickles" in message and ".safetensors" in message
    assert not mark.exists()


def test_local_weights_that_do_not_fit_are_refused_clearly(tmp_path):
    other = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    weights = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(weights))
    with pytest.raises(BackboneWeightsError) as caught:
        create_backbone("test_resnet", pretrained=False, weights_path=weights)
    message = str(caught.value)
    assert "resnet10t.safetensors" in message and "missing" in message

    state = timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict()
    state["conv1.0.weight"] = torch.zeros(4, 3, 3, 3)
    reshaped = tmp_path / "reshaped.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(reshaped))
    with pytest.raises(BackboneWeightsError) as caught:
        create_backbone("test_resnet", pretrained=False, weights_path=reshaped)
    assert "'conv1.0.weight'" in str(caught.value) and "(4, 3, 3, 3)" in str(caught.value)

    disguised = tmp_path / "weights.safetensors"
    torch.save(other.state_dict(), disguised)
    with pytest.raises(BackboneWeightsError, match="pickle"):
        create_backbone("resnet10t", pretrained=False, weights_path=disguised)
    with pytest.raises(BackboneWeightsError, match="not found"):
        create_backbone(
            "resnet10t", pretrained=False, weights_path=tmp_path / "missing.safetensors"
        )
