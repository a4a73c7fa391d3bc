"""zootune.align: permutation groups from the graph, weight/activation matching, repair."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import zootune
from zootune.align import (AlignError, UnsupportedOpError, align_zoo, apply_permutations,
                           permutation_spec, repair_batchnorm)
from zootune.demo.model import MiniCNN

torch.set_num_threads(1)


def _randomise_norms(m: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so permutation mistakes show."""
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.normal_()
            mod.bias.data.normal_()
        if isinstance(mod, nn.LayerNorm):
            mod.weight.data.normal_()
            mod.bias.data.normal_()
    return m.eval()


def _zoo(build, n: int = 2) -> list[nn.Module]:
    out = []
    for s in range(n):
        torch.manual_seed(100 + s)
        out.append(_randomise_norms(build()))
    return out


class Block(nn.Module):
    """A pre-norm transformer block: attention and an MLP, each with a residual."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 3 * dim), nn.GELU(), nn.Linear(3 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    def __init__(self, dim: int = 16, tokens: int = 5, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim))
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.embed(x) + self.pos)
        return self.head(self.norm(x).mean(dim=1))


class FlattenNet(nn.Module):
    """conv -> BN -> ReLU -> flatten C x H x W -> Linear (channel c covers H*W inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 7)
        self.out = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.out(torch.relu(self.fc(x.flatten(1))))


class CumsumNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3)
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.cumsum(self.a(x), dim=1))


def _resnet(name: str):
    tv = pytest.importorskip("torchvision")
    return lambda: getattr(tv.models, name)(num_classes=10)


ARCHS = {
    "minicnn": (lambda: MiniCNN(10, width=8), torch.rand(3, 1, 16, 16)),
    "flatten": (FlattenNet, torch.randn(3, 2, 4, 4)),
    "transformer": (TinyTransformer, torch.randn(3, 5, 6)),
}


def _random_perms(spec, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    perms = []
    for grp in spec.groups:
        size = grp.size // grp.blocks
        perms.append(torch.cat([torch.randperm(size, generator=g) + b * size for b in range(grp.blocks)]))
    return perms


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_align_preserves_function(arch):
    build, x = ARCHS[arch]
    zoo = _zoo(build, 3)
    before = [copy.deepcopy(m.state_dict()) for m in zoo]
    aligned = align_zoo(zoo, example_input=x)
    assert len(aligned) == 3 and aligned.info["groups"] > 0
    for m, a, st in zip(zoo, aligned, before):
        assert a is not m
        with torch.no_grad():
            assert (m(x) - a(x)).abs().max() <= 1e-4
        for k, v in m.state_dict().items():  # the inputs are untouched
            assert torch.equal(v, st[k])
    # the non-reference members really were permuted
    assert aligned.info["members"][1]["moved_channels"] > 0


def test_transformer_groups_cover_attention_internals():
    spec = permutation_spec(TinyTransformer(), torch.randn(2, 5, 6))
    blocked = [g for g in spec.groups if g.blocks > 1]
    assert len(blocked) == 4  # (q,k) and (v,out) in each of two attention modules
    assert all(g.blocks == 4 and g.size == 16 for g in blocked)
    # the residual stream is one group through embed, pos, both blocks and the final norm
    stream = max(spec.groups, key=lambda g: len(g.members))
    keys = {m.key for m in stream.members}
    assert {"embed.weight", "pos", "norm.weight", "head.weight", "blocks.0.attn.in_proj_weight"} <= keys


def test_flatten_into_linear_uses_blocks_of_hw():
    spec = permutation_spec(FlattenNet(), torch.randn(2, 2, 4, 4))
    g = next(g for g in spec.groups if any(m.key == "conv.weight" for m in g.members))
    fc = next(m for m in g.members if m.key == "fc.weight")
    assert g.size == 6 and fc.axis == 1 and fc.factor == 16


@pytest.mark.parametrize("arch", ["minicnn", "flatten", "transformer"])
def test_weight_matching_recovers_inverse_of_known_permutation(arch):
    build, x = ARCHS[arch]
    torch.manual_seed(3)
    a = _randomise_norms(build())
    spec = permutation_spec(a, x)
    perms = _random_perms(spec)
    b = apply_permutations(a, spec, perms)
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max() <= 1e-4
    aligned = align_zoo([a, b], example_input=x)
    for grp, p in zip(spec.groups, perms):
        found = aligned.permutations[1][grp.name]
        assert torch.equal(found, torch.argsort(p)), grp.name
    for k, v in a.state_dict().items():
        assert torch.allclose(v.float(), aligned[1].state_dict()[k].float())


def test_activation_matching_recovers_inverse_of_known_permutation():
    torch.manual_seed(4)
    a = MiniCNN(10, width=8).eval()  # default BatchNorm: no dead ReLU channels (those would tie)
    x = torch.rand(16, 1, 16, 16)
    spec = permutation_spec(a, x)
    perms = _random_perms(spec, seed=1)
    b = apply_permutations(a, spec, perms)
    aligned = align_zoo([a, b], method="activations", data=[x, torch.rand(16, 1, 16, 16)])
    for grp, p in zip(spec.groups, perms):
        assert torch.equal(aligned.permutations[1][grp.name], torch.argsort(p))


def test_matching_raises_similarity_of_independent_models():
    from zootune.zoo.relatedness import relatedness

    zoo = _zoo(lambda: MiniCNN(10, width=8), 2)
    aligned = align_zoo(zoo)
    before = relatedness(zoo).pairwise()[0, 1]
    after = relatedness(aligned).pairwise()[0, 1]
    assert after > before
    w = aligned.info["members"][1]
    assert w["objective_after"] > w["objective_before"]


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_torchvision_resnets(name):
    zoo = _zoo(_resnet(name), 2)
    x = torch.randn(2, 3, 32, 32)
    aligned = align_zoo(zoo, example_input=x, max_sweeps=3)
    # one group per residual stream (4 stages); ResNet-50's stem (64 channels) is a group of its
    # own, as layer1 widens the stream to 256 through a downsample branch (in ResNet-18 the stem
    # feeds layer1's 64-channel stream directly); plus one group per inner conv of each block
    stages = 4 + (1 if name == "resnet50" else 0)
    blocks = {"resnet18": 8, "resnet50": 16}[name]
    inner = blocks * (1 if name == "resnet18" else 2)
    assert aligned.info["groups"] == stages + inner
    assert aligned.info["members"][1]["max_abs_diff"] <= 1e-4


def test_unsupported_op_names_the_node():
    with pytest.raises(UnsupportedOpError, match="cumsum"):
        align_zoo(_zoo(CumsumNet, 2), example_input=torch.randn(1, 1, 5, 5))


def test_untraceable_model_gets_one_clear_error():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return self.c(x) if x.sum() > 0 else x

    with pytest.raises(AlignError, match="cannot trace Branchy"):
        align_zoo(_zoo(Branchy, 2), example_input=torch.randn(1, 1, 3, 3))


def test_bad_arguments():
    zoo = _zoo(lambda: MiniCNN(10, width=8), 2)
    with pytest.raises(AlignError, match="method"):
        align_zoo(zoo, method="magic")
    with pytest.raises(AlignError, match="reference"):
        align_zoo(zoo, reference=5)
    with pytest.raises(AlignError, match="needs data"):
        align_zoo(zoo, method="activations")
    with pytest.raises(AlignError, match="needs data"):
        align_zoo(zoo, repair=True)
    with pytest.raises(zootune.ZootuneError):
        align_zoo([zoo[0]])


def test_group_norm_and_grouped_conv_stay_fixed():
    """Channels normalised in groups cannot be permuted; the model still aligns (less)."""
    from zootune.models import small_cnn

    zoo = _zoo(lambda: small_cnn(num_classes=3, widths=[4, 8], norm="group"), 2)
    x = torch.randn(2, 1, 8, 8)
    aligned = align_zoo(zoo, example_input=x)
    assert aligned.info["members"][1]["max_abs_diff"] <= 1e-4


def test_repair_matches_interpolated_statistics():
    zoo = _zoo(lambda: MiniCNN(10, width=8), 2)
    data = [torch.rand(32, 1, 16, 16) for _ in range(3)]
    aligned = align_zoo(zoo, data=data, repair="repair")
    merged = aligned.merge()
    from zootune.align import batchnorm_output_stats

    got = batchnorm_output_stats(merged, data)
    src = [batchnorm_output_stats(m, data) for m in aligned]
    for name, (mean, std) in got.items():
        want_mean = (src[0][name][0] + src[1][name][0]) / 2
        want_std = (src[0][name][1] + src[1][name][1]) / 2
        assert torch.allclose(mean, want_mean, atol=2e-3), name
        assert torch.allclose(std, want_std, rtol=2e-2, atol=2e-3), name
    plain = aligned.merge(repair=False)
    reset = aligned.merge(repair="reset")
    assert not torch.equal(plain.features[1].running_mean, reset.features[1].running_mean)
    with pytest.raises(AlignError, match="repair mode"):
        repair_batchnorm(plain, list(aligned), data, mode="bogus")
