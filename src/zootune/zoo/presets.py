"""Named zoos: a preset expands to a list of member specs.

``paper-resnet50`` -- the five ResNet-50s of Zoo-Tuning §4.2 (Shu et al., ICML 2021). The paper
says only "supervised ImageNet, MoCo, Mask R-CNN, DeepLabV3 and Keypoint R-CNN ... found in
torchvision or the original implementation"; the authors' public code (github.com/thuml/
Zoo-Tuning, ``module/backbone.py``) names the exact files, and this preset uses the same ones:

============  ============================================================================
member        published weights
============  ============================================================================
imagenet      torchvision ``ResNet50_Weights.IMAGENET1K_V1`` (top-1 76.13), file
              ``resnet50-0676ba61.pth`` -- the same weights torchvision first published as
              ``resnet50-19c8e357.pth``, which the authors' code loads.
moco          MoCo v1, 200 epochs on ImageNet-1k without labels (He et al., CVPR 2020), from
              the authors' repository github.com/facebookresearch/moco: ``https://dl.
              fbaipublicfiles.com/moco/moco_checkpoints/moco_v1_200ep/moco_v1_200ep_pretrain.
              pth.tar``. The query encoder (``module.encoder_q.``) is used; its 128-d
              projection ``fc`` is a head. Not on torchvision or timm, hence a ``url:`` spec.
maskrcnn      trunk of torchvision ``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``
              (``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``; COCO 2017, box AP 37.9)
deeplabv3     trunk of torchvision ``DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1``
              (``deeplabv3_resnet50_coco-cd0a2569.pth``; COCO 2017 subset, VOC classes)
keypointrcnn  trunk of torchvision ``KeypointRCNN_ResNet50_FPN_Weights.COCO_V1``
              (``keypointrcnn_resnet50_fpn_coco-fc266e95.pth``; COCO 2017 person keypoints)
============  ============================================================================

The three COCO models were trained by torchvision from ``IMAGENET1K_V1``, so four of the five
share one initialisation; MoCo was trained from scratch, so ``zootune zoo inspect`` reports it
as unrelated to the others (see :mod:`zootune.zoo.relatedness`). All five heads differ (1000
classes, 128-d MoCo projection, none for the three trunks): load the preset with
``strip_heads=True``. To use it offline, put the five files above in a directory and pass
``checkpoint_dir=`` (or set ``ZOOTUNE_CHECKPOINT_DIR``).

``paper-resnet50-mocov2`` is the same zoo with MoCo v2 (800 epochs) in place of MoCo v1.

``demo`` -- the mini zoo shipped inside the package (``zootune/demo/weights``, described by its
``zoo.json``): a small CNN (:class:`zootune.demo.model.MiniCNN`, 1x16x16 grey-scale glyphs in
``[0, 1]``, no normalisation) pretrained on rendered Latin, Greek and Cyrillic letters, digits
and symbols (``base``), and four specialists fine-tuned from it (``latin``, ``greek``,
``cyrillic``, ``numerals``). The files are float16 and load as float32. Every member has its own
source head (179, 52, 39, 66, 54 classes), so heads are stripped by default, as for
``paper-resnet50``. Needs no download: ``zootune demo`` and tests use it offline.

``paper-mini`` -- a zoo shaped like the paper's, at CPU scale, shipped inside the package
(``zootune/demo/paper_zoo``, described by its ``zoo.json``; rebuilt by
``python benchmarks/paper_zoo.py``): five MiniCNNs, ``base`` (all glyph scripts, from a random
start), three fine-tuned from it for other kinds of task — ``script`` (Armenian letters),
``dense`` (denoising / inpainting, trunk only), ``keypoints`` (5 keypoints of a glyph in a
cluttered scene, trunk only) — and ``contrastive`` (SimCLR from its own random start), which
``zootune zoo inspect`` reports as unrelated, as MoCo in ``paper-resnet50``. Heads differ or
are absent, so they are stripped.

Some members of a preset, in a chosen order: ``paper-mini[contrastive,keypoints]``; a member
may repeat (``paper-mini[base,base,base,base,base]``: five copies of one model, the paper's
"5x ImageNet" of Table 4; repeated names become ``base#2``...). An unknown member name is an
error listing the preset's members.

These are *zoo* presets (which models form the zoo); the recipe presets of a training config
are another thing (:mod:`zootune.config`).
"""

from __future__ import annotations

from pathlib import Path

from zootune.zoo.errors import ZooSpecError

MOCO_V1_URL = (
    "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v1_200ep/"
    "moco_v1_200ep_pretrain.pth.tar"
)
MOCO_V2_URL = (
    "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/"
    "moco_v2_800ep_pretrain.pth.tar"
)

_PAPER = [
    ("imagenet", "torchvision:resnet50:IMAGENET1K_V1"),
    ("moco", f"url:{MOCO_V1_URL} arch=torchvision:resnet50"),
    ("maskrcnn", "torchvision-backbone:maskrcnn_resnet50_fpn:COCO_V1"),
    ("deeplabv3", "torchvision-backbone:deeplabv3_resnet50:COCO_WITH_VOC_LABELS_V1"),
    ("keypointrcnn", "torchvision-backbone:keypointrcnn_resnet50_fpn:COCO_V1"),
]

#: Folder of the shipped demo zoo's weights (inside the installed package).
DEMO_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "demo" / "weights"
#: Architecture of the demo zoo (an import path: see ``arch=`` in :mod:`zootune.zoo.spec`).
DEMO_ARCH = "zootune.demo.model:MiniCNN"
#: Members of the ``demo`` preset (``zootune.demo.zoo.DEFAULT_ZOO``), in order.
DEMO_MEMBERS = ("base", "latin", "greek", "cyrillic", "numerals")

#: Folder of the shipped CPU-scale paper-like zoo (``benchmarks/paper_zoo.py``).
PAPER_MINI_DIR = Path(__file__).resolve().parent.parent / "demo" / "paper_zoo"
#: Members of the ``paper-mini`` preset, in order.
PAPER_MINI_MEMBERS = ("base", "script", "dense", "keypoints", "contrastive")

ZOO_PRESETS: dict[str, list[tuple[str, str]]] = {
    "paper-resnet50": _PAPER,
    "paper-resnet50-mocov2": [
        (n, f"url:{MOCO_V2_URL} arch=torchvision:resnet50" if n == "moco" else s)
        for n, s in _PAPER
    ],
    "demo": [
        (n, f"file:{DEMO_WEIGHTS_DIR / (n + '.safetensors')} arch={DEMO_ARCH}")
        for n in DEMO_MEMBERS
    ],
    "paper-mini": [
        (n, f"file:{PAPER_MINI_DIR / (n + '.safetensors')} arch={DEMO_ARCH}")
        for n in PAPER_MINI_MEMBERS
    ],
}

# What each preset needs from the caller to form one zoo.
PRESET_DEFAULTS: dict[str, dict[str, object]] = {
    "paper-resnet50": {"strip_heads": True},
    "paper-resnet50-mocov2": {"strip_heads": True},
    "demo": {"strip_heads": True},
    "paper-mini": {"strip_heads": True},
}


def preset_names() -> list[str]:
    """Names of the zoo presets, sorted."""
    return sorted(ZOO_PRESETS)


def preset_key(name: str) -> str:
    """The preset a name refers to (``_``/``-`` and case folded, a ``[members]`` part dropped)."""
    return name.strip().split("[", 1)[0].strip().replace("_", "-").lower()


def expand_preset(name: str) -> list[tuple[str, str]] | None:
    """``[(member name, spec), ...]`` for a preset name (``_`` and ``-`` both accepted), or for
    ``PRESET[m1,m2,...]`` (those members, in that order, repeats allowed); ``None`` if ``name``
    is not a preset."""
    text = name.strip()
    members = ZOO_PRESETS.get(preset_key(text))
    if members is None or "[" not in text:
        return members
    if not text.endswith("]"):
        raise ZooSpecError(f"zoo preset {text!r}: write the members as PRESET[m1,m2,...]")
    wanted = [m.strip() for m in text[text.index("[") + 1:-1].split(",") if m.strip()]
    by_name = dict(members)
    unknown = [m for m in wanted if m not in by_name]
    if unknown or not wanted:
        raise ZooSpecError(f"zoo preset {text!r}: {'no member given' if not wanted else 'unknown member ' + repr(unknown[0])}"
                         f"; members of {preset_key(text)!r}: {', '.join(by_name)}")
    return [(m, by_name[m]) for m in wanted]
