"""Glow on images: unflow-zoo's multi-scale Glow vs normflows' Glow at the same
levels L, steps K and hidden channels, on scikit-learn's 8x8 digits (1, 8, 8),
dequantised and scaled to [-0.5, 0.5). No true density is known, so the
"gap" column holds the test NLL itself (nats per image, served units)."""

from __future__ import annotations

from benchmarks.families import register
from benchmarks.harness import Adapter

SHAPE, LEVELS, STEPS, HIDDEN = (1, 8, 8), 2, 4, 64


def digits_data(dim: int):
    import torch
    from sklearn.datasets import load_digits

    pixels = torch.as_tensor(load_digits().images, dtype=torch.float32).reshape(-1, *SHAPE)
    g = torch.Generator().manual_seed(0)

    def draw(n: int):
        idx = torch.randint(0, len(pixels), (n,), generator=g)
        return (pixels[idx] + torch.rand(n, *SHAPE, generator=g)) / 17 - 0.5

    return draw, None


def ours_glow(dim: int) -> Adapter:
    from unflow_zoo.models import create_model

    m = create_model("glow", event_shape=SHAPE, levels=LEVELS, steps_per_level=STEPS, hidden_channels=HIDDEN)
    return Adapter(m, m.log_prob, m.sample)


def normflows_glow(dim: int) -> Adapter:
    import normflows as nf

    c = SHAPE[0]
    q0, merges, flows = [], [], []
    for i in range(LEVELS):  # the layout of normflows' own Glow example
        flows.append(
            [
                nf.flows.GlowBlock(c * 2 ** (LEVELS + 1 - i), HIDDEN, split_mode="channel", scale=True)
                for _ in range(STEPS)
            ]
            + [nf.flows.Squeeze()]
        )
        if i > 0:
            merges.append(nf.flows.Merge())
            shape = (c * 2 ** (LEVELS - i), SHAPE[1] // 2 ** (LEVELS - i), SHAPE[2] // 2 ** (LEVELS - i))
        else:
            shape = (c * 2 ** (LEVELS + 1), SHAPE[1] // 2**LEVELS, SHAPE[2] // 2**LEVELS)
        q0.append(nf.distributions.DiagGaussian(shape))
    model = nf.MultiscaleFlow(q0, flows, merges)
    return Adapter(model, lambda x: model.log_prob(x, None), lambda n: model.sample(n)[0])


for label, builder in (("unflow-zoo glow", ours_glow), ("normflows Glow", normflows_glow)):
    builder.data = digits_data  # type: ignore[attr-defined]
    register("glow", label, builder)
