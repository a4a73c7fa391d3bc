"""zootune: transfer learning from a zoo of pretrained models (Zoo-Tuning, ICML 2021).

Data flows one way: zoo (load checkpoints) -> zoo_tune (aggregate) -> trainer (task) ->
report / export.

>>> import zootune
>>> zm = zootune.zoo_tune(models, lite=True)   # models: nn.Modules of one architecture
>>> y = zm(x)
>>> zm.gate_values()                           # {layer: (m,) gates}
>>> plain = zm.export()                        # lite: an ordinary model of models[0]'s class
>>> zootune.save(zm, "run/model.safetensors")
>>> zootune.methods.available(), zootune.tasks.available()   # what a config's method/task may say

Packages: ``zoo`` (where checkpoints come from), ``layers`` + ``convert`` (Zoo-Tuning itself),
``methods`` and ``tasks`` (registries of plug-ins), ``data``, ``train`` (the shared loop and its
parts), ``export`` (the one model format), ``report``/``viz``, ``select`` (transferability
scores), ``commands`` (the CLI). See ARCHITECTURE.md for the data flow and the plug-in points.
"""

__version__ = "0.1.0"

from .batchnorm import recalibrate_batchnorm
from .convert import ZooModel, select_layers, validate_zoo, zoo_tune
from .errors import ZootuneError
from .export import load, save

_LAZY = ("methods", "tasks", "zoo", "train", "data", "select", "align")


def __getattr__(name: str):
    """``zootune.methods`` etc. import on first use (``import zootune`` stays light)."""
    if name == "align_zoo":  # torch.fx and scipy load only when alignment is used
        from .align import align_zoo

        return align_zoo
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'zootune' has no attribute {name!r}")


__all__ = [
    "ZooModel",
    "ZootuneError",
    "align_zoo",
    "load",
    "recalibrate_batchnorm",
    "save",
    "select_layers",
    "validate_zoo",
    "zoo_tune",
]
