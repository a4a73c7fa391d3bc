"""Exceptions that carry a message meant for the user: the CLI prints them as one line."""


class ZootuneError(Exception):
    """Base class for errors caused by user input (bad zoo, config, file...)."""


class ZooMismatchError(ZootuneError, ValueError):
    """Models of a zoo do not share one architecture, or a weight is not finite."""


class LayerSelectionError(ZootuneError, ValueError):
    """A layer pattern matched nothing, or selected a layer that cannot be aggregated."""


class CheckpointError(ZootuneError, ValueError):
    """A saved file is missing, corrupt, or does not fit the template it is loaded into."""


class HeadError(ZootuneError, ValueError):
    """A classification head was asked for that the model does not have (an unknown module
    name, or a head that holds no ``nn.Linear``)."""
