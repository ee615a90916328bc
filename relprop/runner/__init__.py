"""Dataset-scale attribution: ``Explainer.map`` streams a dataset through a compiled method
into a resumable store (``relprop.runner.job``), reading from arrays, ``.npy``/zarr files, IDX
files, image folders or any iterable of batches (``relprop.runner.sources``), writing ``.npy``
folders or zarr groups (``relprop.runner.stores``); ``open_attributions`` reopens a store."""
from .job import JobError, parse_memory
from .results import Attributions, open_attributions
from .sources import SourceError, as_source
from .stores import StoreError

__all__ = ["Attributions", "open_attributions", "as_source", "JobError", "SourceError", "StoreError",
           "parse_memory"]
