"""Where weights are found: local checkpoint directories, library caches, and downloads.

Lookup order for every pretrained spec:

1. the *checkpoint directories* named by ``checkpoint_dir=`` (or ``$ZOOTUNE_CHECKPOINT_DIR``,
   several joined by ``os.pathsep``): a file with the download's base name
   (``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``), directly or under ``checkpoints/``; for
   timm/hub models ``<model name>.safetensors`` or a ``<org>/<repo>/`` folder as written by
   ``huggingface-cli download --local-dir``; a directory laid out like the Hugging Face cache
   (``models--org--repo/``) also works;
2. the library caches: torch's hub cache (``torch.hub.get_dir()/checkpoints``) for URLs and
   torchvision weights, the Hugging Face cache (``$HF_HUB_CACHE``) for timm and hub models;
3. a download into those caches, unless offline.

Offline mode is on when ``offline=True`` is passed, or ``$ZOOTUNE_OFFLINE`` or
``$HF_HUB_OFFLINE`` is set to ``1``/``true``. Then a missing file fails at once with
:class:`OfflineError` naming the spec and every directory searched. Downloads use a socket
timeout, so a dead network fails fast with :class:`DownloadError` instead of hanging.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from zootune.zoo.errors import DownloadError, OfflineError

ENV_OFFLINE = "ZOOTUNE_OFFLINE"
ENV_CHECKPOINT_DIR = "ZOOTUNE_CHECKPOINT_DIR"
DOWNLOAD_TIMEOUT_S = 20.0
PROBE_TIMEOUT_S = 5.0
_TRUE = {"1", "true", "yes", "on"}


def is_offline(offline: bool | None = None) -> bool:
    """Explicit ``offline`` wins; otherwise ``$ZOOTUNE_OFFLINE`` or ``$HF_HUB_OFFLINE``."""
    if offline is not None:
        return bool(offline)
    for var in (ENV_OFFLINE, "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True
    return False


def checkpoint_dirs(checkpoint_dir: str | Path | Sequence[str | Path] | None = None) -> list[Path]:
    """The local checkpoint directories: the argument, else ``$ZOOTUNE_CHECKPOINT_DIR``."""
    if checkpoint_dir is None:
        env = os.environ.get(ENV_CHECKPOINT_DIR, "")
        items: list[str | Path] = [p for p in env.split(os.pathsep) if p]
    elif isinstance(checkpoint_dir, (str, Path)):
        items = [p for p in str(checkpoint_dir).split(os.pathsep) if p]
    else:
        items = list(checkpoint_dir)
    return [Path(p).expanduser() for p in items]


def torch_cache_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_dir() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub missing
        return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


@dataclass
class Context:
    """Loading options shared by every member of one :func:`load_zoo` call."""

    offline: bool = False
    dirs: list[Path] = field(default_factory=list)

    @classmethod
    def make(cls, offline: bool | None, checkpoint_dir: object) -> "Context":
        return cls(is_offline(offline), checkpoint_dirs(checkpoint_dir))  # type: ignore[arg-type]

    def where(self, extra: Iterable[Path]) -> str:
        places = [str(p) for p in [*self.dirs, *extra]]
        return ", ".join(dict.fromkeys(places))


def _first_file(candidates: Iterable[Path]) -> Path | None:
    for c in candidates:
        if c.is_file():
            return c
    return None


def find_url_file(url: str, ctx: Context) -> Path | None:
    """A local copy of ``url``'s file in a checkpoint directory or torch's hub cache."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    cands = []
    for d in [*ctx.dirs, torch_cache_dir()]:
        cands += [d / name, d / "checkpoints" / name]
    return _first_file(cands)


def fetch_url(url: str, spec: str, ctx: Context) -> Path:
    """Path of ``url``'s file: a local copy, or a download into torch's hub cache."""
    found = find_url_file(url, ctx)
    if found is not None:
        return found
    cache = torch_cache_dir()
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if ctx.offline:
        raise OfflineError(
            f"{spec}: offline and '{name}' is not in {ctx.where([cache])}; download it "
            f"from {url} into one of them, or turn offline mode off"
        )
    return _download(url, cache / name, spec)


_PROBED: dict[tuple[str, int], str | None] = {}


def _unreachable(url: str) -> str | None:
    """Why ``url``'s host cannot be reached (``None`` if a TCP connection opens), fast.

    Libraries retry failed connections with back-off (about a minute per file for the hub
    client); one probe with a short timeout lets us fail at once instead. Cached per host.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    key = (host, port)
    if key not in _PROBED:
        try:
            with socket.create_connection(key, timeout=PROBE_TIMEOUT_S):
                _PROBED[key] = None
        except OSError as exc:
            _PROBED[key] = f"{host} unreachable: {exc.strerror or exc}"
    return _PROBED[key]


def _download(url: str, dst: Path, spec: str) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    why = _unreachable(url)
    if why:
        raise DownloadError(
            f"{spec}: cannot download {url} ({why}); put '{dst.name}' in {dst.parent} or in a "
            f"checkpoint directory ({ENV_CHECKPOINT_DIR}=...), or set {ENV_OFFLINE}=1 to fail "
            "without trying the network"
        )
    from zootune.atomic import atomic_write

    def fetch(tmp_name: str) -> None:
        """Stream the file into ``tmp_name``; a wrong checksum aborts (nothing is kept)."""
        sha = hashlib.sha256()
        with open(tmp_name, "wb") as out:
            req = urllib.request.Request(url, headers={"User-Agent": "zootune"})
            with urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                from tqdm.auto import tqdm

                with tqdm(total=total, unit="B", unit_scale=True, desc=dst.name,
                          disable=None) as bar:
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        out.write(chunk)
                        sha.update(chunk)
                        bar.update(len(chunk))
        m = re.search(r"-([a-f0-9]{6,})\.", dst.name)
        if m and not sha.hexdigest().startswith(m.group(1)):
            raise DownloadError(
                f"{spec}: downloaded {url} but its SHA-256 does not start with {m.group(1)} "
                "as its file name promises; not using it"
            )

    try:
        return atomic_write(dst, fetch)
    except DownloadError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"{spec}: cannot download {url} ({reason}); put the file in {dst.parent} or in a "
            f"checkpoint directory ({ENV_CHECKPOINT_DIR}=...) and retry, or set "
            f"{ENV_OFFLINE}=1 to fail without trying the network"
        ) from None


# ------------------------------------------------------------------ Hugging Face hub files


def _hf_local_dirs(repo_id: str, ctx: Context) -> list[Path]:
    org, name = repo_id.split("/", 1)
    out = []
    for d in ctx.dirs:
        out += [d / repo_id, d / f"{org}--{name}", d / name]
    return out


def find_hf_file(repo_id: str, filename: str, revision: str | None, ctx: Context) -> Path | None:
    """A local copy of ``filename`` from hub repo ``repo_id`` (checkpoint dirs, then caches)."""
    for d in _hf_local_dirs(repo_id, ctx):
        if (d / filename).is_file():
            return d / filename
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for cache in [*ctx.dirs, hf_cache_dir()]:
        try:
            hit = try_to_load_from_cache(
                repo_id, filename, cache_dir=str(cache), revision=revision
            )
        except Exception:
            hit = None
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def fetch_hf(
    repo_id: str,
    filenames: Sequence[str],
    revision: str | None,
    spec: str,
    ctx: Context,
) -> Path:
    """The first of ``filenames`` available for ``repo_id``: local, cached, or downloaded."""
    for fn in filenames:
        hit = find_hf_file(repo_id, fn, revision, ctx)
        if hit is not None:
            return hit
    names = " or ".join(filenames)
    if ctx.offline:
        raise OfflineError(
            f"{spec}: offline and {names} of hub repo '{repo_id}' is not in "
            f"{ctx.where([hf_cache_dir()])}; download it first (huggingface-cli download "
            f"{repo_id}) or turn offline mode off"
        )
    endpoint = _hf_endpoint()
    why = _unreachable(endpoint)
    if why:
        raise DownloadError(
            f"{spec}: cannot get {names} of hub repo '{repo_id}' ({why}); not in "
            f"{ctx.where([hf_cache_dir()])}. Download it where the hub can be reached "
            f"(huggingface-cli download {repo_id}) and point {ENV_CHECKPOINT_DIR} or "
            f"$HF_HUB_CACHE at it, or set {ENV_OFFLINE}=1 to fail without trying the network"
        )
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError
    except ImportError:  # pragma: no cover - older huggingface_hub
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError  # type: ignore

        RemoteEntryNotFoundError = EntryNotFoundError  # type: ignore
    last: Exception | None = None
    for fn in filenames:
        try:
            return Path(hf_hub_download(repo_id, fn, revision=revision))
        except (EntryNotFoundError, RemoteEntryNotFoundError) as exc:  # try the next name
            last = exc
            continue
        except Exception as exc:  # network, auth, unknown repo: one clear line
            last = exc
            break
    raise DownloadError(
        f"{spec}: cannot get {names} of hub repo '{repo_id}' ({type(last).__name__}: "
        f"{_first_line(last)}); cache searched: {ctx.where([hf_cache_dir()])}. Download it "
        f"where it can be reached, or set {ENV_OFFLINE}=1 to fail without trying the network"
    )


def _hf_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except Exception:  # pragma: no cover
        return "https://huggingface.co"


def _first_line(exc: object) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""


