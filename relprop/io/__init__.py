"""Models in and out: relprop's own file format, the PyTorch and ONNX importers."""
