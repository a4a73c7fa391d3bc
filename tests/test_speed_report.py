"""The speed report (benchmarks/speed.py) names the CPU of every cell and never forms an
own-process ratio between runs on different CPUs (sessions run on different machines)."""

from __future__ import annotations

import pytest

from trainer_utils import load_script


@pytest.fixture()
def speed(tmp_path, monkeypatch):
    mod = load_script("benchmarks/speed.py")
    monkeypatch.setattr(mod, "RESULTS", tmp_path)
    return mod


def _rec(method: str, seconds: float, own: float, cpu: str | None, own_cpu: str | None) -> dict:
    rec = {"shape": "paper", "phase": "train", "m": 5, "threads": 2, "method": method,
           "seconds": seconds, "flops": 100.0, "peak_rss_gb": 5.0,
           "fresh_median": own}
    if cpu:
        rec["cpu"] = cpu
    if own_cpu:
        rec["own_cpu"] = own_cpu
    return rec


def _row(md: str, method: str) -> list[str]:
    line = next(l for l in md.splitlines() if l.startswith(f"| train | {method} | 5 |"))
    return [c.strip() for c in line.strip("|").split("|")]


def _report(speed, results: dict) -> str:
    data = {"results": {speed.cell_key("paper", "train", r["method"], 5, speed.allocator_of(r)): r for r in results},
            "environment": {"machine": "x", "python": "3", "torch": "t", "zootune": "z", "threads": 2}}
    speed.write_markdown(data)
    return (speed.RESULTS / "speed.md").read_text()


def test_own_ratio_only_between_runs_on_the_same_cpu(speed):
    md = _report(speed, [_rec("plain", 10.0, 12.0, "Xeon", "Xeon"), _rec("zoo", 13.0, 15.0, "Xeon", "Xeon"),
                         _rec("lite", 11.0, 30.0, "Xeon", "EPYC")])
    assert "**A** = Xeon" in md and "**B** = EPYC" in md
    zoo, lite = _row(md, "zoo"), _row(md, "lite")
    assert zoo[3] == "A / A" and zoo[5] == "1.30x" and zoo[7] == "1.25x"
    assert lite[3] == "A / B" and lite[7] == "-"  # 30 s on another CPU: no ratio against 12 s
    assert lite[-1] == "yes"  # judged on the interleaved ratio alone (1.10x <= 1.2x)


def test_cells_without_a_recorded_cpu_are_labelled_so(speed):
    md = _report(speed, [_rec("plain", 10.0, 12.0, None, None), _rec("zoo", 13.0, 15.0, None, None)])
    assert "not recorded" in md
    assert _row(md, "zoo")[7] == "-"  # unknown machines are not assumed equal


def test_allocator_cells_are_reported_apart_against_their_own_plain(speed):
    recs = [_rec("plain", 10.0, 12.0, "Xeon", "Xeon"), _rec("zoo", 13.0, 15.0, "Xeon", "Xeon"),
            {**_rec("plain", 8.0, 8.0, "Xeon", "Xeon"), "allocator": "tcmalloc"},
            {**_rec("zoo", 12.0, 12.0, "Xeon", "Xeon"), "allocator": "tcmalloc"},
            {**_rec("plain", 20.0, 20.0, "Xeon", "Xeon"), "jemalloc": True}]  # an old record
    assert [speed.allocator_of(r) for r in recs] == ["system"] * 2 + ["tcmalloc"] * 2 + ["jemalloc"]
    assert speed.cell_key("paper", "train", "zoo", 5, "tcmalloc") == "paper/train/zoo/m5/tcmalloc"
    assert speed.cell_key("paper", "train", "zoo", 5) == "paper/train/zoo/m5"
    md = _report(speed, recs)
    sections = md.split("## paper shape")[1:]
    assert [s.splitlines()[0] for s in sections] == [
        ": batch 48, 224x224 — default allocator (glibc)", ": batch 48, 224x224 — with jemalloc (LD_PRELOAD)",
        ": batch 48, 224x224 — with tcmalloc (LD_PRELOAD)"]
    zoo_rows = [l for l in md.splitlines() if l.startswith("| train | zoo | 5 |")]
    assert "| 1.30x |" in zoo_rows[0] and "| 1.50x |" in zoo_rows[1]  # 13/10, then 12/8


@pytest.mark.slow
def test_layer_profile_covers_every_aggregated_conv_with_lite_parts(speed, monkeypatch):
    import torchvision

    import zootune

    monkeypatch.setitem(speed.SHAPES, "tiny", (2, 32))
    rows = speed.profile_layers("tiny", 2, 1, 1)
    n_convs = sum(1 for l in zootune.zoo_tune([torchvision.models.resnet50()] * 2).adaagg_layers().values()
                  if hasattr(l, "kernel_size"))
    assert sum(r["count"] for r in rows) == n_convs
    for r in rows:
        assert all(r[k] > 0 for k in ("plain_ms", "zoo_ms", "lite_ms", "lite_align_merge_ms",
                                      "lite_align_ms", "lite_merge_ms", "lite_gates_ms"))
    speed.write_markdown({"results": {}, "layer_profile": {"tiny": rows},
                          "environment": {"machine": "x", "python": "3", "torch": "t",
                                          "zootune": "z", "threads": 1}})
    md = (speed.RESULTS / "speed.md").read_text()
    assert "lite's parts: alignment + merge folded" in md
    assert all(f"| {r['layer']} | {r['count']} |" in md for r in rows)


def test_layer_profiles_of_two_allocators_are_reported_apart(speed):
    row = {"layer": "layer1.0.conv1", "count": 1, "input": [64, 56, 56], "out_channels": 64,
           "kernel_size": [1, 1], "stride": [1, 1], "aligned": True, "kernel": "bmm",
           "plain_ms": 10.0, "zoo_ms": 12.0, "ratio": 1.2}
    speed.write_markdown({"results": {}, "layer_profile": {"paper": [row], "paper/tcmalloc": [{**row, "plain_ms": 5.0}]},
                          "environment": {"machine": "x", "python": "3", "torch": "t", "zootune": "z", "threads": 2}})
    md = (speed.RESULTS / "speed.md").read_text()
    heads = [l for l in md.splitlines() if l.startswith("## Per-layer profile")]
    assert [h.split(":")[0] for h in heads] == ["## Per-layer profile (paper shape)",
                                                "## Per-layer profile (paper shape, with tcmalloc)"]
    assert "per-sample 12 ms (1.20x)" in md and "per-sample 12 ms (2.40x)" in md


def test_no_align_cells_are_reported_apart_against_their_own_plain(speed):
    recs = [_rec("plain", 10.0, 12.0, "Xeon", "Xeon"), _rec("zoo", 14.0, 15.0, "Xeon", "Xeon"),
            {**_rec("plain", 11.0, 12.0, "Xeon", "Xeon"), "align": False},
            {**_rec("zoo", 12.1, 13.2, "Xeon", "Xeon"), "align": False}]
    assert speed.cell_key("paper", "train", "zoo", 5, "system", False) == "paper/train/zoo/m5/align-none"
    data = {"results": {speed.cell_key("paper", "train", r["method"], 5, "system", r.get("align")): r for r in recs},
            "environment": {"machine": "x", "python": "3", "torch": "t", "zootune": "z", "threads": 2}}
    speed.write_markdown(data)
    md = (speed.RESULTS / "speed.md").read_text()
    heads = [l for l in md.splitlines() if l.startswith("## paper shape")]
    assert len(heads) == 2 and "align=False" in heads[1] and "align=False" not in heads[0]
    zoo_rows = [_cells(l) for l in md.splitlines() if l.startswith("| train | zoo | 5 |")]
    assert zoo_rows[0][5] == "1.40x" and zoo_rows[0][-1] == "no/yes"  # 14/10 against 1.35x; memory 1.0x
    assert zoo_rows[1][5] == "1.10x" and zoo_rows[1][7] == "1.10x"  # 12.1/11 and 13.2/12: its own plain
    assert zoo_rows[1][-1] == "" and zoo_rows[1][-2] == ""  # the targets are for the default model


def test_no_align_cells_are_timed_as_a_group_of_their_own(speed):
    groups = speed.cells(["paper"], ["train"], [5], [], ["paper"])
    assert groups == [("paper", "train", speed.METHODS["train"], 5, None),
                      ("paper", "train", ["plain", "zoo", "lite"], 5, False)]
    assert speed.cells(["paper"], ["infer"], [5], [], ["paper"]) == [("paper", "infer", speed.METHODS["infer"], 5, None)]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]
