"""Tiny models the dataset-runner and CLI tests share (random weights from a seed)."""
import numpy as np

import relprop as rp


def mlp(seed=0, d=14, h=24, c=3):
    """Dense(d -> h) - ReLU - Dense(h -> c), weights N(0, 0.5), biases N(0, 0.1)."""
    rng = np.random.default_rng(seed)
    return rp.Sequential(rp.Dense(rng.normal(0, 0.5, (h, d)), rng.normal(0, 0.1, h)), rp.ReLU(),
                         rp.Dense(rng.normal(0, 0.5, (c, h)), rng.normal(0, 0.1, c)))


def cnn(seed=0):
    """Conv2d(1 -> 4, 3x3, padding 1) - ReLU - MaxPool2d(2) - Flatten - Dense(64 -> 5), for 1x8x8 inputs."""
    rng = np.random.default_rng(seed)
    return rp.Sequential(rp.Conv2d(rng.normal(0, 0.4, (4, 1, 3, 3)), rng.normal(0, 0.1, 4), stride=1, padding=1),
                         rp.ReLU(), rp.MaxPool2d(2), rp.Flatten(),
                         rp.Dense(rng.normal(0, 0.3, (5, 4 * 4 * 4)), rng.normal(0, 0.1, 5)))


def record_in_place(monkeypatch):
    """What ``run_batches`` found for each internal batch from now on: True where the result was
    written into the output rows themselves (the Dense-chain kernel's), False where it was copied."""
    from relprop.core import execute

    seen, real = [], execute.written_in_place

    def check(r, rows):
        seen.append(real(r, rows))
        return seen[-1]

    monkeypatch.setattr(execute, "written_in_place", check)
    return seen
