"""Backbones: the shipped ImageNet weights load completely and classify a real photograph.

Reference: skimage.data.chelsea() is a photo of a tabby cat. ImageNet-1k indices of the cat
classes (WordNet order of the ILSVRC-2012 synsets): 281 tabby (n02123045), 282 tiger cat
(n02123159), 283 Persian (n02123394), 284 Siamese (n02123597), 285 Egyptian cat (n02124075).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from visloc_core.models.backbones import (
    build_backbone,
    efficientnet_lite0_weights_path,
    mobilenet_v2_weights_path,
)

CAT_CLASSES = {281, 282, 283, 284, 285}
NAMES = ["efficientnet_lite0", "mobilenet_v2"]


def _chelsea_B3HW(size: int = 224) -> torch.Tensor:
    img = cv2.resize(skimage.data.chelsea(), (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0


@pytest.mark.parametrize("name", NAMES)
def test_weights_match_architecture_exactly(name: str) -> None:
    path = efficientnet_lite0_weights_path() if name == "efficientnet_lite0" else mobilenet_v2_weights_path()
    sd = torch.load(path, map_location="cpu", weights_only=True)
    model = build_backbone(name, pretrained=False)
    own = set(model.state_dict()) - {"mean", "std"}
    assert own == set(sd), (sorted(own - set(sd))[:5], sorted(set(sd) - own)[:5])
    # and build_backbone(pretrained=True) really copies them
    pre = build_backbone(name, pretrained=True)
    for k, v in sd.items():
        assert torch.equal(pre.state_dict()[k], v), k


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_classifies_cat_photo(name: str) -> None:
    model = build_backbone(name, pretrained=True).eval()
    with torch.inference_mode():
        prob = model.classify(_chelsea_B3HW()).softmax(1)[0]
    top5 = set(prob.topk(5).indices.tolist())
    assert int(prob.argmax()) in CAT_CLASSES
    assert len(top5 & CAT_CLASSES) >= 3
    assert float(prob[list(CAT_CLASSES)].sum()) > 0.8


@pytest.mark.parametrize("name", NAMES)
def test_random_init_does_not_classify(name: str) -> None:
    model = build_backbone(name, pretrained=False).eval()
    with torch.inference_mode():
        prob = model.classify(_chelsea_B3HW()).softmax(1)[0]
    assert float(prob[list(CAT_CLASSES)].sum()) < 0.2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(120, 160), (96, 128)])
def test_feature_shapes_per_reduction(name: str, hw: tuple[int, int]) -> None:
    model = build_backbone(name, pretrained=False).eval()
    h, w = hw
    with torch.inference_mode():
        feats = model(torch.rand(2, 3, h, w))
    assert set(feats) == {8, 16, 32} == set(model.channels)
    for r, f in feats.items():
        assert f.shape == (2, model.channels[r], int(np.ceil(h / r)), int(np.ceil(w / r)))


def test_bad_input_and_name() -> None:
    model = build_backbone("mobilenet_v2", pretrained=False)
    with pytest.raises(ValueError, match="image_B3HW"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet18")
