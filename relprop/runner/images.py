"""Image folders and IDX files (placeholder filled in by the sources work)."""
from __future__ import annotations


def is_idx(path):
    return False


def read_labels(path):
    raise NotImplementedError


def idx_source(path, labels, **options):
    raise NotImplementedError


class ImageFolder:
    def __init__(self, path, **options):
        raise NotImplementedError
