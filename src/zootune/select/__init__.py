"""Transferability scores: rank a zoo of pretrained models for a target task before training.

Pure functions on arrays (numpy or torch, CPU or GPU; computed in float64). Each returns one
float, larger = better expected transfer:

- :func:`logme` - log marginal evidence of a Bayesian linear model on the features (You et al.
  2021); also the regression form for continuous targets.
- :func:`leep` - log expected empirical prediction from the source head (Nguyen et al. 2020).
- :func:`nce` - negative conditional entropy of target given source labels (Tran et al. 2019).
- :func:`hscore` - H-score (Bao et al. 2019), and ``shrinkage=True`` for the Ledoit-Wolf
  regularised form (Ibrahim et al. 2022).
- :func:`lfc`, :func:`lgc` - label-feature / label-gradient correlation (Deshpande et al. 2021).
- :func:`rsa` - representation similarity with a probe trained on the target (Dwivedi & Roig
  2019); :func:`probe_features` makes a cheap probe.
- :func:`domain_similarity` - exp(-gamma EMD) between source and target features (Cui et al. 2018).

:mod:`zootune.select.features` extracts what the scores need from a zoo (with a disk cache),
:func:`score_features` runs every applicable score, and :mod:`zootune.select.ranking`
measures a ranking against fine-tuned accuracies. The scores must never import
:mod:`zootune.train`, :mod:`zootune.methods` or :mod:`zootune.commands`.
"""

from ._inputs import ScoreInputError
from .correlation import lfc, lgc, random_project
from .domain import domain_similarity
from .hscore import hscore
from .leep import leep
from .logme import logme, logme_reference
from .nce import nce
from .probe import probe_features
from .rsa import rsa
from .scoring import SCORE_NAMES, rank_table, score_features

__all__ = [
    "ScoreInputError",
    "SCORE_NAMES",
    "domain_similarity",
    "hscore",
    "leep",
    "lfc",
    "lgc",
    "logme",
    "logme_reference",
    "nce",
    "probe_features",
    "random_project",
    "rank_table",
    "rsa",
    "score_features",
]
