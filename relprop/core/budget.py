"""The one memory policy of relprop's internal batches (``BUDGET``; tests may swap it)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """The one memory policy of an internal batch, in bytes of stored activations.

    CPU: as many rows as keep the activations near ``cache`` (cache-resident elementwise
    passes; measured on a 100k-row MLP, EpsilonPlusFlat: 63 ms at 4 MiB, 99 ms at 16 MiB, 87 ms
    at 1 MiB), but at least ``min_rows`` (GEMMs stay large on conv nets) and at most ``cpu``.
    GPU: ``gpu`` (large batches fill the device). Expanded batches (integrated-gradients path
    points, perturbed copies, coalitions, noisy copies) take ``expand`` per chunk. Inside a
    layer, one im2col buffer takes at most ``cols`` (the conv forward and backward cut their
    batch into chunks below it), the Winograd and shifted-GEMM lowerings' buffers at most ``work``
    (their GEMMs want many columns: ``relprop.core.linear.conv_chunks``), and ``fit_patterns`` cuts its float64 patches at ``patch``.
    An MLP run by the Dense-chain kernel (``relprop.core.dense_chain``) keeps its activations in
    per-thread tiles; its internal batch holds only inputs, scores and results, at most ``chain``.

    A grouped or dilated Conv2d is stored with a dense weight (zeros off the group blocks and
    between the taps, ``graph.Conv2d``); when that is over ``graph.EXPANSION_RATIO`` times its
    compact weight, the dense weight may take at most ``expansion`` bytes and one sample's
    dense im2col columns (in the input's dtype; float32 at shape inference) at most
    ``expansion_cols``: the layer is refused beyond, before anything is allocated. Measured on
    the CPU (lrp.epsilon, 2 samples): a depthwise 7x7 layer with a 441 MiB dense weight peaked
    at 4.2 GiB (the derived rule matrices are copies of it), a 3x3 layer dilated by 32 with
    1 GiB of columns per sample at 1.3 GiB.

    The 512 MiB default admits the widest depthwise layers of the common backbones in float32
    (dense weights: EfficientNet-B5's 1824-channel 5x5 317 MiB, EfficientNetV2-M's 3072-channel
    3x3 324 MiB, ConvNeXt-L's 1536-channel 7x7 441 MiB, EfficientNet-B7's 3840-channel 3x3 and
    2304-channel 5x5 506 MiB each) and still refuses, e.g., torchvision's DeepLabV3 ASPP branch
    (2048 -> 256 channels, 3x3 dilated by 12: 1.22 GiB), ConvNeXt-XL's 2048-channel 7x7
    (784 MiB) and a float64 import of any layer above 256 MiB in float32 (twice the bytes).
    """

    cache: int = 4 * 2**20
    min_rows: int = 32
    cpu: int = 768 * 2**20
    gpu: int = 4 * 2**30
    expand: int = 256 * 2**20
    cols: int = 8 * 2**20
    work: int = 64 * 2**20
    patch: int = 16 * 2**20
    chain: int = 64 * 2**20
    expansion: int = 512 * 2**20
    expansion_cols: int = 2**30

    def rows(self, per_row, device, chain=False):
        per_row = max(1, int(per_row))
        if chain:
            return max(1, self.chain // per_row)
        if device:
            return max(1, self.gpu // per_row)
        return max(1, min(max(self.cache // per_row, self.min_rows), self.cpu // per_row))

    def expand_rows(self, per_row):
        return max(1, self.expand // max(1, int(per_row)))


BUDGET = Budget()
