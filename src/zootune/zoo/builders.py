"""Build one zoo member per spec kind: timm, torchvision, torchvision-backbone, hf, file, url,
random.

Each builder returns ``(model, preprocessing, report)``. Weights are located by
:mod:`zootune.zoo.cache` *before* timm or torchvision are asked to load them, so neither
library ever touches the network on its own: offline mode and missing files are decided here,
with one clear error.

``torchvision-backbone`` maps the ResNet trunk of a detection model (``backbone.body.``:
Faster / Mask / Keypoint R-CNN, RetinaNet, FCOS) or a segmentation model (``backbone.``:
DeepLabV3, FCN) onto torchvision's ``resnetNN`` keys. Every trunk key must be found (the
``FrozenBatchNorm2d`` weight, bias, running mean and running variance map onto
``BatchNorm2d``'s; the ``num_batches_tracked`` counters it lacks are filled with 0); the
classification head ``fc`` is not part of these models and stays randomly initialised; all
other keys (FPN, RPN, ROI heads, segmentation heads) are listed in the report as dropped.
Segmentation models dilate ``layer3``/``layer4`` instead of striding; the weights have the same
shapes and, as in the paper, are used in the ordinary strided ResNet.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from zootune.zoo.cache import Context, fetch_hf, fetch_url, find_hf_file, find_url_file
from zootune.zoo.checkpoint import RawCheckpoint, read_checkpoint
from zootune.zoo.errors import CheckpointError, OfflineError, ZooSpecError
from zootune.zoo.heads import find_head
from zootune.zoo.keymap import KeyMapReport, is_head_key, map_state_dict
from zootune.zoo.preprocess import (
    Preprocessing,
    from_timm_model,
    from_torchvision_weights,
)
from zootune.zoo.spec import ZooSpec

Built = tuple[nn.Module, Preprocessing, KeyMapReport]


# ------------------------------------------------------------------------------- helpers

#: Old name of :func:`zootune.zoo.find_head` (the same function), for existing imports.
head_name = find_head


def _close(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _tv():
    try:
        import torchvision.models as tvm
    except ImportError as exc:  # pragma: no cover
        raise ZooSpecError(f"torchvision is not installed ({exc}); pip install 'zootune[vision]'")
    return tvm


def _timm():
    try:
        import timm
    except ImportError as exc:  # pragma: no cover
        raise ZooSpecError(f"timm is not installed ({exc}); pip install 'zootune[vision]'")
    return timm


def classification_models() -> list[str]:
    tvm = _tv()
    return list(tvm.list_models(module=tvm))


def backbone_models() -> list[str]:
    """torchvision detection / segmentation models with a ResNet trunk."""
    tvm = _tv()
    import torchvision.models.detection as det
    import torchvision.models.segmentation as seg

    names = tvm.list_models(module=det) + tvm.list_models(module=seg)
    return sorted(n for n in names if re.search(r"resnet\d+", n))


def _tv_weights(name: str, weights: str | None, spec: ZooSpec) -> Any:
    tvm = _tv()
    try:
        enum = tvm.get_model_weights(name)
    except (ValueError, KeyError):
        return None
    if weights is None:
        return enum.DEFAULT if hasattr(enum, "DEFAULT") else next(iter(enum))
    short = weights.split(".")[-1]
    try:
        return enum[short]
    except KeyError:
        valid = [w.name for w in enum]
        raise ZooSpecError(
            f"zoo spec {spec.text!r}: torchvision model {name!r} has no weights {weights!r}; "
            f"valid: {', '.join(valid + ['DEFAULT'])}"
        ) from None


@contextlib.contextmanager
def _torch_hub_dir_with(path: Path) -> Iterator[None]:
    """Point torch's hub dir at a temporary folder whose ``checkpoints/`` holds ``path``.

    torchvision looks for its weights only in ``torch.hub.get_dir()/checkpoints``; this lets it
    use a file from a user's checkpoint directory without copying it and without a download.
    """
    import torch.hub

    old = torch.hub.get_dir()
    if path.parent == Path(old) / "checkpoints":
        yield
        return
    with tempfile.TemporaryDirectory(prefix="zootune-hub-") as tmp:
        (Path(tmp) / "checkpoints").mkdir()
        os.symlink(path.resolve(), Path(tmp) / "checkpoints" / path.name)
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub.set_dir(old)


def _library_load(spec: ZooSpec, path: Path, fn: Any) -> nn.Module:
    """Run a library's own loader on a local file; its errors become one CheckpointError."""
    try:
        return fn()
    except (ZooSpecError, OfflineError, CheckpointError):
        raise
    except Exception as exc:
        # Let our reader classify (unsafe pickle, truncated, corrupt) when it can.
        if path.suffix != ".json":
            read_checkpoint(path)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(
            f"{spec.text}: cannot load weights from {path} ({type(exc).__name__}: {first})"
        ) from None


# ------------------------------------------------------------------------ architectures


def build_arch(
    arch: str,
    num_classes: int | None = None,
    kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, Preprocessing, str]:
    """A randomly initialised model of ``arch``; returns ``(model, preprocessing, label)``.

    ``arch`` is ``resnet50``, ``torchvision:NAME``, ``timm:NAME`` or the import path of a model
    builder, ``package.module:callable`` (a class or function returning an ``nn.Module``, e.g.
    ``zootune.demo.model:MiniCNN``). A bare name is looked up in torchvision's classification
    models first (the paper's zoo uses torchvision's ResNet-50 keys), then in timm.
    ``kwargs`` are passed to the builder (a spec's ``kwargs``); ``num_classes``, when given
    (the head size of a checkpoint), takes precedence over ``kwargs["num_classes"]``.
    """
    kind, _, name = arch.partition(":") if ":" in arch else ("", "", arch)
    kw = dict(kwargs or {})
    if num_classes is not None:
        kw["num_classes"] = int(num_classes)
    if kind not in ("", "timm", "torchvision"):
        return _build_imported(arch, kind, name, kw)
    if kind in ("", "torchvision") and name in classification_models():
        tvm = _tv()
        model = _call_builder(arch, f"torchvision.models.get_model({name!r})",
                              lambda: tvm.get_model(name, weights=None, **kw), kw)
        try:  # the first published weights' recipe (IMAGENET1K_V1: resize 256, crop 224)
            w = next(iter(tvm.get_model_weights(name)))
            pre = from_torchvision_weights(w, f"assumed: recipe of torchvision {w}")
        except (ValueError, KeyError, StopIteration):
            pre = Preprocessing(source="assumed: ImageNet default")
        return model, pre, f"torchvision:{name}"
    if kind in ("", "timm"):
        timm = _timm()
        if timm.is_model(name):
            model = _call_builder(arch, f"timm.create_model({name!r})",
                                  lambda: timm.create_model(name, pretrained=False, **kw), kw)
            return model, from_timm_model(model, f"assumed: timm {name} default"), f"timm:{name}"
    choices = classification_models()
    raise ZooSpecError(f"arch={arch!r}: no torchvision or timm architecture of that name"
                       + _close(name, choices)
                       + "; a model builder of your own is named package.module:callable")


def _call_builder(arch: str, what: str, fn: Any, kw: dict[str, Any]) -> Any:
    """``fn()``; a ``TypeError`` (a keyword the builder does not take) becomes a ZooSpecError."""
    try:
        return fn()
    except TypeError as exc:
        args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
        raise ZooSpecError(f"arch={arch!r}: calling {what}({args}) failed: {exc}") from None


def _build_imported(arch: str, module: str, attr: str,
                    kw: dict[str, Any]) -> tuple[nn.Module, Preprocessing, str]:
    """``arch=package.module:callable``: import the builder and call it with ``kw``.

    A builder whose ``num_classes`` parameter is required gets a placeholder (1) when ``kw``
    does not give it: the caller (:func:`build_from_file`) rebuilds the model with the
    checkpoint's head size. As the trainer's ``zoo.builder``, this imports code named by the
    user (the spec is trusted input).

    Preprocessing: the model's (or the builder's) ``zootune_preprocessing`` attribute when it
    has one (a :class:`Preprocessing` or a mapping of its fields), else the ImageNet default;
    a checkpoint's ``preprocessing`` metadata overrides both (:func:`build_from_file`).
    """
    import importlib
    import inspect

    if not module or not attr or not all(p.isidentifier() for p in module.split(".") + attr.split(".")):
        raise ZooSpecError(f"arch={arch!r}: expected NAME, torchvision:NAME, timm:NAME or "
                           "package.module:callable")
    try:
        fn: Any = importlib.import_module(module)
    except ImportError as exc:
        raise ZooSpecError(f"arch={arch!r}: cannot import module {module!r} "
                           f"({type(exc).__name__}: {exc})") from None
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ZooSpecError(f"arch={arch!r}: module {module!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ZooSpecError(f"arch={arch!r}: {attr!r} is not callable")
    kw = dict(kw)
    if "num_classes" not in kw:
        with contextlib.suppress(TypeError, ValueError):
            p = inspect.signature(fn).parameters.get("num_classes")
            if p is not None and p.default is inspect.Parameter.empty:
                kw["num_classes"] = 1  # placeholder until the checkpoint's head size is known
    model = _call_builder(arch, attr, lambda: fn(**kw), kw)
    if not isinstance(model, nn.Module):
        raise ZooSpecError(f"arch={arch!r}: {attr} returned {type(model).__name__}, not an nn.Module")
    pre = getattr(model, "zootune_preprocessing", None) or getattr(fn, "zootune_preprocessing", None)
    if isinstance(pre, dict):
        d = {"source": f"declared by {arch}", **pre}
        for key in ("input_size", "mean", "std"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        try:
            pre = Preprocessing(**d)
        except TypeError as exc:
            raise ZooSpecError(f"arch={arch!r}: bad zootune_preprocessing ({exc})") from None
    if not isinstance(pre, Preprocessing):
        pre = Preprocessing(source=f"assumed: ImageNet default ({arch} declares none)")
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None and first.in_channels != 3:  # e.g. grey-scale: keep the channel count
            c = int(first.in_channels)
            pre = replace(pre, input_size=(c, 224, 224), mean=(sum(pre.mean) / 3,) * c,
                          std=(sum(pre.std) / 3,) * c,
                          source=f"assumed: ImageNet default, {c} channel(s) ({arch} declares none)")
    return model, pre, arch


def load_tensors_into(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    spec: ZooSpec,
    where: str,
    *,
    prefix: str | None = None,
    wrapper: list[str] | None = None,
) -> KeyMapReport:
    """Map ``tensors`` onto ``model`` and load them; trunk keys must all be found.

    Missing or mismatched keys outside the head raise :class:`CheckpointError` naming the
    first few (unless the spec says ``strict=false``); NaN/Inf in any mapped tensor raises
    :class:`NonFiniteWeightsError` naming it.
    """
    head = find_head(model)
    mapped, report = map_state_dict(tensors, model.state_dict(), prefix=prefix, head=head)
    report.wrapper = list(wrapper or [])
    trunk_missing = [k for k in report.missing if not is_head_key(k, head)]
    trunk_bad = [m for m in report.mismatched if not is_head_key(m[0], head)]
    if (trunk_missing or trunk_bad) and spec.strict:
        if trunk_bad:
            k, a, b = trunk_bad[0]
            detail = f"{len(trunk_bad)} with other shapes, first {k!r}: {a} in the file vs {b}"
        else:
            detail = (f"{len(trunk_missing)} missing, first {', '.join(trunk_missing[:3])}"
                      f" (checkpoint prefix guessed: '{report.prefix}')")
        raise CheckpointError(
            f"{spec.text}: {where} does not fit {type(model).__name__}: {detail}; "
            f"pass strict=false to load it anyway"
        )
    if trunk_missing or trunk_bad:
        report.notes.append(f"strict=false: {len(trunk_missing) + len(trunk_bad)} trunk keys "
                            "left at random initialisation")
    model.load_state_dict(mapped, strict=False)
    return report


# ---------------------------------------------------------------------------- per kind


def build_timm(spec: ZooSpec, pretrained: bool, ctx: Context) -> Built:
    timm = _timm()
    name = spec.target
    if not timm.is_model(name):
        base = name.split(".")[0]
        raise ZooSpecError(f"zoo spec {spec.text!r}: timm has no model {name!r}"
                           + _close(base, timm.list_models()))
    if not pretrained:
        model = timm.create_model(name, pretrained=False)
        return model, from_timm_model(model, f"timm {name}"), KeyMapReport(notes=["random init"])
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ZooSpecError(f"zoo spec {spec.text!r}: timm model {name!r} has no pretrained "
                           f"weights; pick a tag from timm.list_models('{name}*', pretrained=True)")
    path = _find_timm_file(name, cfg, spec, ctx)
    model = _library_load(
        spec, path,
        lambda: timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}),
    )
    report = KeyMapReport(mapped=len(model.state_dict()), notes=[f"weights: {path}"])
    return model, from_timm_model(model, f"timm {name}"), report


def _find_timm_file(name: str, cfg: Any, spec: ZooSpec, ctx: Context) -> Path:
    full = f"{cfg.architecture}.{cfg.tag}" if getattr(cfg, "tag", None) else name
    for d in ctx.dirs:
        for stem in dict.fromkeys([name, full]):
            for ext in (".safetensors", ".pth", ".bin", ".pt"):
                if (d / f"{stem}{ext}").is_file():
                    return d / f"{stem}{ext}"
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors",
                                                               "pytorch_model.bin"]
    if cfg.hf_hub_id:
        for fn in files:
            hit = find_hf_file(cfg.hf_hub_id, fn, None, ctx)
            if hit is not None:
                return hit
    if cfg.url:
        hit = find_url_file(cfg.url, ctx)
        if hit is not None:
            return hit
    if cfg.hf_hub_id:
        return fetch_hf(cfg.hf_hub_id, files, None, spec.text, ctx)
    return fetch_url(cfg.url, spec.text, ctx)


def build_torchvision(spec: ZooSpec, pretrained: bool, ctx: Context) -> Built:
    tvm = _tv()
    name = spec.target
    if name not in classification_models():
        if name in backbone_models():
            raise ZooSpecError(f"zoo spec {spec.text!r}: {name!r} is a detection/segmentation "
                               f"model; use 'torchvision-backbone:{name}' for its ResNet trunk")
        raise ZooSpecError(f"zoo spec {spec.text!r}: torchvision has no classification model "
                           f"{name!r}" + _close(name, classification_models()))
    weights = _tv_weights(name, spec.weights, spec)
    pre = (from_torchvision_weights(weights, f"torchvision {weights}") if weights is not None
           else Preprocessing())
    if not pretrained:
        return tvm.get_model(name, weights=None), pre, KeyMapReport(notes=["random init"])
    if weights is None:
        raise ZooSpecError(f"zoo spec {spec.text!r}: torchvision has no weights for {name!r}")
    path = fetch_url(weights.url, spec.text, ctx)

    def _load() -> nn.Module:
        with _torch_hub_dir_with(path):
            return tvm.get_model(name, weights=weights, progress=False)

    model = _library_load(spec, path, _load)
    report = KeyMapReport(mapped=len(model.state_dict()), notes=[f"weights: {path}"])
    return model, pre, report


def trunk_of(name: str) -> tuple[str, str]:
    """(classification arch, key prefix) of a detection / segmentation model's trunk."""
    m = re.search(r"resnet(\d+)", name)
    if not m:
        raise ZooSpecError(f"{name!r} has no ResNet trunk")
    import torchvision.models.segmentation as seg

    prefix = "backbone." if name in _tv().list_models(module=seg) else "backbone.body."
    return f"resnet{m.group(1)}", prefix


def build_torchvision_backbone(spec: ZooSpec, pretrained: bool, ctx: Context) -> Built:
    tvm = _tv()
    name = spec.target
    choices = backbone_models()
    if name not in choices:
        raise ZooSpecError(
            f"zoo spec {spec.text!r}: not a torchvision detection/segmentation model with a "
            f"ResNet trunk{_close(name, choices)}; supported: {', '.join(choices)}"
        )
    arch, prefix = trunk_of(name)
    weights = _tv_weights(name, spec.weights, spec)
    if pretrained:
        if weights is None:
            raise ZooSpecError(f"zoo spec {spec.text!r}: torchvision has no weights for {name!r}")
        path = fetch_url(weights.url, spec.text, ctx)
        raw = read_checkpoint(path)
        tensors, wrapper, where = raw.tensors, raw.wrapper, str(path)
    else:
        full = tvm.get_model(name, weights=None, weights_backbone=None)
        tensors, wrapper, where = dict(full.state_dict()), [], f"random {name}"
        del full
    model = tvm.get_model(arch, weights=None)
    report = load_tensors_into(model, tensors, spec, where, prefix=prefix, wrapper=wrapper)
    if not pretrained:
        report.notes.append("random init (mapping exercised on a randomly initialised model)")
    base = weights if weights is not None else None
    if base is not None:
        pre = from_torchvision_weights(base, f"torchvision {base}")
    else:
        pre = Preprocessing(input_size=None, resize_size=None, source="torchvision detector")
    return model, pre, report


def build_from_file(spec: ZooSpec, path: Path | None, pretrained: bool) -> Built:
    """Load a raw checkpoint file into ``spec.arch`` (``path`` ignored when not pretrained)."""
    assert spec.arch
    model, pre, _ = build_arch(spec.arch, kwargs=spec.kwargs)
    if not pretrained or path is None:
        return model, pre, KeyMapReport(notes=["random init"])
    raw = read_checkpoint(path)
    head = find_head(model)
    probe = map_state_dict(raw.tensors, model.state_dict(), head=head)[1]
    head_shapes = [m for m in probe.mismatched if is_head_key(m[0], head)]
    if head_shapes and head and all(is_head_key(m[0], head) for m in probe.mismatched):
        w = next((m for m in head_shapes if m[0].endswith("weight")), head_shapes[0])
        with contextlib.suppress(Exception):
            model, pre, _ = build_arch(spec.arch, num_classes=int(w[1][0]), kwargs=spec.kwargs)
    report = load_tensors_into(model, raw.tensors, spec, str(path), wrapper=raw.wrapper)
    if raw.skipped:
        report.notes.append(f"ignored non-tensor entries: {', '.join(raw.skipped[:6])}")
    pre = _metadata_preprocessing(raw, pre)
    return model, pre, report


def _metadata_preprocessing(raw: RawCheckpoint, pre: Preprocessing) -> Preprocessing:
    """Preprocessing stored in a safetensors header (``preprocessing`` JSON), if present."""
    import json

    text = raw.metadata.get("preprocessing") if raw.metadata else None
    if not text:
        return pre
    try:
        d = json.loads(text)
        return Preprocessing(
            input_size=tuple(d["input_size"]) if d.get("input_size") else None,  # type: ignore
            resize_size=d.get("resize_size"),
            mean=tuple(d.get("mean", pre.mean)),
            std=tuple(d.get("std", pre.std)),
            interpolation=d.get("interpolation", pre.interpolation),
            source=f"file metadata ({raw.path.name})",
        )
    except (ValueError, KeyError, TypeError):
        return pre


def build_file(spec: ZooSpec, pretrained: bool, ctx: Context) -> Built:
    path = Path(spec.target).expanduser()
    if pretrained and not path.is_file():
        raise CheckpointError(f"{spec.text}: checkpoint file not found: {path}")
    return build_from_file(spec, path, pretrained)


def build_url(spec: ZooSpec, pretrained: bool, ctx: Context) -> Built:
    path = fetch_url(spec.target, spec.text, ctx) if pretrained else None
    return build_from_file(spec, path, pretrained)


def build_hf(spec: ZooSpec, pretrained: bool, ctx: Context) -> Built:
    repo, rev = spec.target, spec.revision
    if spec.weights:  # one raw checkpoint file of the repo, loaded into arch=
        path = fetch_hf(repo, [spec.weights], rev, spec.text, ctx) if pretrained else None
        return build_from_file(spec, path, pretrained)
    timm = _timm()
    cfg_path = fetch_hf(repo, ["config.json"], rev, spec.text, ctx)
    folder = cfg_path.parent
    if not pretrained:
        model = _library_load(spec, cfg_path, lambda: timm.create_model(
            f"local-dir:{folder}", pretrained=False))
        return model, from_timm_model(model, f"hf {repo}"), KeyMapReport(notes=["random init"])
    wpath = fetch_hf(repo, ["model.safetensors", "pytorch_model.bin"], rev, spec.text, ctx)
    if wpath.parent == folder:
        model = _library_load(spec, wpath, lambda: timm.create_model(
            f"local-dir:{folder}", pretrained=True))
        report = KeyMapReport(mapped=len(model.state_dict()), notes=[f"weights: {wpath}"])
    else:
        model = _library_load(spec, cfg_path, lambda: timm.create_model(
            f"local-dir:{folder}", pretrained=False))
        raw = read_checkpoint(wpath)
        report = load_tensors_into(model, raw.tensors, spec, str(wpath), wrapper=raw.wrapper)
    return model, from_timm_model(model, f"hf {repo}"), report


def build_random(spec: ZooSpec, pretrained: bool, ctx: Context) -> Built:
    """``random:ARCH seed=N``: ``ARCH`` built under ``torch.manual_seed(N)``.

    The builder runs inside ``torch.random.fork_rng(devices=[])``: the weights are a function of
    (arch, kwargs, seed) alone and the caller's CPU random state is left as it was. There are
    no weights to load, so ``pretrained`` changes nothing.
    """
    assert spec.arch
    seed = spec.seed or 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, pre, label = build_arch(spec.arch, kwargs=spec.kwargs)
    return model, pre, KeyMapReport(notes=[f"random init of {label}, seed {seed}"])


BUILDERS = {
    "timm": build_timm,
    "torchvision": build_torchvision,
    "torchvision-backbone": build_torchvision_backbone,
    "hf": build_hf,
    "file": build_file,
    "url": build_url,
    "random": build_random,
}
