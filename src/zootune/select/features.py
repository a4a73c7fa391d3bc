"""Extract what the transferability scores need from each model of a zoo, with a disk cache.

For every model, on the same (per-class capped) subset of the target data:

- ``features``: penultimate activations, i.e. the input of the classification head (seed
  paper §3.3: "the layer before the fully-connected classification layer"), captured with a
  forward hook. The head is found automatically: the last ``nn.Linear`` whose output *is* the
  model's output. A model without such a head (head stripped) gives its output as features.
- ``logits``: the source head's outputs (for LEEP and NCE), when the model has a head.
- ``gradients`` (optional, for LGC): per-sample gradients of the last ``nn.Conv2d``'s weight,
  randomly projected on the fly (§3.3). The per-sample weight gradient is
  ``G = sum_l g_l x_l^T`` (``g_l``: gradient at output position l, ``x_l``: the input patch), so
  with Gaussian ``R1`` (C_out x k1) and ``R2`` (C_in k_h k_w x k2) the projection
  ``R1^T G R2 = (R1^T g)(x^T R2)`` is computed without ever forming ``G`` - a Kronecker-structured
  random projection to ``k1 * k2`` dimensions that preserves inner products in expectation.
  The differentiated scalar is ``logsumexp`` of the source logits (the log-partition, a
  label-free summary of all outputs), or ``||features||^2 / 2`` for a headless model.

Each model sees the data through its own preprocessing (``transform``, applied per sample).
Results are cached as ``.npz`` under ``cache_dir``, keyed by a hash of the model weights, the
selected data, the transform's ``repr`` and the extraction options, so re-ranking a zoo after
adding a model only runs the new one. At most ``max_per_class`` samples per class are used
(seeded choice, the same for every model), as in the seed paper (§3.3, following RSA).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ._inputs import ScoreInputError

CACHE_VERSION = 1
Data = Any  # a torch Dataset yielding (input, label), or a pair (inputs, labels) of arrays


@dataclass
class Extracted:
    """Arrays extracted from one model on the selected target samples."""

    features: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    logits: np.ndarray | None = None
    gradients: np.ndarray | None = None
    seconds: float = 0.0
    cached: bool = False
    notes: list[str] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray | None]:
        return {"features": self.features, "logits": self.logits, "gradients": self.gradients}

    def save(self, path: str | Path) -> None:
        """Write atomically as ``.npz`` (absent arrays are not stored)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"features": self.features, "labels": self.labels, "indices": self.indices}
        if self.logits is not None:
            arrays["logits"] = self.logits
        if self.gradients is not None:
            arrays["gradients"] = self.gradients
        meta = json.dumps({"seconds": self.seconds, "notes": self.notes})
        from zootune.atomic import atomic_write

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, meta=np.array(meta), **arrays)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> "Extracted":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(
                features=z["features"],
                labels=z["labels"],
                indices=z["indices"],
                logits=z["logits"] if "logits" in z else None,
                gradients=z["gradients"] if "gradients" in z else None,
                seconds=float(meta["seconds"]),
                cached=True,
                notes=list(meta["notes"]),
            )


# ----------------------------------------------------------------------------- data access


def dataset_labels(data: Data) -> np.ndarray:
    """All labels of ``data`` (without loading inputs when the dataset exposes ``targets``)."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return _labels_array(data[1])
    for attr in ("targets", "labels", "y"):
        if hasattr(data, attr):
            return _labels_array(getattr(data, attr))
    from zootune.data.sample import LABEL, as_sample

    return np.asarray([_label_value(as_sample(data[i])[LABEL]) for i in range(len(data))])


def _labels_array(y: Any) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        return y.detach().cpu().numpy()
    return np.asarray(y)


def _label_value(y: Any) -> Any:
    return y.item() if isinstance(y, (torch.Tensor, np.ndarray)) else y


def cap_per_class(labels: np.ndarray, max_per_class: int | None, *, seed: int = 0) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_class`` samples of each class (seeded choice)."""
    labels = np.asarray(labels)
    if max_per_class is None:
        return np.arange(len(labels))
    if max_per_class < 1:
        raise ScoreInputError(f"max_per_class must be >= 1, got {max_per_class}")
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) > max_per_class:
            members = rng.choice(members, max_per_class, replace=False)
        keep.append(members)
    return np.sort(np.concatenate(keep))


def _batches(data: Data, indices: np.ndarray, batch_size: int, transform: Callable | None):
    from zootune.data.sample import IMAGE, as_sample

    pair = isinstance(data, (tuple, list)) and len(data) == 2
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        if pair and transform is None and isinstance(data[0], (torch.Tensor, np.ndarray)):
            part = data[0]
            if isinstance(part, torch.Tensor):
                yield part[torch.as_tensor(chunk)]
            else:
                yield torch.as_tensor(np.asarray(part[chunk]))
            continue
        if pair:
            xs = [data[0][int(i)] for i in chunk]
        else:
            xs = [as_sample(data[int(i)])[IMAGE] for i in chunk]
        if transform is not None:
            xs = [transform(x) for x in xs]
        yield torch.stack([torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x for x in xs])


# ------------------------------------------------------------------------------ fingerprints


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the model's class and every tensor of its ``state_dict`` (names, shapes, values)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no bytes copy
    return h.hexdigest()


def data_fingerprint(data: Data, indices: np.ndarray) -> str:
    """Hash of the selected samples: file names, sizes and times for file datasets, else content."""
    h = hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes())
    if isinstance(data, (tuple, list)) and len(data) == 2:
        for part in data:
            arr = part.detach().cpu().numpy() if isinstance(part, torch.Tensor) else np.asarray(part)
            h.update(np.ascontiguousarray(arr[indices]).tobytes())
        return h.hexdigest()
    if hasattr(data, "base") and hasattr(data, "indices"):  # a subset view with a transform
        h.update(repr(getattr(data, "transform", None)).encode())
        h.update(data_fingerprint(data.base, np.asarray(data.indices)[indices]).encode())
        return h.hexdigest()
    samples = getattr(data, "samples", None) or getattr(data, "imgs", None)
    files = getattr(data, "files", None)
    if samples is None and files is not None and hasattr(data, "targets"):
        samples = list(zip(files, data.targets))
    if samples is not None:
        for i in indices:
            path, label = samples[int(i)][:2]
            st = os.stat(path)
            h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()
    from zootune.data.sample import IMAGE, LABEL, as_sample

    for i in indices:
        sample = as_sample(data[int(i)])
        x, y = sample[IMAGE], sample.get(LABEL)
        h.update(_bytes_of(x))
        h.update(str(_label_value(y)).encode())
    return h.hexdigest()


def _bytes_of(x: Any) -> bytes:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().contiguous().numpy().tobytes()
    if hasattr(x, "tobytes"):
        return x.tobytes()
    return repr(x).encode()


# ----------------------------------------------------------------------------- model probing


def _output_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    raise ScoreInputError(f"cannot find a tensor in the model's output of type {type(out).__name__}")


def _pool(t: torch.Tensor) -> torch.Tensor:
    """Flatten features; spatial maps ``(B, C, H, W)`` are global-average-pooled first."""
    if t.ndim == 4:
        t = t.mean(dim=(2, 3))
    return t.reshape(t.shape[0], -1)


def last_module(model: nn.Module, kind: type) -> tuple[str, nn.Module] | None:
    """The last module of type ``kind`` in registration order, with its name."""
    found = None
    for name, mod in model.named_modules():
        if isinstance(mod, kind):
            found = (name, mod)
    return found


class _Hooks:
    """Forward hooks that capture the head's input/output and the gradient layer's tensors."""

    def __init__(self, model: nn.Module, feature_layer: str | None, gradient_layer: str | None):
        self.model = model
        self.handles: list[Any] = []
        self.store: dict[str, Any] = {}
        mods = dict(model.named_modules())
        if feature_layer is not None:
            if feature_layer not in mods:
                raise ScoreInputError(f"feature layer {feature_layer!r} not found in the model")
            self.handles.append(mods[feature_layer].register_forward_hook(self._feature_out))
        from zootune.zoo import find_head

        name = find_head(model)
        self.head_name = name
        if name is not None:
            self.handles.append(model.get_submodule(name).register_forward_hook(self._head))
        self.conv = None
        if gradient_layer is not None:
            if gradient_layer not in mods or not isinstance(mods[gradient_layer], nn.Conv2d):
                raise ScoreInputError(f"gradient layer {gradient_layer!r} is not an nn.Conv2d of the model")
            self.conv = (gradient_layer, mods[gradient_layer])
        self.grad_on = False

    def enable_gradients(self) -> None:
        if self.conv is not None and not self.grad_on:
            self.handles.append(self.conv[1].register_forward_hook(self._conv))
            self.grad_on = True

    def _feature_out(self, mod, inp, out):
        self.store["feature_layer"] = _output_tensor(out)

    def _head(self, mod, inp, out):
        self.store["head_in"] = inp[0]
        self.store["head_out"] = out

    def _conv(self, mod, inp, out):
        self.store["conv_in"] = inp[0].detach()
        # The forward runs without autograd up to here (nothing before this layer needs a
        # graph); from here on it records, so only the layers after it keep activations.
        torch.set_grad_enabled(True)
        o = out.detach().requires_grad_(True)
        self.store["conv_out"] = o
        return o

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


class _Projector:
    """Kronecker-structured Gaussian projection of per-sample conv weight gradients.

    ``__call__`` is the fast path: ``x^T R2`` is one convolution of the layer input with
    ``R2`` reshaped as a ``k2``-filter weight (same stride/padding/dilation), one batched product
    gives ``G R2`` per sample and one matrix product ``R1^T (G R2)`` for the whole batch - no ``im2col`` copy of the input
    (whose CPU kernel is slow, e.g. ~70 ms a batch at ResNet-18's last conv). :meth:`reference`
    is the straightforward ``unfold`` version, kept for the tests.
    """

    def __init__(self, conv: nn.Conv2d, k1: int, k2: int, seed: int, device: torch.device):
        cin = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        gen = torch.Generator().manual_seed(seed)
        self.r1 = torch.randn(conv.out_channels, k1, generator=gen).to(device)
        self.r2 = torch.randn(cin, k2, generator=gen).to(device)
        self.scale = (k1 * k2) ** -0.5
        self.conv = conv
        # unfold's column order is (C_in, k_h, k_w), the same as a conv weight's flattening
        self._w2 = self.r2.T.reshape(k2, conv.in_channels, *conv.kernel_size).contiguous()

    def __call__(self, conv_in: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        c = self.conv
        w2 = self._w2.to(conv_in.dtype)
        xb = torch.nn.functional.conv2d(conv_in, w2, None, c.stride, c.padding, c.dilation)  # (B, k2, Ho, Wo)
        g = grad_out.reshape(grad_out.shape[0], grad_out.shape[1], -1)  # (B, Cout, L)
        b = xb.reshape(xb.shape[0], xb.shape[1], -1).transpose(1, 2).to(g.dtype)  # (B, L, k2)
        gb = torch.bmm(g, b)  # (B, Cout, k2) = G R2, per sample
        # R1^T (G R2) for all samples in one GEMM: (B*k2, Cout) @ (Cout, k1), then (B, k1, k2)
        out = torch.matmul(gb.transpose(1, 2), self.r1.to(gb.dtype)).transpose(1, 2)
        return out.reshape(g.shape[0], -1) * self.scale

    def reference(self, conv_in: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        c = self.conv
        cols = torch.nn.functional.unfold(
            conv_in, c.kernel_size, dilation=c.dilation, padding=c.padding, stride=c.stride
        )  # (B, Cin*kh*kw, L)
        g = grad_out.reshape(grad_out.shape[0], grad_out.shape[1], -1)  # (B, Cout, L)
        a = torch.einsum("bol,ok->bkl", g, self.r1)
        b = torch.einsum("bil,ij->blj", cols, self.r2)
        return (a @ b).reshape(g.shape[0], -1) * self.scale


def _gradient_conv_problem(conv: nn.Conv2d) -> str | None:
    if conv.groups != 1:
        return "grouped convolution"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return f"padding {conv.padding!r}/{conv.padding_mode}"
    return None


# ----------------------------------------------------------------------------------- extract


def extract(
    model: nn.Module,
    data: Data,
    *,
    transform: Callable | None = None,
    indices: np.ndarray | None = None,
    max_per_class: int | None = None,
    batch_size: int = 64,
    gradients: bool = False,
    projection: tuple[int, int] = (16, 16),
    feature_layer: str | None = None,
    gradient_layer: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    model_key: str | None = None,
    data_key: str | None = None,
    transform_key: str | None = None,
    progress: bool = False,
) -> Extracted:
    """Features, source logits and (optionally) projected gradients of ``model`` on ``data``.

    Args:
        model: any ``nn.Module`` classifier (or feature extractor).
        data: a torch ``Dataset`` of ``(input, label)`` or a pair ``(inputs, labels)``.
        transform: this model's preprocessing, applied to each input.
        indices: samples to use; default: ``cap_per_class(labels, max_per_class, seed)``.
        gradients: also extract LGC gradients of the last conv (or ``gradient_layer``).
        projection: ``(k1, k2)`` of the gradient projection (``k1 * k2`` dimensions).
        feature_layer: take features from this module's output (pooled) instead of the head input.
        cache_dir: directory of the ``.npz`` cache (None: no cache).
        model_key, data_key, transform_key: strings that replace the computed hashes in the
            cache key (use them when hashing is costly or a ``repr`` is not stable).
    """
    labels_all = dataset_labels(data)
    if indices is None:
        indices = cap_per_class(labels_all, max_per_class, seed=seed)
    indices = np.asarray(indices, dtype=np.int64)
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)

    cache_path = None
    if cache_dir is not None:
        key = {
            "v": CACHE_VERSION,
            "model": model_key or model_fingerprint(model),
            "data": data_key or data_fingerprint(data, indices),
            "transform": transform_key if transform_key is not None else repr(transform),
            "gradients": bool(gradients),
            "projection": list(projection),
            "feature_layer": feature_layer,
            "gradient_layer": gradient_layer,
            "seed": seed,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        cache_path = Path(cache_dir) / f"{digest}.npz"
        if cache_path.exists():
            try:
                return Extracted.load(cache_path)
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache entry: recompute and overwrite

    t0 = time.perf_counter()
    notes: list[str] = []
    conv = None
    if gradients:
        if gradient_layer is not None:
            conv = (gradient_layer, dict(model.named_modules()).get(gradient_layer))
        else:
            conv = last_module(model, nn.Conv2d)
        if conv is None or conv[1] is None:
            notes.append("no nn.Conv2d for LGC gradients")
            conv = None
        else:
            problem = _gradient_conv_problem(conv[1])
            if problem:
                notes.append(f"LGC gradients skipped: {conv[0]} has {problem}")
                conv = None
    hooks = _Hooks(model, feature_layer, conv[0] if conv else None)
    projector = _Projector(conv[1], *projection, seed=seed, device=device) if conv else None
    was_training = model.training
    model.eval()
    feats, logits_out, grads = [], [], []
    has_head = None
    batches = _batches(data, indices, batch_size, transform)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=-(-len(indices) // batch_size), desc="extract", leave=False)
    try:
        if projector is not None:
            hooks.enable_gradients()
        for x in batches:
            x = x.to(device)
            hooks.store.clear()
            # no_grad for the whole forward: with gradients, the hook on the gradient layer
            # switches autograd on for the rest of it (exiting restores the caller's mode)
            with torch.no_grad():
                out = _output_tensor(model(x))
            if has_head is None:
                has_head = hooks.store.get("head_out") is out
            feat = hooks.store["feature_layer"] if feature_layer else (hooks.store["head_in"] if has_head else out)
            feats.append(_pool(feat.detach()).float().cpu())
            if has_head:
                logits_out.append(out.detach().float().cpu())
            if projector is not None:
                with torch.enable_grad():
                    scalar = torch.logsumexp(out, dim=1).sum() if has_head else 0.5 * (_pool(feat) ** 2).sum()
                conv_out = hooks.store.get("conv_out")
                grad_out = None
                if conv_out is not None and scalar.requires_grad:
                    (grad_out,) = torch.autograd.grad(scalar, conv_out, allow_unused=True)
                if grad_out is None:
                    raise ScoreInputError(f"the output does not depend on layer {conv[0]!r}")
                with torch.no_grad():
                    grads.append(projector(hooks.store["conv_in"], grad_out).float().cpu())
    finally:
        hooks.close()
        model.train(was_training)
    if not has_head:
        notes.append("no classification head found: features are the model output; no logits")
    result = Extracted(
        features=torch.cat(feats).numpy(),
        labels=np.asarray(labels_all)[indices],
        indices=indices,
        logits=torch.cat(logits_out).numpy() if logits_out else None,
        gradients=torch.cat(grads).numpy() if grads else None,
        seconds=time.perf_counter() - t0,
        notes=notes,
    )
    if cache_path is not None:
        result.save(cache_path)
    return result


def extract_zoo(
    models: Mapping[str, nn.Module],
    data: Data,
    *,
    transforms: Mapping[str, Callable | None] | Callable | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    model_keys: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> dict[str, Extracted]:
    """:func:`extract` for every model, on one shared subset of the data.

    ``transforms`` is one callable for all models or ``{name: transform}``; other keyword
    arguments go to :func:`extract`.
    """
    labels = dataset_labels(data)
    indices = cap_per_class(labels, max_per_class, seed=seed)
    if "data_key" not in kwargs and kwargs.get("cache_dir") is not None:
        kwargs["data_key"] = data_fingerprint(data, indices)  # hash the data once, not per model
    out = {}
    for name, model in models.items():
        tf = transforms.get(name) if isinstance(transforms, Mapping) else transforms
        key = model_keys.get(name) if model_keys else None
        out[name] = extract(model, data, transform=tf, indices=indices, seed=seed, model_key=key, **kwargs)
    return out


__all__: Sequence[str] = (
    "Extracted",
    "cap_per_class",
    "data_fingerprint",
    "dataset_labels",
    "extract",
    "extract_zoo",
    "last_module",
    "model_fingerprint",
)
