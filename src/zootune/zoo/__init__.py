"""Where a zoo's checkpoints come from: timm, torchvision, the Hugging Face hub, local files.

This package loads models and checks that they can form one zoo; it knows nothing of
aggregation (``zootune.zoo_tune`` takes the modules it returns): it must never import
``zootune.convert``, ``zootune.layers``, ``zootune.train``, ``zootune.methods`` or
``zootune.commands``. It owns the one zoo type (:class:`Zoo`), the one head finder
(:func:`find_head`) and the one architecture check (:func:`check_same_architecture`).

Main entry points::

    from zootune.zoo import load, load_zoo

    m = load("timm:resnet50.a1_in1k")                       # an nn.Module
    m = load("torchvision:resnet50:IMAGENET1K_V1", pretrained=False)   # same arch, random
    m = load("file:moco.pth.tar arch=resnet50")             # raw checkpoint into an arch
    m = load("file:w.safetensors arch=mypkg.models:SmallNet")  # ... or into your own builder

    m = load("random:zootune.models:small_cnn seed=3")     # random weights, seeded

    zoo = load_zoo("paper-resnet50")                         # the paper's five ResNet-50s
    zoo = load_zoo("demo")                                   # the mini zoo shipped offline
    zoo = load_zoo(["timm:resnet50.a1_in1k", "torchvision:resnet50"], strip_heads=True,
                   offline=True, checkpoint_dir="/data/ckpts")
    zoo = load_zoo([{"spec": "file:a.safetensors", "arch": "zootune.models:small_cnn",
                     "kwargs": {"widths": [4, 8]}, "name": "a"}, ...])
    zm = zootune.zoo_tune(zoo, ...)                          # a Zoo is a list of modules
    zoo.names, zoo.specs, zoo.preprocessing, zoo.reports, zoo.relatedness, zoo.warnings, zoo.info
    transform = build_transform(zoo.preprocessing, train=True)
    find_head(model), strip_head(model)                      # the one head finder

``load(spec, pretrained=True, *, offline=None, checkpoint_dir=None, arch=None, strict=None,
name=None)`` -> ``nn.Module`` carrying ``zootune_spec``, ``zootune_preprocessing`` and
``zootune_load_report``. Spec grammar: :mod:`zootune.zoo.spec` (``timm:``, ``torchvision:``,
``torchvision-backbone:``, ``hf:``, ``file:``, ``url:``, ``random:ARCH``; options ``arch=``,
``name=``, ``strict=``, ``seed=`` (``random:`` only, default 0); a mapping form may add
``kwargs:``, keyword arguments for the architecture builder). ``random:ARCH`` builds ``ARCH``
under ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``: the weights depend on
(ARCH, kwargs, seed) only and the global random state is untouched (name ``random{seed}``).

``load_zoo(specs, *, pretrained=True, strip_heads=None, offline=None, checkpoint_dir=None,
arch=None, check_related=None, unify=True, warn=True)`` -> :class:`Zoo`. ``specs`` is one
spec, a preset name, or a list mixing both (strings or ``{"spec": ..., "arch": ...,
"kwargs": {...}, "name": ...}`` mappings, as they come from a YAML config). It validates one
architecture (:func:`check_same_architecture`: :class:`ZooMismatchError` naming both members,
the first differing key and both shapes), strips heads on request (``strip_heads=True``;
``"differing"``: only when the members' heads differ; presets whose heads differ turn it on),
reports per-member mapped / missing / dropped keys, merges preprocessing (warning when members
disagree) and warns when members look independently trained (:mod:`zootune.zoo.relatedness`).

:class:`Zoo` is the one zoo type of zootune (a ``list`` of modules with ``names``, ``specs``,
``preprocessing``, ``reports``, ``relatedness``, ``warnings`` and ``info``); ``Zoo(models,
names)`` wraps modules built by hand.

Presets (:data:`ZOO_PRESETS`): :mod:`zootune.zoo.presets` (``paper-resnet50``: exactly which
published weights; ``demo``: the shipped mini zoo).
Checkpoint files: :mod:`zootune.zoo.checkpoint` (``weights_only=True``, wrappers, NaN/Inf
check). Key mapping (``module.``, MoCo's ``module.encoder_q.``, ``backbone.body.`` /
``backbone.`` of detection and segmentation models, ``FrozenBatchNorm2d`` statistics):
:mod:`zootune.zoo.keymap`. Offline behaviour and checkpoint directories
(``ZOOTUNE_OFFLINE=1``, ``HF_HUB_OFFLINE=1``, ``ZOOTUNE_CHECKPOINT_DIR``): :mod:`zootune.zoo.cache`.
All errors derive from :class:`zootune.errors.ZootuneError` (:mod:`zootune.zoo.errors`).
"""

from __future__ import annotations

from zootune.zoo.cache import ENV_CHECKPOINT_DIR, ENV_OFFLINE, is_offline
from zootune.zoo.check import check_same_architecture
from zootune.zoo.checkpoint import check_finite, read_checkpoint
from zootune.zoo.errors import (
    CheckpointError,
    DownloadError,
    HeadError,
    NonFiniteWeightsError,
    OfflineError,
    UnsafeCheckpointError,
    ZooMismatchError,
    ZooSpecError,
)
from zootune.zoo.heads import find_head, strip_head
from zootune.zoo.keymap import KeyMapReport, map_state_dict
from zootune.zoo.load import Zoo, ZooLoadWarning, expand_specs, heads_differ, load, load_zoo
from zootune.zoo.preprocess import (
    Preprocessing,
    PreprocessingWarning,
    build_transform,
    preprocessing_of,
    zoo_preprocessing,
)
from zootune.zoo.presets import ZOO_PRESETS, preset_names
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
    "HeadError",
    "KeyMapReport",
    "NonFiniteWeightsError",
    "OfflineError",
    "Preprocessing",
    "PreprocessingWarning",
    "RELATED_THRESHOLD",
    "Relatedness",
    "UnrelatedZooWarning",
    "UnsafeCheckpointError",
    "ZOO_PRESETS",
    "Zoo",
    "ZooLoadWarning",
    "ZooMismatchError",
    "ZooSpec",
    "ZooSpecError",
    "build_transform",
    "check_finite",
    "check_same_architecture",
    "expand_specs",
    "find_head",
    "heads_differ",
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
