"""Classification heads: one helper for torchvision, timm and plain models; param groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zootune
from zootune.config import build_config
from zootune.tasks import ClassificationTask, attach_head, build_task, find_classifier
from zootune.tasks.classification import HeadError
from zootune.train.optim import param_groups


def test_finds_torchvision_timm_and_plain_heads():
    import timm
    import torchvision

    assert find_classifier(torchvision.models.resnet18()) == "fc"
    assert find_classifier(torchvision.models.mobilenet_v3_small()) == "classifier.3"
    from torchvision.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8,
                            mlp_dim=8)
    assert find_classifier(vit) == "heads.head"
    assert find_classifier(timm.create_model("resnet10t", pretrained=False)) == "fc"
    assert find_classifier(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))) == "2"
    with pytest.raises(HeadError, match="task.head"):
        find_classifier(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_every_source_gets_the_same_fresh_head_and_zoo_tune_keeps_it():
    from zootune.models import small_cnn

    models = [small_cnn(num_classes=7, widths=(4, 8)) for _ in range(3)]
    old = models[1].fc.weight.clone()
    models, name = attach_head(models, 5, seed=1)
    assert name == "fc" and models[0].fc.out_features == 5
    assert all(torch.equal(m.fc.weight, models[0].fc.weight) for m in models)
    assert models[0].fc is not models[1].fc and not torch.equal(models[1].fc.weight[:5], old[:5])
    zm = zootune.zoo_tune(models, exclude=[name], lite=True)
    assert "fc" not in zm.layer_names and torch.equal(zm.model.fc.weight, models[0].fc.weight)
    plain = zm.export()
    assert isinstance(plain.fc, nn.Linear) and plain.fc.out_features == 5


def test_stripped_identity_head_is_replaced_using_an_example_input():
    import torchvision

    models = [torchvision.models.resnet18() for _ in range(2)]
    for m in models:
        m.fc = nn.Identity()
    with pytest.raises(HeadError, match="stripped"):
        attach_head(models, 4)
    models, name = attach_head(models, 4, example=torch.zeros(2, 3, 32, 32))
    assert name == "fc" and models[1].fc.in_features == 512 and models[1].fc.out_features == 4


def test_param_groups_give_head_and_gates_their_own_lr():
    from zootune.models import small_cnn

    cfg = build_config({"task": {"name": "classification", "num_classes": 10},
                        "optim": {"lr": 0.01, "head_lr": 0.1, "gate_lr": 0.5, "weight_decay": 1e-4}})
    task = build_task(cfg.task)
    assert isinstance(task, ClassificationTask) and task.num_classes == 10
    models = task.prepare_zoo([small_cnn(widths=(4, 8)) for _ in range(2)])
    assert task.head_name == "fc" and task.exclude_patterns() == ["fc"]
    zm = zootune.zoo_tune(models, exclude=task.exclude_patterns())
    groups = {g["name"]: g for g in param_groups(zm, cfg.optim, task.head_name)}
    assert groups["head"]["lr"] == 0.1 and groups["gate"]["lr"] == 0.5 and groups["source"]["lr"] == 0.01
    head_ids = {id(p) for p in zm.model.fc.parameters()}
    assert {id(p) for p in groups["head"]["params"]} == head_ids
    assert not head_ids & {id(p) for p in groups["source"]["params"]}
    n_all = sum(1 for p in zm.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups.values()) == n_all
    # a plain model: body + head
    plain = small_cnn(widths=(4, 8))
    g2 = {g["name"]: g for g in param_groups(plain, cfg.optim, "fc")}
    assert g2["head"]["lr"] == 0.1 and len(g2["head"]["params"]) == 2


def test_param_groups_without_the_heads_module_put_everything_in_the_body_group():
    from types import SimpleNamespace

    from torch import nn

    from zootune.train.optim import param_groups

    cfg = SimpleNamespace(lr=0.1, head_lr=1.0, weight_decay=0.0, gate_lr=None, align_lr=None)
    with_head = nn.Sequential()
    with_head.add_module("body", nn.Linear(3, 3))
    with_head.add_module("fc", nn.Linear(3, 2))
    groups = {g["name"]: g for g in param_groups(with_head, cfg, "fc")}
    assert groups["head"]["lr"] == 1.0 and len(groups["head"]["params"]) == 2
    members = nn.ModuleList([nn.Linear(3, 2), nn.Linear(3, 2)])  # an ensemble: heads inside members
    groups = param_groups(members, cfg, "fc")
    assert [g["name"] for g in groups] == ["source"]
    assert len(groups[0]["params"]) == 4 and groups[0]["lr"] == 0.1
