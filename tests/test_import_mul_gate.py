"""A product of two full-shape branches (a gated convolution, ``h * sigmoid(g)``): the importer
gives the LRP relevance to the signal, not to the sigmoid-type gate, whichever side it is on;
an ambiguous product (no gate on either side) imports with a notice naming its choice."""
from __future__ import annotations

import numpy as np
import pytest

import relprop as rp

torch = pytest.importorskip("torch")


class Gated(torch.nn.Module):
    def __init__(self, gate_first):
        super().__init__()
        torch.manual_seed(0)
        self.h, self.g = torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Conv2d(2, 3, 3, padding=1)
        self.head = torch.nn.Linear(3 * 5 * 5, 4)
        self.gate_first = gate_first

    def forward(self, x):
        h, g = torch.relu(self.h(x)), torch.sigmoid(self.g(x))
        y = g * h if self.gate_first else h * g
        return self.head(torch.flatten(y, 1))


@pytest.mark.parametrize("gate_first", [False, True])
def test_the_signal_of_a_full_shape_product_is_the_non_gate_input(gate_first):
    m = Gated(gate_first).double().eval()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net = rp.from_torch(m, x)
    mul = next(n for n in net.nodes if n.layer.kind == "Mul")
    kinds = {n.name: n.layer.kind for n in net.nodes}
    signal = mul.inputs[mul.layer.signal]
    assert kinds[signal] != "Sigmoid" and kinds[mul.inputs[1 - mul.layer.signal]] == "Sigmoid"
    np.testing.assert_allclose(rp.forward(net, x.numpy()), m(x).detach().numpy(), rtol=1e-10)


class Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Conv2d(2, 3, 3, padding=1)
        self.head = torch.nn.Linear(3 * 5 * 5, 4)

    def forward(self, x):
        return self.head(torch.flatten(torch.relu(self.a(x)) * torch.relu(self.b(x)), 1))


def test_an_ambiguous_product_imports_with_a_notice():
    x = torch.randn(2, 2, 5, 5)
    with pytest.warns(rp.io.ImportNotice, match="same shape"):
        net = rp.from_torch(Plain().eval(), x)
    assert any(n.layer.kind == "Mul" for n in net.nodes)
