"""The models the coverage sweep prunes, with their example inputs and output layers.

Every model gets random weights; nothing is downloaded. ``output_layers`` names
the layers whose outputs are the model's answer (class logits, box and mask
predictors, flow heads); both libraries get the same list as ``ignored_layers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Tuple

import torch
from torch import nn

# Output-producing layers of torchvision's detection, segmentation and flow heads, by name suffix.
HEAD_SUFFIXES = (
    "cls_logits", "bbox_pred", "bbox_reg", "bbox_ctrness", "cls_score", "mask_fcn_logits", "kps_score_lowres",
    "low_classifier", "high_classifier", "flow_head.conv2",
)


@dataclass
class Case:
    """One sweep entry: how to build the model and its inputs, and which kind of output it gives."""

    suite: str
    name: str
    build: Callable[[], Tuple[nn.Module, Any]]
    kind: str = "classification"


def output_layers(model: nn.Module, kind: str) -> List[nn.Module]:
    """Layers that produce the model's outputs; the sweep keeps their output channels in both libraries."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    keep: List[nn.Module] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        if name.endswith(HEAD_SUFFIXES):
            keep.append(module)
        elif ".module_list." in name and ("classification_head" in name or "regression_head" in name):
            # SSD: one predictor conv per feature map (module_list.i); SSDlite: a depthwise conv, then
            # the predictor (module_list.i.0 and .1). Keeping the depthwise conv would freeze the backbone.
            if name.split(".module_list.")[1].split(".")[1:2] != ["0"]:
                keep.append(module)
        elif kind == "segmentation" and (name.startswith(("classifier.", "aux_classifier."))) \
                and module is [m for n, m in model.named_modules() if n.startswith(name.split(".")[0] + ".")
                               and isinstance(m, nn.modules.conv._ConvNd)][-1]:
            keep.append(module)
    if kind == "flow":
        mask = [m for n, m in model.named_modules() if n.startswith("mask_predictor")
                and isinstance(m, nn.modules.conv._ConvNd)]
        keep.extend(mask[-1:])
    if kind in ("classification", "video") and layers:
        # The last layer with one output per class (ImageNet 1000, Kinetics 400); hidden layers may be
        # as wide (regnet_x_400mf has 400-channel stages), and auxiliary heads come earlier.
        classes = 1000 if kind == "classification" else 400
        finals = [m for m in layers if getattr(m, "out_features", getattr(m, "out_channels", None)) == classes]
        keep.extend(finals[-1:] or layers[-1:])
    return list({id(m): m for m in keep}.values())


def _torchvision(name: str) -> Case:
    from torchvision.models import list_models, optical_flow, segmentation, video, detection

    def build(shape=(1, 3, 224, 224)):
        import torchvision

        model = torchvision.models.get_model(name).eval()
        return model, torch.randn(*shape)

    if name in list_models(module=detection):
        def build_detection():
            import torchvision

            # R-CNN, RetinaNet and FCOS resize to 800 px by default; 320 keeps the sweep's run time
            # reasonable. SSD and SSDlite fix their own input size (300 and 320).
            sizes = {} if name.startswith("ssd") else {"min_size": 320, "max_size": 320}
            model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **sizes).eval()
            return model, ([torch.rand(3, 320, 320)],)
        return Case("torchvision", name, build_detection, "detection")
    if name in list_models(module=segmentation):
        def build_segmentation():
            import torchvision

            model = torchvision.models.get_model(name, weights=None, weights_backbone=None).eval()
            return model, torch.randn(1, 3, 224, 224)
        return Case("torchvision", name, build_segmentation, "segmentation")
    if name in list_models(module=video):
        small = name in ("r3d_18", "mc3_18", "r2plus1d_18")
        shape = (1, 3, 8, 112, 112) if small else (1, 3, 16, 224, 224)
        return Case("torchvision", name, lambda: build(shape), "video")
    if name in list_models(module=optical_flow):
        def build_flow():
            import torchvision

            model = torchvision.models.get_model(name).eval()
            return model, (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128))
        return Case("torchvision", name, build_flow, "flow")
    size = 299 if "inception_v3" in name else 224
    return Case("torchvision", name, lambda: build((1, 3, size, size)), "classification")


def _timm(name: str) -> Case:
    def build():
        import timm

        model = timm.create_model(name, pretrained=False).eval()
        size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
        return model, torch.randn(1, *size)
    return Case("timm", name, build, "classification")


def timm_output_layers(model: nn.Module) -> List[nn.Module]:
    """The logits layer(s) of a timm model: its classifier, or the last Linear/Conv inside it."""
    classifier = model.get_classifier()
    keep: List[nn.Module] = []
    for part in classifier if isinstance(classifier, tuple) else (classifier,):
        if isinstance(part, (nn.Linear, nn.modules.conv._ConvNd)):
            keep.append(part)
        elif isinstance(part, nn.Module):
            keep.extend([m for m in part.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))][-1:])
    return keep


def load_timm_list(path: str) -> Tuple[str, ...]:
    """Model names from ``timm_families.txt`` (lines ``module model params``; ``#`` starts a comment)."""
    with open(path) as handle:
        return tuple(line.split()[1] for line in handle if line.strip() and not line.startswith("#"))


def cases(suites: Tuple[str, ...], timm_list: str) -> List[Case]:
    """Every sweep case of the chosen suites, in a stable order."""
    out: List[Case] = []
    if "torchvision" in suites:
        from torchvision.models import list_models

        out.extend(_torchvision(name) for name in sorted(list_models()))
    if "timm" in suites:
        out.extend(_timm(name) for name in load_timm_list(timm_list))
    return out
