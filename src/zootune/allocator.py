"""Run ``zootune`` with jemalloc or tcmalloc instead of glibc's malloc (Linux, CPU).

PyTorch on CPU allocates and frees large activation buffers every step; on some machines
glibc's ``malloc`` hands them back to the kernel and page-faults them in again each time.
Preloading a caching allocator (Debian: ``apt-get install libjemalloc2`` or
``libtcmalloc-minimal4``) removes most of that cost; ``benchmarks/results/speed_notes.md`` has
the measured effect on plain and Zoo-Tuning training steps.

A library can only replace ``malloc`` if it is loaded before the process starts, so
``zootune --allocator jemalloc ...`` (or ``ZOOTUNE_ALLOCATOR=jemalloc zootune ...``) re-executes
the same command once with ``LD_PRELOAD`` set to the library:

- ``jemalloc`` / ``tcmalloc``: found in the usual library directories; if it is not installed,
  one error line says which package to install (nothing is re-executed);
- a path to a shared library: preloaded as given;
- ``system`` (or ``default``, empty): no change;
- ``auto``: tcmalloc when it is installed and no other allocator is loaded yet, else no change,
  silently (never an error). The training commands (``demo``, ``tune``, ``rl``) default to it:
  at the paper's ResNet-50 shape on a 2-core Xeon VM, glibc page-faulted ~4.4M fresh pages
  (~18 GB) back in every plain training step and tcmalloc none, making plain 1.83x, per-sample
  1.41x and lite 1.73x faster at equal peak memory (``speed_notes.md``, "Allocators"); jemalloc
  (default ``MALLOC_CONF``) returns memory to the kernel after 10 s and measured 7-14% *slower*
  than glibc there, so ``auto`` never picks it.

The re-executed process carries ``ZOOTUNE_ALLOCATOR_REEXEC``; it checks that the library is
really mapped (``/proc/self/maps``) and never re-executes again, so there is no loop even when the
preload is ignored (that case is an error too). The equivalent environment line, without the
option, is ``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 zootune ...``.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

ENV_CHOICE = "ZOOTUNE_ALLOCATOR"
ENV_MARKER = "ZOOTUNE_ALLOCATOR_REEXEC"
NONE_CHOICES = ("", "system", "default", "glibc")
AUTO = "auto"
AUTO_ORDER = ("tcmalloc",)  # what ``auto`` tries, in order (see the module docstring for why)

# name -> (library file names, most specific first; Debian package that provides it)
KNOWN = {
    "jemalloc": (("libjemalloc.so.2", "libjemalloc.so"), "libjemalloc2"),
    "tcmalloc": (("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
                 "libtcmalloc-minimal4"),
}


class AllocatorError(RuntimeError):
    """The requested allocator cannot be used (one line, shown as ``error: ...``)."""


def search_dirs() -> list[Path]:
    """Directories searched for the allocator libraries (multiarch first)."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = []
    for base in ("/usr/lib", "/lib", "/usr/local/lib"):
        if multiarch:
            dirs.append(Path(base) / multiarch)
        dirs.append(Path(base))
    dirs += [Path("/usr/lib64"), Path("/lib64"), Path(sys.prefix) / "lib"]
    conda = os.environ.get("CONDA_PREFIX")
    if conda:
        dirs.append(Path(conda) / "lib")
    return dirs


def find_library(choice: str, dirs: Sequence[Path] | None = None) -> Path | None:
    """Path of the library for ``choice`` (a known name or a file path), or ``None``."""
    if choice not in KNOWN:
        p = Path(choice).expanduser()
        return p.resolve() if p.is_file() else None
    names, _ = KNOWN[choice]
    for d in dirs if dirs is not None else search_dirs():
        for n in names:
            p = Path(d) / n
            if p.is_file():
                return p
    return None


def loaded_libraries() -> set[str]:
    """Real paths of the shared objects mapped into this process (empty off Linux)."""
    try:
        text = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    out = set()
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and ".so" in parts[5]:
            out.add(os.path.realpath(parts[5].strip()))
    return out


def is_loaded(path: str | Path) -> bool:
    return os.path.realpath(path) in loaded_libraries()


def in_use() -> str:
    """``jemalloc`` / ``tcmalloc`` when one is mapped into this process, else ``system``."""
    for lib in loaded_libraries():
        base = os.path.basename(lib)
        for name, (files, _) in KNOWN.items():
            if any(base.startswith(f.split(".so")[0] + ".so") for f in files):
                return name
    return "system"


def plan(choice: str | None, argv: Sequence[str], env: Mapping[str, str] | None = None,
         *, executable: str | None = None, dirs: Sequence[Path] | None = None,
         loaded: bool | None = None) -> tuple[str, list[str], dict[str, str]] | None:
    """What to ``execve`` to run ``argv`` under ``choice``, or ``None`` when nothing is to do.

    ``argv`` is the full command line of this process (``sys.orig_argv``). Raises
    :class:`AllocatorError` when the library is missing, or when this process already is the
    re-executed one and the library is still not loaded (so it never loops).
    """
    env = dict(os.environ if env is None else env)
    choice = (choice or "").strip()
    if choice.lower() == AUTO:
        if env.get(ENV_MARKER):  # the re-executed process: ``auto`` never re-executes twice, never fails
            return None
        choice = resolve_auto(dirs)
        if choice is None:  # nothing installed, or a caching allocator is already loaded
            return None
    if choice.lower() in NONE_CHOICES:
        return None
    lib = find_library(choice, dirs)
    if lib is None:
        if choice in KNOWN:
            names, package = KNOWN[choice]
            raise AllocatorError(
                f"--allocator {choice}: {names[0]} not found (Debian/Ubuntu: apt-get install {package}; "
                f"or pass the library's path, or --allocator system)")
        raise AllocatorError(f"--allocator {choice}: no such library file (use jemalloc, tcmalloc, system "
                             "or the path of a shared library)")
    if not sys.platform.startswith("linux"):
        raise AllocatorError(f"--allocator {choice}: preloading an allocator is only supported on Linux")
    if loaded is None:
        loaded = is_loaded(lib)
    if loaded:
        return None
    if env.get(ENV_MARKER):
        raise AllocatorError(
            f"--allocator {choice}: {lib} was preloaded (LD_PRELOAD) but is not loaded in the re-executed "
            "process; not retrying")
    preload = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    env["LD_PRELOAD"] = ":".join([str(lib), *preload])
    env[ENV_MARKER] = str(lib)
    exe = executable or sys.executable
    return exe, [exe, *list(argv)[1:]], env


def resolve_auto(dirs: Sequence[Path] | None = None) -> str | None:
    """The allocator ``auto`` stands for here: the first of :data:`AUTO_ORDER` that is installed,
    or ``None`` when none is, or when the process already runs with a caching allocator (preloaded
    by the user, e.g. jemalloc via ``LD_PRELOAD``: their choice is kept)."""
    if not sys.platform.startswith("linux") or in_use() != "system":
        return None
    for name in AUTO_ORDER:
        if find_library(name, dirs) is not None:
            return name
    return None


def ensure(choice: str | None, *, reexec: bool = True) -> str | None:
    """Make this process run under ``choice``: re-execute it with the library preloaded.

    Returns a one-line note for stderr (``None`` when there is nothing to say). With
    ``reexec=False`` (``zootune.cli.main`` called in-process with its own ``argv``) the process is
    left alone and the note says so.
    """
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    step = plan(choice, argv)
    name = (choice or "").strip().lower()
    auto = name == AUTO
    if step is None:
        marker = os.environ.get(ENV_MARKER)
        if marker and name not in NONE_CHOICES:
            if auto:
                if in_use() == "system":
                    return f"zootune: allocator auto: preloading {marker} did not take; running with glibc"
                return (f"zootune: allocator {in_use()} ({marker}) preloaded (auto; "
                        "--allocator system to turn it off)")
            return f"zootune: allocator {choice} ({marker}) preloaded"
        return None
    if not reexec:
        if auto:
            return None  # the default of an in-process call: nothing to say
        return (f"zootune: --allocator {choice} ignored for an in-process call; start the process with "
                f"LD_PRELOAD={step[2]['LD_PRELOAD'].split(':')[0]}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(step[0], step[1], step[2])
    return None  # pragma: no cover (execve does not return)


__all__ = ["AUTO", "AUTO_ORDER", "ENV_CHOICE", "KNOWN", "AllocatorError", "ensure", "find_library", "in_use", "is_loaded", "plan",
           "resolve_auto"]
