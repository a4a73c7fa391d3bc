"""``zootune zoo inspect`` and ``zootune zoo presets`` through the CLI entry point."""

from __future__ import annotations

import json

import torch
import torchvision

from zootune.cli import main


def test_inspect_related_and_unrelated_file_specs(tmp_path, capsys):
    torch.manual_seed(0)
    base = torchvision.models.resnet18().state_dict()
    tuned = {k: v + 0.2 * v.std() * torch.randn_like(v) if v.is_floating_point() and v.dim() > 1
             else v for k, v in base.items()}
    other = torchvision.models.resnet18().state_dict()
    specs = []
    for name, sd in (("base", base), ("tuned", tuned), ("other", other)):
        torch.save({"state_dict": sd}, tmp_path / f"{name}.pth")
        specs.append(f"file:{tmp_path / name}.pth")
    out_json = tmp_path / "report.json"
    rc = main(["zoo", "inspect", *specs, "--arch", "resnet18", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "torchvision.models.resnet.ResNet" in out and "11,689,512" in out
    assert "one zoo?        yes" in out
    assert "preprocessing   members agree" in out
    assert "layer1.0.conv1.weight" in out
    assert "warning: some zoo members look independently trained" in out and "other (" in out
    report = json.loads(out_json.read_text())
    assert [m["name"] for m in report["members"]] == ["base", "tuned", "other"]
    assert report["zoo"]["relatedness"]["unrelated"] == ["other"]
    assert report["members"][0]["load_report"]["wrapper"] == ["state_dict"]


def test_inspect_no_weights_mismatch_and_errors(capsys):
    rc = main(["zoo", "inspect", "torchvision:resnet18", "torchvision:resnet34", "--no-weights"])
    out = capsys.readouterr().out
    assert rc == 0 and "one zoo?        no:" in out and "layer1.2.conv1.weight" in out
    rc = main(["zoo", "inspect", "timm:resnet18", "nonsense:thing"])
    captured = capsys.readouterr()
    assert rc == 2
    err_lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(err_lines) == 1 and err_lines[0].startswith("error: zoo spec 'nonsense:thing'")


def test_inspect_offline_reports_each_failure_and_exits_2(tmp_path, capsys, monkeypatch):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        rc = main(["zoo", "inspect", "torchvision:resnet18:IMAGENET1K_V1", "--offline",
                   "--checkpoint-dir", str(tmp_path)])
    finally:
        torch.hub.set_dir(old)
    captured = capsys.readouterr()
    assert rc == 2
    assert "error: torchvision:resnet18:IMAGENET1K_V1: offline" in captured.out
    assert "1 of 1 spec(s) could not be loaded" in captured.err


def test_presets_lists_paper_zoo(capsys):
    assert main(["zoo", "presets"]) == 0
    out = capsys.readouterr().out
    assert "paper-resnet50:" in out and "moco_v1_200ep_pretrain.pth.tar" in out
    assert "torchvision-backbone:keypointrcnn_resnet50_fpn:COCO_V1" in out
