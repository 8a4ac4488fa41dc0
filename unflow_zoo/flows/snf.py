"""Self-normalizing flows: unconstrained linear and convolutional layers that learn their inverses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose, Inverse, Transform
from unflow_zoo.errors import ConfigError
from unflow_zoo.flows import validate as v
from unflow_zoo.flows.common import BaseSpec, conditioner_context, finish_flow, shape_of
from unflow_zoo.flows.registry import register_flow
from unflow_zoo.transforms.glow import Squeeze
from unflow_zoo.transforms.selfnorm import LeakyReLU, SelfNormConv, SelfNormLinear, SmoothLeakyReLU

__all__ = ["snf"]

ACTIVATIONS = ("smooth_leaky_relu", "leaky_relu")


@register_flow("snf")
def snf(
    event_shape: Any,
    *,
    n_layers: int = 2,
    n_blocks: int = 1,
    kernel_size: int = 3,
    act: str = "smooth_leaky_relu",
    act_alpha: float = 0.3,
    recon_weight: float = 1.0,
    train_logdet: str = "exact",
    exact_gradient: bool = False,
    base: BaseSpec = "normal",
    context_features: int = 0,
    context_embedding: Sequence[int] | None = None,
) -> Flow:
    r"""Self-normalizing flow: linear (vectors) or convolutional (images) layers, each with a
    learned approximate inverse, alternated with an elementwise bijection (see
    :class:`~unflow_zoo.models.snf.SelfNormalizingFlow`).

    Args:
        event_shape: ``(D,)`` or ``(C, H, W)``.
        n_layers: number of self-normalizing layers.
        n_blocks: images: number of squeeze blocks; ignored for vectors.
        kernel_size: images: odd convolution size.
        act: ``smooth_leaky_relu`` or ``leaky_relu``.
        act_alpha: the activation's negative slope.
        recon_weight: :math:`\lambda`, the reconstruction weight.
        train_logdet: ``"exact"`` or ``"skip"`` (the training log-determinant).
        exact_gradient: train with the exact ``slogdet`` gradient instead.
        base: base distribution, by name or as a module.
        context_features: width of the context of a conditional flow (0: unconditional).
        context_embedding: widths of an MLP embedding the context, the last its output (None: none).

    Returns:
        The flow.

    References:
        Keller, Peters, Jaini, Hoogeboom, Forré & Welling, "Self Normalizing Flows",
        ICML 2021, arXiv:2011.07248.
    """
    name = "snf"
    shape = shape_of(event_shape, owner=name)
    ctx = conditioner_context(context_features, context_embedding, owner=name)
    n_layers = v.positive_int("n_layers", n_layers, owner=name)
    act = v.one_of("act", act, ACTIVATIONS, owner=name)
    if act == "smooth_leaky_relu":  # SmoothLeakyReLU takes alpha in (0, 1], LeakyReLU any alpha > 0
        v.in_range("act_alpha", act_alpha, 0, 1, low_open=True, owner=name, fix="pass e.g. act_alpha=0.3")
    else:
        v.positive_float("act_alpha", act_alpha, owner=name, fix="pass e.g. act_alpha=0.3")
    recon_weight = v.non_negative_float("recon_weight", recon_weight, owner=name, fix="pass e.g. recon_weight=1")
    train_logdet = v.one_of("train_logdet", train_logdet, ("exact", "skip"), owner=name)

    def activation() -> Transform:
        return SmoothLeakyReLU(act_alpha) if act == "smooth_leaky_relu" else LeakyReLU(act_alpha)

    layer_kwargs = {
        "recon_weight": recon_weight,
        "exact": True if exact_gradient else None,
        "train_logdet": train_logdet,
        "context_features": ctx,
    }
    layers: list[Transform] = []
    with v.config_errors(name):
        if len(shape) == 1:
            d = shape[0]
            for k in range(n_layers):
                if k > 0:
                    layers.append(activation())
                layers.append(SelfNormLinear(d, **layer_kwargs))
        elif len(shape) == 3:
            c, h, w = shape
            n_blocks = v.positive_int("n_blocks", n_blocks, owner=name)
            kernel_size = v.positive_int("kernel_size", kernel_size, owner=name, fix="pass an odd size, e.g. 3")
            if n_layers % n_blocks:
                raise ConfigError(
                    f"snf on images needs n_layers divisible by n_blocks >= 1, got n_layers={n_layers}, "
                    f"n_blocks={n_blocks}; pass n_layers as a multiple of n_blocks"
                )
            scale = 2 ** (n_blocks - 1)
            if h % scale or w % scale:
                raise ConfigError(
                    f"snf with n_blocks={n_blocks} squeezes {n_blocks - 1} times and needs H and W divisible "
                    f"by {scale}, got event_shape {shape}; use fewer blocks or pad the images"
                )
            per_block = n_layers // n_blocks
            for b in range(n_blocks):
                if b > 0:
                    layers.append(Squeeze())
                    c *= 4
                for k in range(per_block):
                    if b > 0 or k > 0:
                        layers.append(activation())
                    layers.append(SelfNormConv(c, kernel_size, **layer_kwargs))
            # back to the data's layout, so that any base over event_shape fits
            layers.extend(Inverse(Squeeze()) for _ in range(n_blocks - 1))
        else:
            raise ConfigError(
                f"snf works on vectors (D,) or images (C, H, W); got event_shape {shape}; "
                "flatten the data to (D,) or give images a channel axis"
            )
        return finish_flow(Compose(layers), base, shape, context_features, context_embedding)
