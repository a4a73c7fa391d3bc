"""Target data sets for the trainer, their samples and transforms.

Owns the data registry (``build_data(cfg.data, preprocessing)`` returns :class:`DataSplits` for
the data set named by ``cfg.data.name``; built in: ``digits`` (scikit-learn's handwritten
digits, real data, no download), ``image_folder`` (one sub-folder per class), ``shapes``
(procedural geometric shapes on textured backgrounds, :mod:`.shapes`), the glyph domains and
demo target, procedural faces and the landmark sets, and the torchvision-read paper targets;
other modules add theirs with :func:`register_dataset`), the sample convention (dicts of named fields,
:mod:`.sample`), seeded joint transforms and the evaluation preprocessing record that exported
models carry (:mod:`.transforms`). Must never import :mod:`zootune.train`,
:mod:`zootune.methods`, :mod:`zootune.tasks` or :mod:`zootune.commands`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from zootune.data.base import DataError, DataSplits, TransformedDataset

DatasetBuilder = Callable[[Any, "Mapping[str, Any] | None"], DataSplits]

_REGISTRY: dict[str, str | DatasetBuilder] = {
    "digits": "zootune.data.digits:build_digits",
    "image_folder": "zootune.data.image_folder:build_image_folder",
    "glyphs": "zootune.demo.data:_build_glyphs",
    "demo_target": "zootune.demo.data:_build_target",
    "shapes": "zootune.data.shapes:build_shapes",
    "procedural_faces": "zootune.data.landmarks:build_procedural_faces",
    "300w": "zootune.data.landmarks:build_300w",
    "wflw": "zootune.data.landmarks:build_wflw",
    "cofw": "zootune.data.landmarks:build_cofw",
    # the paper's targets that torchvision reads (offline: data.root holds the files)
    "cifar100": "zootune.data.torchvision_sets:build_cifar100",
    "aircraft": "zootune.data.torchvision_sets:build_aircraft",
    "stanford_cars": "zootune.data.torchvision_sets:build_stanford_cars",
    "eurosat": "zootune.data.torchvision_sets:build_eurosat",
}


def register_dataset(name: str, builder: DatasetBuilder | str) -> None:
    """Make ``data.name: NAME`` build with ``builder(cfg_data, preprocessing) -> DataSplits``."""
    _REGISTRY[name] = builder


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def build_data(cfg_data: Any, preprocessing: Mapping[str, Any] | None = None) -> DataSplits:
    """Build the splits named by ``cfg_data.name`` (a :class:`zootune.config.DataConfig`)."""
    entry = _REGISTRY.get(cfg_data.name)
    if entry is None:
        raise DataError(f"unknown data set {cfg_data.name!r}; valid: {', '.join(dataset_names())}")
    if isinstance(entry, str):
        import importlib

        mod, _, fn = entry.partition(":")
        try:
            entry = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError):
            raise DataError(f"data set {cfg_data.name!r} is not available ({mod} is missing)") from None
    return entry(cfg_data, preprocessing)


__all__ = ["DataError", "DataSplits", "TransformedDataset", "build_data", "register_dataset",
           "dataset_names"]
