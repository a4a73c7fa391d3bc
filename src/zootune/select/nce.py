"""NCE: negative conditional entropy of target labels given the source model's hard labels.

Tran, Nguyen & Hassner, "Transferability and Hardness of Supervised Classification Tasks",
ICCV 2019. With ``z_i`` the source label of sample ``i`` (the source head's argmax when the
samples come from the target set) and ``y_i`` the target label, from the empirical joint
``P(y, z) = #{i: y_i = y, z_i = z} / N``:

    NCE = -H(Y | Z) = sum_{y, z} P(y, z) log( P(y, z) / P(z) ).

It is <= 0, and 0 exactly when the source labels determine the target labels; larger is
better. Natural logarithm.
"""

from __future__ import annotations

import numpy as np
import torch

from ._inputs import ArrayLike, ScoreInputError, label_codes


def nce(source_labels: ArrayLike, labels: ArrayLike) -> float:
    """NCE score (<= 0, larger is better).

    Args:
        source_labels: ``(N,)`` hard source labels, or ``(N, Z)`` source probabilities/logits
            (the argmax of each row is used).
        labels: ``(N,)`` target labels.
    """
    if isinstance(source_labels, torch.Tensor):
        s = source_labels.detach().cpu().numpy()
    else:
        s = np.asarray(source_labels)
    if s.ndim == 2 and s.shape[1] > 1:
        if s.dtype.kind == "f" and not np.isfinite(s).all():
            raise ScoreInputError("source predictions contain NaN or Inf")
        s = s.argmax(1)
    n = s.shape[0] if s.ndim else 0
    if n == 0:
        raise ScoreInputError("source_labels is empty")
    y, c = label_codes(labels, n)
    z, k = label_codes(s, n, "source_labels", min_classes=1)
    joint = np.bincount(y * k + z, minlength=c * k).reshape(c, k).astype(np.float64) / n
    pz = joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / np.broadcast_to(pz, joint.shape)[nz])).sum())
