"""Cost of grouped / depthwise convolutions (imported as a dense block-diagonal Conv2d) vs torch.

    python bench/grouped_conv.py        (CPU; prints a markdown table)

Model per case: depthwise KxK conv (groups = C, padding K // 2) -> ReLU -> global average pool
-> Linear(C, 10), batch 16, float32; forward = rp.forward / torch no_grad, gradient =
rp.attribute(..., "gradient", target=0) / torch autograd of logit 0. Best of 5 after a warm-up.
"""
import os
import sys

import numpy as np
import torch
from torch import nn

import relprop as rp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from new_layers import best  # noqa: E402  (best of REPEATS after a warm-up call)

CASES = [("depthwise 3x3", 64, 32, 3), ("depthwise 7x7", 128, 16, 7)]
N = 16


def main():
    print(f"torch {torch.__version__}, numpy {np.__version__}, relprop {rp.__version__}, "
          f"torch threads {torch.get_num_threads()}, batch {N}, float32")
    print("| case | input (C, H, W) | pass | relprop ms | torch ms | relprop / torch |")
    print("|---|---|---|---:|---:|---:|")
    for label, c, hw, k in CASES:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, groups=c), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Linear(c, 10)).eval()
        x = np.random.default_rng(0).standard_normal((N, c, hw, hw)).astype(np.float32)
        net = rp.from_torch(model, x)
        xt = torch.from_numpy(x)

        def t_fwd():
            with torch.no_grad():
                model(xt)

        def t_grad():
            xg = xt.clone().requires_grad_(True)
            model(xg)[:, 0].sum().backward()

        rows = [("forward", best(lambda: rp.forward(net, x)), best(t_fwd)),
                ("gradient", best(lambda: rp.attribute(net, x, "gradient", target=0)), best(t_grad))]
        for name, a, b in rows:
            print(f"| {label} | ({c}, {hw}, {hw}) | {name} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.1f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
