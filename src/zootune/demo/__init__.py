"""The embedded demo: a mini zoo of glyph-pretrained CNNs -> Zoo-Tuning on real handwritten digits.

``model.py``: the architecture of the mini zoo; ``zoo.py``: loading the shipped weights;
``data.py``: the demo's source domains and its target task; ``build_zoo.py``: re-creates the
shipped weights (``python -m zootune.demo.build_zoo``); ``run.py``: the comparison that
``zootune demo`` prints.
"""
