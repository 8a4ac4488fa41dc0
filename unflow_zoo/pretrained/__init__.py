"""Pretrained flows: save, publish, and load by name, verified by sha256 and never unpickled.

    flow = unflow_zoo.pretrained.load_pretrained("unconstrained-mog1d")
    flow.sample(1000); flow.log_prob(x)      # raw data units: the standardisation is inside

See :mod:`unflow_zoo.pretrained.format` for the folder layout and
:mod:`unflow_zoo.pretrained.resolve` for how names resolve (path, packaged
file, cache, URL, ``hf://``).
"""

from __future__ import annotations

from unflow_zoo.pretrained.convert import export_checkpoint, model_from_checkpoint, read_checkpoint
from unflow_zoo.pretrained.evaluation import evaluate_split, split_data
from unflow_zoo.pretrained.format import FORMAT_VERSION, FormatError, IntegrityError, sha256_of
from unflow_zoo.pretrained.preprocessing import RawDataFlow, served_flow
from unflow_zoo.pretrained.registry import list_pretrained, markdown_table, pretrained_info
from unflow_zoo.pretrained.resolve import cache_root, load_pretrained, safe_extract
from unflow_zoo.pretrained.serialization import rebuild_datamodule, save_pretrained

__all__ = [
    "FORMAT_VERSION",
    "FormatError",
    "IntegrityError",
    "RawDataFlow",
    "cache_root",
    "evaluate_split",
    "export_checkpoint",
    "list_pretrained",
    "load_pretrained",
    "markdown_table",
    "model_from_checkpoint",
    "pretrained_info",
    "read_checkpoint",
    "rebuild_datamodule",
    "safe_extract",
    "save_pretrained",
    "served_flow",
    "sha256_of",
    "split_data",
]
