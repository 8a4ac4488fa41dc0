"""Pretrained flows: save, publish, and load by name, verified by sha256 and never unpickled.

    flow = unflow_zoo.pretrained.load_pretrained("unconstrained-mog1d")
    flow.sample(1000); flow.log_prob(x)      # raw data units: the standardisation is inside
    flow = unflow_zoo.pretrained.load_pretrained("user/repo", revision="main")   # a Hugging Face Hub repo
    flow = unflow_zoo.pretrained.load_flow("unconstrained-mog1d")   # the plain torch Flow, no LightningModule
    push_to_hub(flow, "me/my-flow")          # or flow.push_to_hub("me/my-flow"): one flow per repo

See :mod:`unflow_zoo.pretrained.format` for the folder layout,
:mod:`unflow_zoo.pretrained.resolve` for how names resolve (path, packaged
file, cache, URL, Hub repo id, ``hf://``), :mod:`unflow_zoo.pretrained.card` for the
model card and :mod:`unflow_zoo.pretrained.hub` for publishing.
"""

from __future__ import annotations

from unflow_zoo.models.pretrained_io import register_pretrained_io
from unflow_zoo.pretrained.card import render_card, write_card
from unflow_zoo.pretrained.convert import export_checkpoint, model_from_checkpoint, read_checkpoint
from unflow_zoo.pretrained.evaluation import evaluate_split, split_data
from unflow_zoo.pretrained.format import FORMAT_VERSION, FormatError, IntegrityError, sha256_of
from unflow_zoo.pretrained.hub import push_to_hub
from unflow_zoo.pretrained.preprocessing import RawDataFlow, served_flow
from unflow_zoo.pretrained.registry import list_pretrained, markdown_table, pretrained_info
from unflow_zoo.pretrained.resolve import cache_root, load_flow, load_pretrained, safe_extract
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
    "load_flow",
    "load_pretrained",
    "markdown_table",
    "model_from_checkpoint",
    "pretrained_info",
    "push_to_hub",
    "read_checkpoint",
    "rebuild_datamodule",
    "render_card",
    "safe_extract",
    "save_pretrained",
    "served_flow",
    "sha256_of",
    "split_data",
    "write_card",
]


class _PretrainedIO:
    """This package's implementation of the families' pretrained methods (models/pretrained_io.py)."""

    save_pretrained = staticmethod(save_pretrained)
    push_to_hub = staticmethod(push_to_hub)
    load_pretrained = staticmethod(load_pretrained)


# models/ sits below this package and may not import it: it calls these through the registration
register_pretrained_io(_PretrainedIO())
