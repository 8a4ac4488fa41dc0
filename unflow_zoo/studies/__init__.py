"""The package's own experiments: the seed paper's overparameterization study."""

from unflow_zoo.studies.ensemble import ConstrainedEnsemble, UnconstrainedEnsemble

__all__ = ["ConstrainedEnsemble", "UnconstrainedEnsemble"]
