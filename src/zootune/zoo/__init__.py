"""Where a zoo's checkpoints come from: timm, torchvision, the Hugging Face hub, local files.

This package loads models and checks that they can form one zoo; it knows nothing of
aggregation (``zootune.zoo_tune`` takes the modules it returns).

Main entry points::

    from zootune.zoo import load, load_zoo

    m = load("timm:resnet50.a1_in1k")                       # an nn.Module
    m = load("torchvision:resnet50:IMAGENET1K_V1", pretrained=False)   # same arch, random
    m = load("file:moco.pth.tar arch=resnet50")             # raw checkpoint into an arch
    m = load("file:w.safetensors arch=mypkg.models:SmallNet")  # ... or into your own builder

    zoo = load_zoo("paper-resnet50")                         # the paper's five ResNet-50s
    zoo = load_zoo(["timm:resnet50.a1_in1k", "torchvision:resnet50"], strip_heads=True,
                   offline=True, checkpoint_dir="/data/ckpts")
    zm = zootune.zoo_tune(zoo, ...)                          # a Zoo is a list of modules
    zoo.names, zoo.preprocessing, zoo.reports, zoo.relatedness, zoo.warnings
    transform = build_transform(zoo.preprocessing, train=True)

``load(spec, pretrained=True, *, offline=None, checkpoint_dir=None, arch=None, strict=None,
name=None)`` -> ``nn.Module`` carrying ``zootune_spec``, ``zootune_preprocessing`` and
``zootune_load_report``. Spec grammar: :mod:`zootune.zoo.spec` (``timm:``, ``torchvision:``,
``torchvision-backbone:``, ``hf:``, ``file:``, ``url:``; options ``arch=``, ``name=``,
``strict=``).

``load_zoo(specs, *, pretrained=True, strip_heads=None, offline=None, checkpoint_dir=None,
arch=None, check_related=None, unify=True, warn=True)`` -> :class:`Zoo`. ``specs`` is one
spec, a preset name, or a list mixing both (strings or ``{"spec": ..., "arch": ...,
"name": ...}`` mappings, as they come from a YAML config). It validates one architecture
(:class:`ZooMismatchError` naming the first differing parameter and both shapes), strips heads
on request (presets whose heads differ turn it on), reports per-member mapped / missing /
dropped keys, merges preprocessing (warning when members disagree) and warns when members look
independently trained (:mod:`zootune.zoo.relatedness`).

Presets: :mod:`zootune.zoo.presets` (``paper-resnet50``: exactly which published weights).
Checkpoint files: :mod:`zootune.zoo.checkpoint` (``weights_only=True``, wrappers, NaN/Inf
check). Key mapping (``module.``, MoCo's ``module.encoder_q.``, ``backbone.body.`` /
``backbone.`` of detection and segmentation models, ``FrozenBatchNorm2d`` statistics):
:mod:`zootune.zoo.keymap`. Offline behaviour and checkpoint directories
(``ZOOTUNE_OFFLINE=1``, ``HF_HUB_OFFLINE=1``, ``ZOOTUNE_CHECKPOINT_DIR``): :mod:`zootune.zoo.cache`.
All errors derive from :class:`zootune.errors.ZootuneError` (:mod:`zootune.zoo.errors`).
"""

from __future__ import annotations

from zootune.zoo.cache import ENV_CHECKPOINT_DIR, ENV_OFFLINE, is_offline
from zootune.zoo.checkpoint import check_finite, read_checkpoint
from zootune.zoo.errors import (
    CheckpointError,
    DownloadError,
    NonFiniteWeightsError,
    OfflineError,
    UnsafeCheckpointError,
    ZooMismatchError,
    ZooSpecError,
)
from zootune.zoo.keymap import KeyMapReport, map_state_dict
from zootune.zoo.load import (
    Zoo,
    ZooLoadWarning,
    check_same_architecture,
    expand_specs,
    load,
    load_zoo,
    strip_head,
)
from zootune.zoo.preprocess import (
    Preprocessing,
    PreprocessingWarning,
    build_transform,
    preprocessing_of,
    zoo_preprocessing,
)
from zootune.zoo.presets import PRESETS, preset_names
from zootune.zoo.relatedness import (
    RELATED_THRESHOLD,
    Relatedness,
    UnrelatedZooWarning,
    relatedness,
)
from zootune.zoo.spec import ZooSpec, parse_spec

__all__ = [
    "CheckpointError",
    "DownloadError",
    "ENV_CHECKPOINT_DIR",
    "ENV_OFFLINE",
    "KeyMapReport",
    "NonFiniteWeightsError",
    "OfflineError",
    "PRESETS",
    "Preprocessing",
    "PreprocessingWarning",
    "RELATED_THRESHOLD",
    "Relatedness",
    "UnrelatedZooWarning",
    "UnsafeCheckpointError",
    "Zoo",
    "ZooLoadWarning",
    "ZooMismatchError",
    "ZooSpec",
    "ZooSpecError",
    "build_transform",
    "check_finite",
    "check_same_architecture",
    "expand_specs",
    "is_offline",
    "load",
    "load_zoo",
    "map_state_dict",
    "parse_spec",
    "preprocessing_of",
    "preset_names",
    "read_checkpoint",
    "relatedness",
    "strip_head",
    "zoo_preprocessing",
]
