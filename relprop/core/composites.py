"""Composites: maps from layer type to rule, with a special rule for the first layer.

Same semantics as Zennit's composites of the same names: Dense layers get epsilon, Conv2d
layers get the named rule, activations pass relevance through, average pooling uses the
z-rule, max pooling routes relevance to the winner.
"""
from __future__ import annotations

from . import rules as R


class Composite:
    """Layer-type -> rule map. ``first`` (optional) overrides the rule of the first layer
    whose type is in ``first_types`` (in graph order); ``stabilizer`` is the z-rule's at
    average pooling (Zennit's ``Norm``)."""

    def __init__(self, layer_map, first=None, first_types=("Conv2d", "Dense"), stabilizer=1e-6):
        self.layer_map = dict(layer_map)
        self.stabilizer = R._check_eps(type(self).__name__, stabilizer)  # AvgPool z-rule, as Zennit
        self.first = first
        self.first_types = tuple(first_types)

    def rules_for(self, graph):
        """One rule per Dense/Conv2d node of ``graph``, in graph order."""
        out = []
        first_done = self.first is None
        for node in graph.linear_nodes():
            kind = node.layer.kind
            if not first_done and kind in self.first_types:
                out.append(self.first)
                first_done = True
            else:
                if kind not in self.layer_map:
                    raise ValueError(f"{type(self).__name__} has no rule for {kind} layers (layer {node.name!r}); "
                                     f"its map covers {sorted(self.layer_map)}")
                out.append(self.layer_map[kind])
        return out

    def __repr__(self):
        return f"{type(self).__name__}({self.layer_map}, first={self.first})"


class EpsilonPlus(Composite):
    """Conv2d: z+; Dense: epsilon."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6):
        super().__init__({"Conv2d": R.ZPlus(stabilizer), "Dense": R.Epsilon(epsilon)}, stabilizer=stabilizer)


class EpsilonPlusFlat(Composite):
    """Conv2d: z+; Dense: epsilon; first linear layer: flat."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6):
        super().__init__({"Conv2d": R.ZPlus(stabilizer), "Dense": R.Epsilon(epsilon)}, first=R.Flat(stabilizer),
                         stabilizer=stabilizer)


class EpsilonGammaBox(Composite):
    """Conv2d: gamma; Dense: epsilon; first Conv2d: z^B with bounds ``low``/``high``."""

    def __init__(self, low, high, epsilon=1e-6, gamma=0.25, stabilizer=1e-6):
        super().__init__(
            {"Conv2d": R.Gamma(gamma, stabilizer), "Dense": R.Epsilon(epsilon)},
            first=R.ZBox(low, high, stabilizer),
            first_types=("Conv2d",),
            stabilizer=stabilizer,
        )


class EpsilonAlpha2Beta1(Composite):
    """Conv2d: alpha=2, beta=1; Dense: epsilon."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6):
        super().__init__({"Conv2d": R.AlphaBeta(2.0, 1.0, stabilizer), "Dense": R.Epsilon(epsilon)}, stabilizer=stabilizer)


class EpsilonAlpha2Beta1Flat(Composite):
    """Conv2d: alpha=2, beta=1; Dense: epsilon; first linear layer: flat."""

    def __init__(self, epsilon=1e-6, stabilizer=1e-6):
        super().__init__(
            {"Conv2d": R.AlphaBeta(2.0, 1.0, stabilizer), "Dense": R.Epsilon(epsilon)}, first=R.Flat(stabilizer),
            stabilizer=stabilizer,
        )


__all__ = ["Composite", "EpsilonPlus", "EpsilonPlusFlat", "EpsilonGammaBox", "EpsilonAlpha2Beta1", "EpsilonAlpha2Beta1Flat"]
