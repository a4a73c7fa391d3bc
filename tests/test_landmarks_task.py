"""The landmarks task: heatmap targets and decoding, NME / failure rate / AUC, the heatmap head on
the trunk of torchvision, timm and plain models (and its fallback), Zoo-Tuning and export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import zootune
from zootune.tasks.landmarks import (
    HEAD_NAME,
    HookedHeatmapNet,
    LandmarkTask,
    TracedHeatmapNet,
    attach_heatmap_head,
    auc,
    decode_heatmaps,
    failure_rate,
    find_trunk,
    gaussian_heatmaps,
    heatmap_to_image,
    normalized_mean_error,
)


def _hook_output(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen = []
    h = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
    h.remove()
    return seen[-1]


# ---- decoding -------------------------------------------------------------------------------


def test_decoding_recovers_a_subpixel_peak_within_a_quarter_cell():
    g = torch.Generator().manual_seed(0)
    peaks = torch.rand(1, 200, 2, generator=g) * 13 + 1  # not next to the border of a 16x16 map
    hm, w = gaussian_heatmaps((peaks + 0.5), (16, 16), (1.0, 1.0), sigma=1.5)  # stride 1
    assert torch.all(w == 1)
    dec = decode_heatmaps(hm)
    err = (dec - peaks).abs()
    assert float(err.max()) <= 0.25 + 1e-5
    plain = torch.stack([hm.flatten(2).argmax(-1) % 16, hm.flatten(2).argmax(-1) // 16], -1).float()
    assert float((plain - peaks).abs().max()) > 0.4  # the quarter shift is what gets it there
    assert float(err.mean()) < float((plain - peaks).abs().mean())


def test_targets_and_decoding_round_trip_in_image_pixels():
    # 64-pixel image, 16-cell heatmap (stride 4): a keypoint comes back within a quarter cell
    kp = torch.tensor([[[10.3, 20.9], [33.0, 47.5], [2.2, 61.0]]])
    hm, _ = gaussian_heatmaps(kp, (16, 16), (4.0, 4.0), sigma=1.5)
    back = heatmap_to_image(decode_heatmaps(hm), (4.0, 4.0))
    assert float((back - kp).abs().max()) <= 0.25 * 4 + 1e-4
    # the target peaks (value 1) exactly where a point falls on a cell centre
    hm, _ = gaussian_heatmaps(torch.tensor([[[4 * 5 + 2.0, 4 * 7 + 2.0]]]), (16, 16), (4.0, 4.0), 1.0)
    assert hm[0, 0, 7, 5] == pytest.approx(1.0) and hm[0, 0, 7, 6] == pytest.approx(np.exp(-0.5))


def test_points_outside_the_image_get_no_target():
    kp = torch.tensor([[[-3.0, 10.0], [10.0, 70.0], [10.0, 10.0]]])
    hm, w = gaussian_heatmaps(kp, (16, 16), (4.0, 4.0), 1.5)
    assert w.tolist() == [[0.0, 0.0, 1.0]]
    assert hm[0, :2].abs().sum() == 0 and hm[0, 2].max() > 0.5


# ---- metrics --------------------------------------------------------------------------------


def test_nme_zero_for_a_perfect_prediction_and_scales_as_defined():
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(5, 68, 2, generator=g) * 100
    assert torch.all(normalized_mean_error(gt, gt, (36, 45)) == 0)
    d = (gt[:, 36] - gt[:, 45]).norm(dim=-1)
    pred = gt + torch.tensor([0.6, 0.8]) * (0.05 * d)[:, None, None]  # every point off by 5% of d
    assert torch.allclose(normalized_mean_error(pred, gt, (36, 45)), torch.full((5,), 0.05, dtype=torch.float64))
    # invariant to a common scale of image and points (crop + resize does not change NME)
    assert torch.allclose(normalized_mean_error(3 * pred, 3 * gt, (36, 45)),
                          normalized_mean_error(pred, gt, (36, 45)))
    # equals the naive loop
    pred = gt + torch.randn(5, 68, 2, generator=g)
    naive = [np.mean([np.linalg.norm(pred[b, k] - gt[b, k]) for k in range(68)])
             / np.linalg.norm(gt[b, 36] - gt[b, 45]) for b in range(5)]
    assert np.allclose(normalized_mean_error(pred, gt, (36, 45)).numpy(), naive)
    box = normalized_mean_error(pred, gt, "box")
    wh = gt.amax(1) - gt.amin(1)
    assert np.allclose(box.numpy(), np.array(naive) * d.numpy() / (wh[:, 0] * wh[:, 1]).sqrt().numpy(), rtol=1e-5)


def test_failure_rate_and_auc_match_a_naive_computation():
    e = torch.tensor([0.01, 0.03, 0.05, 0.05, 0.08, 0.1, 0.12, 0.3], dtype=torch.float64)
    assert failure_rate(e, 0.1) == pytest.approx(2 / 8)
    grid = np.linspace(0, 0.1, 200001)
    ced = (e.numpy()[None, :] <= grid[:, None]).mean(1)
    assert auc(e, 0.1) == pytest.approx(np.trapezoid(ced, grid) / 0.1, abs=1e-4)
    assert auc(torch.zeros(3), 0.1) == pytest.approx(1.0) and auc(torch.ones(3), 0.1) == 0.0


# ---- the head on the trunk ------------------------------------------------------------------


def test_resnet_gets_the_papers_head_on_layer4():
    torch.manual_seed(0)
    models = [torchvision.models.resnet18(num_classes=7) for _ in range(2)]
    x = torch.randn(2, 3, 64, 64)
    feats = _hook_output(models[0].eval(), "layer4", x)
    out, facts = attach_heatmap_head(models, 68, x, seed=3)
    assert facts["trunk"] == "layer4" and facts["deconv_layers"] == 3 and facts["traced"]
    assert facts["heatmap_stride"] == 4  # 256 -> 64 heatmaps in the paper
    net = out[0].eval()
    assert isinstance(net, TracedHeatmapNet) and type(out[1]) is type(net)
    names = dict(net.named_modules())
    assert "layer3.1.conv2" in names and HEAD_NAME in names and "fc" not in names and "avgpool" not in names
    head = getattr(net, HEAD_NAME)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in head) == 3
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 68, 16, 16)
        assert torch.allclose(y, head(feats), atol=1e-6)  # the trunk is the model up to layer4
    # identical fresh heads in every source: the zoo average is that head
    for (k, a), b in zip(out[0].state_dict().items(), out[1].state_dict().values()):
        if k.startswith(HEAD_NAME):
            assert torch.equal(a, b)


def test_timm_and_minicnn_trunks():
    timm = pytest.importorskip("timm")
    from zootune.demo.model import MiniCNN

    m = timm.create_model("resnet18", pretrained=False, num_classes=5)
    assert find_trunk(m.eval(), torch.randn(2, 3, 64, 64))[0] == "layer4"
    models = [MiniCNN(10, width=8), MiniCNN(10, width=8)]
    x = torch.randn(2, 1, 64, 64)
    out, facts = attach_heatmap_head(models, 5, x)
    assert facts["trunk"] == "features.16" and facts["deconv_layers"] == 0  # its last ReLU
    assert isinstance(models[0].features[16], nn.ReLU) and isinstance(models[0].features[17], nn.AdaptiveAvgPool2d)
    assert out[0](x).shape == (2, 5, 16, 16)


class _Branchy(nn.Module):
    """A model fx cannot trace (control flow on a tensor's value)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if y.sum() > -1:  # data-dependent
            y = y * 1.0
        return self.fc(self.pool(y).flatten(1))


def test_untraceable_models_use_the_hook_fallback():
    torch.manual_seed(0)
    models = [_Branchy(), _Branchy()]
    x = torch.randn(2, 3, 16, 16)
    conv_out = torch.relu(models[0].conv(x)).detach()
    out, facts = attach_heatmap_head(models, 4, x, heatmap_stride=2)
    assert not facts["traced"] and facts["trunk"] == "conv"  # the last spatial output
    assert isinstance(out[0], HookedHeatmapNet)
    with torch.no_grad():
        # the hook sees conv's output (before the ReLU, which is not a module here)
        assert torch.allclose(out[0](x), getattr(out[0], HEAD_NAME)(models[0].conv(x)), atol=1e-6)
    assert conv_out.shape[-1] == 8


def test_explicit_trunk_and_errors():
    models = [torchvision.models.resnet18(), torchvision.models.resnet18()]
    x = torch.randn(2, 3, 64, 64)
    out, facts = attach_heatmap_head(models, 3, x, trunk="layer3", deconv_layers=1, channels=16)
    assert facts["trunk"] == "layer3" and out[0](x).shape == (2, 3, 8, 8)
    from zootune.tasks import TaskError

    with pytest.raises(TaskError, match="task.trunk 'layer9'"):
        attach_heatmap_head([torchvision.models.resnet18()], 3, x, trunk="layer9")


@pytest.mark.slow
def test_zoo_tuning_a_heatmap_zoo_keeps_the_head_out_and_exports_exactly():
    torch.manual_seed(0)
    models = [torchvision.models.resnet18() for _ in range(2)]
    x = torch.randn(2, 3, 64, 64)
    out, _ = attach_heatmap_head(models, 6, x, channels=8, seed=0)
    zm = zootune.zoo_tune(out, exclude=[HEAD_NAME], lite=True, align="paper", kernel="grouped")
    assert not any(n.startswith(HEAD_NAME) for n in zm.layer_names)
    assert "layer3.0.conv2" in zm.settings["align"]  # the paper's align patterns still match
    zm.train()
    loss = zm(x).pow(2).mean()
    loss.backward()
    plain = zm.export()
    assert isinstance(plain, TracedHeatmapNet)
    zm.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), zm(x), atol=1e-5)


def test_task_loss_weights_and_metrics_through_a_batch():
    task = LandmarkTask(LandmarkTask.Options(name="landmarks", num_points=3, norm=[0, 1], sigma=1.0))
    images = torch.zeros(2, 1, 32, 32)
    kp = torch.tensor([[[8.0, 8.0], [24.0, 8.0], [16.0, 20.0]], [[6.0, 10.0], [26.0, 10.0], [16.0, 40.0]]])
    batch = {"image": images, "keypoints": kp}
    target, w = task.targets(torch.zeros(2, 3, 16, 16), batch)
    assert w[1, 2] == 0  # outside the image
    assert task.loss(target, batch) == 0  # the target itself is a perfect output
    m = task.batch_metrics(target, batch)
    assert m["nme_per_face"].shape == (2,)
    # decoded from perfect targets: within a quarter cell (0.5 px here) per axis of the truth
    assert float(m["nme_per_face"][0]) <= 2 ** 0.5 * 0.5 / 16 + 1e-6
    s = task.summarize({"nme_per_face": m["nme_per_face"].double(), "loss_sum": 0.0, "count": 2.0})
    assert set(s) == {"loss", "nme", "failure_rate", "auc"}
    assert task.summary_line(s).startswith("nme ")
