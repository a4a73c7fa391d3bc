"""A cheap probe network for RSA: a one-hidden-layer MLP trained on the target inputs.

RSA (Dwivedi & Roig 2019) compares a source model's representation with that of a small
network trained on the target task. The seed paper trains a ResNet-18; here the default probe
is scikit-learn's ``MLPClassifier`` on (down-sampled, standardised) raw inputs, which trains in
seconds on a CPU and needs no trainer. Its hidden ReLU activations are the probe features.
Users with a better probe can pass its features to :func:`zootune.select.rsa` directly.
"""

from __future__ import annotations

import numpy as np
import torch

from ._inputs import ArrayLike, as_matrix, label_codes


def probe_features(
    inputs: ArrayLike,
    labels: ArrayLike,
    *,
    hidden: int = 128,
    max_side: int = 16,
    max_iter: int = 300,
    seed: int = 0,
) -> np.ndarray:
    """Train an MLP probe on ``inputs`` -> ``labels`` and return its hidden activations ``(N, hidden)``.

    Args:
        inputs: ``(N, ...)`` target inputs; images ``(N, C, H, W)`` are average-pooled so that
            their sides are at most ``max_side`` before flattening.
        labels: ``(N,)`` target labels.
        hidden: width of the hidden layer.
        max_iter: Adam epochs of the MLP.
        seed: seed of the MLP initialisation.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    x = torch.as_tensor(inputs.detach().cpu() if isinstance(inputs, torch.Tensor) else np.asarray(inputs))
    x = x.to(torch.float64)
    if x.ndim == 4 and max(x.shape[2], x.shape[3]) > max_side:
        x = torch.nn.functional.adaptive_avg_pool2d(x, (min(x.shape[2], max_side), min(x.shape[3], max_side)))
    x = as_matrix(x, "inputs").cpu().numpy()
    codes, _ = label_codes(labels, x.shape[0])
    x = StandardScaler().fit_transform(x)
    mlp = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(x, codes)
    return np.maximum(x @ mlp.coefs_[0] + mlp.intercepts_[0], 0.0)
