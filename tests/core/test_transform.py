import pytest
import torch

from unflow_zoo.core import Compose, Inverse, Permutation, Transform
from unflow_zoo.testing import check_transform, randomize_parameters_
from unflow_zoo.transforms import Affine, AffineCoupling, MaskedAffineAutoregressive, alternating_mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permutations_pass_the_kit(seed):
    torch.manual_seed(seed)
    for t in (Permutation.random(5, seed=seed), Permutation.reverse(5)):
        check_transform(t, torch.randn(16, 5))
    check_transform(Permutation.random(2, seed=seed), torch.randn(16, 2))


def test_permutation_on_image_channels():
    x = torch.randn(3, 4, 2, 2)
    p = Permutation.reverse(4, dim=1)
    y, ladj = p(x)
    assert torch.equal(y, x.flip(1)) and torch.equal(ladj, torch.zeros(3))
    check_transform(p, x)


def test_permutation_rejects_bad_input():
    with pytest.raises(ValueError, match="not a permutation"):
        Permutation([0, 0, 1])
    with pytest.raises(ValueError, match="3 features"):
        Permutation.reverse(3)(torch.randn(2, 4))


def test_random_permutation_is_seeded():
    assert torch.equal(Permutation.random(10, seed=3).perm, Permutation.random(10, seed=3).perm)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compose_and_inverse(seed):
    torch.manual_seed(seed)
    t = Compose(
        AffineCoupling(alternating_mask(3, 0), [16]),
        Permutation.random(3, seed=seed),
        MaskedAffineAutoregressive(3, [16]),
    )
    randomize_parameters_(t, 0.2, seed)
    x = torch.randn(12, 3)
    check_transform(t, x)
    check_transform(Inverse(t), t(x)[0].detach())
    y, ladj = t(x)
    x2, ladj2 = Inverse(t)(y)
    assert torch.allclose(x2, x, atol=1e-5) and torch.allclose(ladj2, -ladj, atol=1e-5)
    # Compose accepts a list too, and indexing returns the parts
    assert len(Compose([t[0], t[1]])) == 2


def test_compose_rejects_non_transforms():
    with pytest.raises(TypeError, match="item 1"):
        Compose(Permutation.reverse(2), torch.nn.Linear(2, 2))


def test_affine_logdet_and_kit():
    t = Affine(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 3.0]))
    x = torch.randn(8, 2)
    y, ladj = t(x)
    assert torch.allclose(y, (x - torch.tensor([1.0, -2.0])) / torch.tensor([2.0, 3.0]))
    assert torch.allclose(ladj, torch.full((8,), -torch.log(torch.tensor(6.0)).item()))
    check_transform(Affine(torch.tensor([0.3]), torch.tensor([3.0])), torch.randn(8, 1))


def test_base_transform_says_what_is_missing():
    with pytest.raises(NotImplementedError, match="Transform does not implement forward"):
        Transform()(torch.zeros(1, 1))


class _BrokenLogdet(Transform):
    def forward(self, x, context=None):
        return 2 * x, x.new_zeros(x.shape[0])  # wrong: log|det| is D log 2

    def inverse(self, y, context=None):
        return y / 2, y.new_zeros(y.shape[0])


class _BrokenInverse(Transform):
    def forward(self, x, context=None):
        return 2 * x, x.new_full((x.shape[0],), x.shape[1] * 0.6931471805599453)

    def inverse(self, y, context=None):
        return y / 2 + 1e-3, y.new_full((y.shape[0],), -y.shape[1] * 0.6931471805599453)


def test_kit_catches_wrong_logdet_and_wrong_inverse():
    with pytest.raises(AssertionError, match="log-det at point 0"):
        check_transform(_BrokenLogdet(), torch.randn(4, 2))
    with pytest.raises(AssertionError, match="inverse"):
        check_transform(_BrokenInverse(), torch.randn(4, 2))
    # the right scale passes, including the grid normalisation
    report = check_transform(_Scale2(), torch.randn(4, 2))
    assert abs(report.normalization - 1) < 1e-3


class _Scale2(Transform):
    def forward(self, x, context=None):
        return 2 * x, x.new_full((x.shape[0],), x.shape[1] * 0.6931471805599453)

    def inverse(self, y, context=None):
        return y / 2, y.new_full((y.shape[0],), -y.shape[1] * 0.6931471805599453)
