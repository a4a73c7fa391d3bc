"""Methods: what is trained from a zoo for a task, as registered plug-ins.

Owns the :class:`Method` interface, its registry (:func:`register`, :func:`available`,
:func:`get`) and the built-in methods: ``scratch``, ``finetune`` (:mod:`.single`),
``zoo_tuning``, ``zoo_tuning_lite``, ``average_aggregation`` (:mod:`.aggregation`).
A method builds its model(s) from the zoo and the task, may add a loss, trainable modules and
stages. It must never import :mod:`zootune.train` (the trainer drives methods, not the reverse)
or :mod:`zootune.commands`.
"""

from zootune.methods.base import (
    BuildContext,
    Method,
    MethodError,
    MethodOptions,
    Stage,
    StageResult,
    available,
    build_method,
    get,
    register,
)
from zootune.methods.aggregation import AverageAggregation, ZooTuning, ZooTuningLite  # noqa: E402
from zootune.methods.single import FineTune, Scratch, reset_parameters  # noqa: E402

__all__ = ["AverageAggregation", "FineTune", "Scratch", "ZooTuning", "ZooTuningLite",
           "reset_parameters", "BuildContext", "Method", "MethodError", "MethodOptions", "Stage", "StageResult",
           "available", "build_method", "get", "register"]
from zootune.methods import regularizers  # noqa: E402,F401  (L2-SP, DELTA, BSS)
from zootune.methods.co_tuning import CoTuning  # noqa: E402,F401
from zootune.methods import ced, distill, ensemble, feature_extraction, knowledge_flow  # noqa: E402,F401  (paper baselines)
from zootune.methods import contrastive  # noqa: E402,F401  (SimCLR self-supervised)
