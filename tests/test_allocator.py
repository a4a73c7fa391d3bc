"""``zootune --allocator``: re-execution with LD_PRELOAD, clear errors, no loop (zootune.allocator).

The end-to-end tests preload a small glibc library (libanl), so they run without
jemalloc installed; the jemalloc test runs only where libjemalloc2 is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zootune import allocator
from zootune.allocator import AllocatorError, find_library, plan
from zootune.cli import main

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux-only")


def _fake_lib(tmp_path: Path, name: str = "libjemalloc.so.2") -> Path:
    p = tmp_path / name
    p.write_bytes(b"\x7fELF")
    return p


def _system_lib() -> str | None:
    """A real shared library, harmless to preload and not loaded by Python itself (a glibc stub)."""
    loaded = allocator.loaded_libraries()
    for name in ("libanl.so.1", "libutil.so.1", "libnss_dns.so.2", "librt.so.1"):
        for d in allocator.search_dirs():
            p = d / name
            if p.is_file() and os.path.realpath(p) not in loaded:
                return os.path.realpath(p)
    return None


@linux
def test_plan_sets_ld_preload_marker_and_keeps_the_command(tmp_path):
    lib = _fake_lib(tmp_path)
    argv = ["python", "-m", "zootune", "--allocator", "jemalloc", "tune", "cfg.yaml"]
    exe, args, env = plan("jemalloc", argv, {"LD_PRELOAD": "/x/other.so", "PATH": "/bin"},
                          executable="/venv/python", dirs=[tmp_path], loaded=False)
    assert exe == "/venv/python" and args == ["/venv/python", *argv[1:]]
    assert env["LD_PRELOAD"] == f"{lib}:/x/other.so"  # ours first, the user's kept
    assert env[allocator.ENV_MARKER] == str(lib) and env["PATH"] == "/bin"


def test_nothing_to_do_for_system_or_when_already_loaded(tmp_path):
    _fake_lib(tmp_path)
    for choice in (None, "", "system", "default"):
        assert plan(choice, ["zootune"], {}, dirs=[tmp_path]) is None
    assert plan("jemalloc", ["zootune"], {}, dirs=[tmp_path], loaded=True) is None


def test_missing_library_is_one_clear_error(tmp_path):
    with pytest.raises(AllocatorError) as e:
        plan("jemalloc", ["zootune"], {}, dirs=[tmp_path])
    msg = str(e.value)
    assert "\n" not in msg and "libjemalloc.so.2 not found" in msg and "apt-get install libjemalloc2" in msg
    with pytest.raises(AllocatorError, match="libtcmalloc-minimal4"):
        plan("tcmalloc", ["zootune"], {}, dirs=[tmp_path])
    with pytest.raises(AllocatorError, match="no such library file"):
        plan(str(tmp_path / "nope.so"), ["zootune"], {})


@linux
def test_no_second_reexec_when_the_preload_did_not_take(tmp_path):
    lib = _fake_lib(tmp_path)
    env = {allocator.ENV_MARKER: str(lib), "LD_PRELOAD": str(lib)}
    with pytest.raises(AllocatorError, match="not retrying"):
        plan("jemalloc", ["zootune"], env, dirs=[tmp_path], loaded=False)


def test_cli_missing_library_exits_2_with_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(allocator, "search_dirs", lambda: [tmp_path])
    assert main(["--allocator", "jemalloc", "zoo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --allocator jemalloc: libjemalloc.so.2 not found")
    monkeypatch.setenv(allocator.ENV_CHOICE, "tcmalloc")  # the environment variable works the same way
    assert main([]) == 2
    assert "libtcmalloc_minimal.so.4 not found" in capsys.readouterr().err


@linux
def test_cli_in_process_call_never_execs(monkeypatch, capsys, tmp_path):
    _fake_lib(tmp_path)
    monkeypatch.setattr(allocator, "search_dirs", lambda: [tmp_path])
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("an in-process call must not exec"))
    assert main(["--allocator", "jemalloc"]) == 2  # no command: help, after the note
    assert "ignored for an in-process call" in capsys.readouterr().err


def _run_zootune(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV_MARKER,
                                                              allocator.ENV_CHOICE)}
    full.update(env or {})
    code = ("import os, sys\nfrom zootune.cli import main\nfrom zootune.allocator import in_use\n"
            "print('child LD_PRELOAD=' + os.environ.get('LD_PRELOAD', ''), file=sys.stderr)\n"
            "print('in use: ' + in_use(), file=sys.stderr)\n"
            "sys.exit(main())")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full, check=False,
                          timeout=120)


@linux
def test_reexec_end_to_end_sets_ld_preload_once_and_runs_the_command():
    lib = _system_lib()
    if lib is None:
        pytest.skip("no small glibc library to preload")
    r = _run_zootune("--allocator", lib)
    assert r.returncode == 2, r.stderr  # no command given: the re-executed process printed the help
    lines = r.stderr.splitlines()
    starts = [ln for ln in lines if ln.startswith("child LD_PRELOAD=")]
    assert starts == ["child LD_PRELOAD=", f"child LD_PRELOAD={lib}"]  # the original, then exactly one re-exec
    assert any(ln == f"zootune: allocator {lib} ({lib}) preloaded" for ln in lines)
    assert "usage: zootune" in r.stdout


@linux
def test_reexec_with_jemalloc_when_installed():  # not on CI (it does not install libjemalloc2)
    lib = find_library("jemalloc")
    if lib is None:
        pytest.skip("libjemalloc2 not installed")
    r = _run_zootune(env={allocator.ENV_CHOICE: "jemalloc"})
    assert r.returncode == 2, r.stderr
    assert f"zootune: allocator jemalloc ({lib}) preloaded" in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("in use: ")] == ["in use: system", "in use: jemalloc"]


@linux
def test_auto_picks_tcmalloc_when_installed_and_nothing_otherwise(tmp_path, monkeypatch):
    monkeypatch.setattr(allocator, "in_use", lambda: "system")
    assert plan("auto", ["zootune"], {}, dirs=[tmp_path]) is None  # nothing installed: silently glibc
    _fake_lib(tmp_path)  # jemalloc alone: measured slower than glibc, auto never picks it
    assert plan("auto", ["zootune"], {}, dirs=[tmp_path]) is None
    tc = _fake_lib(tmp_path, "libtcmalloc_minimal.so.4")
    exe, args, env = plan("auto", ["zootune", "tune", "c.yaml"], {}, executable="/py", dirs=[tmp_path],
                          loaded=False)
    assert args == ["/py", "tune", "c.yaml"] and env["LD_PRELOAD"] == str(tc)
    # the re-executed process never re-executes or fails, even if the preload did not take
    assert plan("auto", ["zootune"], {allocator.ENV_MARKER: str(tc)}, dirs=[tmp_path], loaded=False) is None
    # a caching allocator the user preloaded is kept
    monkeypatch.setattr(allocator, "in_use", lambda: "jemalloc")
    assert plan("auto", ["zootune"], {}, dirs=[tmp_path], loaded=False) is None


def test_training_commands_default_to_auto_the_others_to_system(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(allocator, "ensure", lambda choice, reexec=True: seen.append((choice, reexec)))
    monkeypatch.delenv(allocator.ENV_CHOICE, raising=False)
    main(["tune", "/nonexistent/config.yaml"])
    main(["rl", "tune", "Alien", "--config", "/nonexistent.yaml"])
    main(["zoo"])
    monkeypatch.setenv(allocator.ENV_CHOICE, "system")  # the environment overrides the default
    main(["tune", "/nonexistent/config.yaml"])
    main(["--allocator", "tcmalloc", "zoo"])  # and the option everything
    assert seen == [("auto", False), ("auto", False), (None, False), ("system", False), ("tcmalloc", False)]


@linux
def test_auto_in_process_call_is_silent_and_never_execs(monkeypatch, capsys, tmp_path):
    _fake_lib(tmp_path, "libtcmalloc_minimal.so.4")
    monkeypatch.setattr(allocator, "search_dirs", lambda: [tmp_path])
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("an in-process call must not exec"))
    assert allocator.ensure("auto", reexec=False) is None


@linux
def test_reexec_with_tcmalloc_by_default_for_a_training_command():
    lib = find_library("tcmalloc")
    if lib is None:
        pytest.skip("libtcmalloc-minimal4 not installed")
    r = _run_zootune("tune", "/nonexistent/config.yaml")
    assert r.returncode == 2, r.stderr  # the re-executed process reported the missing config
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("in use: ")] == ["in use: system", "in use: tcmalloc"]
    assert f"zootune: allocator tcmalloc ({lib}) preloaded (auto; --allocator system to turn it off)" in r.stderr
    r = _run_zootune("--allocator", "system", "tune", "/nonexistent/config.yaml")
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("in use: ")] == ["in use: system"]
