"""Projectors: registry, shapes, LLaVA-compatible layouts, errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from mmit.models.connectors import PROJECTORS, build_projector
from mmit.registry import UnknownNameError

NAMES = PROJECTORS.names() + ["mlp1x-gelu", "mlp3x-gelu", "mlp12x-gelu"]


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_grad(name):
    in_dim, out_dim = (24, 24) if name == "identity" else (24, 40)
    proj = build_projector(name, in_dim, out_dim)
    x = torch.randn(3, 7, in_dim, requires_grad=True)
    y = proj(x)
    assert y.shape == (3, 7, out_dim) and y.dtype == torch.float32
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_registry_lists_patterns_by_example():
    assert set(PROJECTORS.names()) == {"linear", "mlp2x-gelu", "identity"}
    assert "mlp7x-gelu" in PROJECTORS


def test_linear_is_llava_v1():
    proj = build_projector("linear", 16, 32)
    assert isinstance(proj, nn.Linear) and set(proj.state_dict()) == {"weight", "bias"}


def test_mlp2x_gelu_matches_llava_layout():
    proj = build_projector("mlp2x-gelu", 16, 32)
    assert isinstance(proj, nn.Sequential)
    assert [type(m) for m in proj] == [nn.Linear, nn.GELU, nn.Linear]
    assert (proj[0].in_features, proj[0].out_features, proj[2].in_features, proj[2].out_features) == (16, 32, 32, 32)
    # LLaVA-1.5's build_vision_projector('mlp2x_gelu'): its mm_projector.bin loads strictly
    llava = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32))
    assert set(proj.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    proj.load_state_dict(llava.state_dict(), strict=True)
    x = torch.randn(2, 5, 16)
    assert torch.equal(proj(x), llava(x))


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_mlp_depth(depth):
    proj = build_projector(f"mlp{depth}x-gelu", 8, 12)
    linears = [m for m in proj if isinstance(m, nn.Linear)]
    assert len(linears) == depth
    assert sum(isinstance(m, nn.GELU) for m in proj) == depth - 1
    assert [i for i, m in enumerate(proj) if isinstance(m, nn.Linear)] == list(range(0, 2 * depth, 2))


def test_identity_requires_equal_dims():
    assert isinstance(build_projector("identity", 8, 8), nn.Identity)
    with pytest.raises(ValueError, match=re.escape("in_dim == out_dim")):
        build_projector("identity", 8, 16)


@pytest.mark.parametrize("bad,suggestion", [("mlp2x_gelu", "mlp2x-gelu"), ("lineer", "linear"), ("identiti", "identity")])
def test_unknown_names_suggest(bad, suggestion):
    with pytest.raises(UnknownNameError) as e:
        build_projector(bad, 8, 8)
    assert suggestion in str(e.value)


def test_mlp0x_is_unknown():
    with pytest.raises(UnknownNameError):
        build_projector("mlp0x-gelu", 8, 8)


@pytest.mark.parametrize("dims", [(0, 8), (8, -1)])
def test_non_positive_dims(dims):
    with pytest.raises(ValueError, match="positive"):
        build_projector("linear", *dims)
