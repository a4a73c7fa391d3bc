"""The embedded demo: a mini zoo of glyph-pretrained CNNs -> Zoo-Tuning on real handwritten digits.

``model.py``: the architecture of the mini zoo; ``zoo.py``: loading the shipped weights (also
the zoo preset ``demo``); ``data.py``: the demo's source domains and its target task;
``build_zoo.py``: re-creates the shipped weights (``python -m zootune.demo.build_zoo``);
``run.py``: the comparison that ``zootune demo`` prints. A consumer of the library like any
user script: the library must never import it (the ``demo`` preset names its files by path).
"""
