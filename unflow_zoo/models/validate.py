"""The hyper-parameter checks, which live with the builders in :mod:`unflow_zoo.flows.validate`.

Re-exported here for code written against ``unflow_zoo.models.validate``; import them from
:mod:`unflow_zoo.flows.validate`.
"""

from __future__ import annotations

from unflow_zoo.flows.validate import (
    affine_stack,
    config_errors,
    event_shape,
    in_range,
    integer,
    mlp_activation,
    non_negative_float,
    non_negative_int,
    one_of,
    optional_positive_float,
    positive_float,
    positive_int,
    positive_ints,
)

__all__ = [
    "affine_stack",
    "config_errors",
    "event_shape",
    "in_range",
    "integer",
    "mlp_activation",
    "non_negative_float",
    "non_negative_int",
    "one_of",
    "optional_positive_float",
    "positive_float",
    "positive_int",
    "positive_ints",
]
