"""Flow families as plain torch modules: a registry of builders, no Lightning.

Each family has one builder, ``unflow_zoo.flows.<family>.<family>(event_shape, **hparams) -> Flow``,
registered under the family's name; its keyword arguments are the family's hyper-parameters, in
the vocabulary of the family's LightningModule (:mod:`unflow_zoo.models`), which wraps the same
builder::

    from unflow_zoo import flows

    flows.list_flows()                                   # ['constrained', 'ffjord', ...]
    flow = flows.build("nsf", event_shape=(2,), context_features=3, bins=16)
    flow.log_prob(x, c); flow.sample(100, c)             # a Flow: a torch.nn.Module
    flow = unflow_zoo.load_flow("nsf-moons")             # a pretrained one, without Lightning

A builder checks its hyper-parameters first and raises :class:`~unflow_zoo.errors.ConfigError`
naming the one that is wrong (:mod:`unflow_zoo.flows.validate`).
"""

from unflow_zoo.flows.registry import build, flow_hparams, get_flow_builder, list_flows, register_flow

# Importing a family registers its builder.
from unflow_zoo.flows import constrained, ffjord, glow, linear, maf, naf, nsf, realnvp, snf, unconstrained  # noqa: F401  isort: skip

__all__ = ["build", "flow_hparams", "get_flow_builder", "list_flows", "register_flow"]
