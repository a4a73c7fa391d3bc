"""zootune: transfer learning from a zoo of pretrained models (Zoo-Tuning, ICML 2021).

Data flows one way: zoo (load checkpoints) -> zoo_tune (aggregate) -> trainer (task) ->
report / export.

>>> import zootune
>>> zm = zootune.zoo_tune(models, lite=True)   # models: nn.Modules of one architecture
>>> y = zm(x)
>>> zm.gate_values()                           # {layer: (m,) gates}
>>> plain = zm.export()                        # lite: an ordinary model of models[0]'s class
>>> zootune.save(zm, "run/model.safetensors")
"""

__version__ = "0.1.0"

from .batchnorm import recalibrate_batchnorm
from .convert import ZooModel, select_layers, validate_zoo, zoo_tune
from .errors import ZootuneError
from .export import load, save

__all__ = [
    "ZooModel",
    "ZootuneError",
    "load",
    "recalibrate_batchnorm",
    "save",
    "select_layers",
    "validate_zoo",
    "zoo_tune",
]
