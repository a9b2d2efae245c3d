"""StructuredGaussianMixture: the one-component case, learned weights, stock SVI
and bad input (MATH.md sec. 6)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI, Trace_ELBO

from ngvi.models import logistic_regression
from ngvi import NGVI, MixtureELBO, StructuredGaussian, StructuredGaussianMixture, groups

MODES = jnp.array([[-4.0, -4.0], [4.0, 4.0]])


def bimodal():
    """A normalised 2-d mixture of two well-separated Gaussians with weights 0.3 / 0.7."""
    target = dist.MixtureSameFamily(
        dist.Categorical(probs=jnp.array([0.3, 0.7])), dist.MultivariateNormal(MODES, 0.5 * jnp.eye(2))
    )
    numpyro.sample("z", target)


def test_one_component_takes_the_single_gaussian_step():
    """K = 1 reproduces StructuredGaussian's steps (same seed) to rounding."""
    data = logistic_regression.data()
    group = groups.BlockUpperTriangular(2)
    single = NGVI(logistic_regression.model, StructuredGaussian(logistic_regression.model, group=group))
    mixture_guide = StructuredGaussianMixture(logistic_regression.model, num_components=1, group=group, init_locs="spread", init_spread=0.0)
    mixture = NGVI(logistic_regression.model, mixture_guide)
    key = jax.random.PRNGKey(0)
    s1, s2 = single.init(key, **data), mixture.init(key, **data)
    four_steps = lambda ngvi: jax.jit(lambda s: jax.lax.fori_loop(0, 4, lambda _, s: ngvi.update(s, **data)[0], s))
    s1, s2 = four_steps(single)(s1), four_steps(mixture)(s2)
    np.testing.assert_allclose(s2.vi_state.loc[0], s1.vi_state.loc, atol=1e-10)
    for a, b in zip(jax.tree.leaves(s2.vi_state.factor), jax.tree.leaves(s1.vi_state.factor)):
        np.testing.assert_allclose(a[0], b, atol=1e-10)


@pytest.mark.parametrize("learn_weights", [True, False])
def test_two_modes_are_covered(learn_weights):
    """By default (components at the modes found) both modes get a component;
    learned weights match 0.3 / 0.7, and the negative ELBO matches -log Z = 0
    when the mixture is exact."""
    guide = StructuredGaussianMixture(bimodal, num_components=2, group=groups.Dense(), learn_weights=learn_weights)
    result = NGVI(bimodal, guide).run(jax.random.PRNGKey(1), 300, progress_bar=False)
    locs, _, log_weights = guide.unpack_params(result.params)
    order = jnp.argsort(locs[:, 0])
    np.testing.assert_allclose(locs[order], MODES, atol=0.05)
    if learn_weights:
        np.testing.assert_allclose(jax.nn.softmax(log_weights)[order], [0.3, 0.7], atol=0.05)
        assert abs(float(jnp.mean(result.losses[-50:]))) < 0.05


FOUR_MODES = jnp.array(
    [[4.0, 4, 4, 4, 4, 4], [-4.0, -4, 4, 4, 4, 4], [4.0, -4, -4, 4, -4, 4], [-4.0, 4, -4, -4, 4, -4]]
)
FOUR_WEIGHTS = jnp.array([0.4, 0.3, 0.2, 0.1])


def four_modes():
    """Four unit-covariance Gaussians 8 to 11 apart in 6 dimensions, weights 0.4 / 0.3 / 0.2 / 0.1."""
    components = dist.MultivariateNormal(FOUR_MODES, jnp.eye(6))
    numpyro.sample("z", dist.MixtureSameFamily(dist.Categorical(probs=FOUR_WEIGHTS), components))


def test_separated_modes_are_found_by_default():
    """Six components, learned weights, every other setting a default,
    ``run(key, None)``: every mode gets a component and its mass (the weights
    of the components nearest it) is within 0.05 of the truth. With the
    components spread from the initial point instead, some mode still has
    none after 2,000 steps (the default run converges in 200: components
    that sit on the other modes stay there; run to convergence, that fit uses
    its whole budget of 120,000 steps and ends the same)."""
    def masses(init_locs, num_steps=None):
        guide = StructuredGaussianMixture(four_modes, num_components=6, learn_weights=True, init_locs=init_locs)
        result = NGVI(four_modes, guide).run(jax.random.PRNGKey(3), num_steps, progress_bar=False)
        locs, _, log_weights = guide.unpack_params(result.params)
        nearest = jnp.argmin(jnp.sum((locs[:, None] - FOUR_MODES[None]) ** 2, -1), axis=1)
        return result, np.asarray(jax.ops.segment_sum(jax.nn.softmax(log_weights), nearest, num_segments=4))

    result, found = masses("modes")
    assert result.converged
    np.testing.assert_allclose(found, FOUR_WEIGHTS, atol=0.05)
    assert np.min(masses("spread", 2000)[1]) < 0.05


def test_stock_svi_needs_the_mixture_elbo():
    """Trace_ELBO is refused with a message naming MixtureELBO; SVI with
    MixtureELBO learns the weights."""
    guide = StructuredGaussianMixture(bimodal, num_components=2, group=groups.Diagonal(), learn_weights=True, init_locs="spread", init_spread=3.0)
    with pytest.raises(ValueError, match="MixtureELBO"):
        SVI(bimodal, guide, optax.adam(0.02), Trace_ELBO()).run(jax.random.PRNGKey(2), 5, progress_bar=False)
    result = SVI(bimodal, guide, optax.adam(0.05), MixtureELBO(num_particles=8)).run(
        jax.random.PRNGKey(2), 2000, progress_bar=False
    )
    locs, _, log_weights = guide.unpack_params(result.params)
    weights = jax.nn.softmax(log_weights)[jnp.argsort(locs[:, 0])]
    np.testing.assert_allclose(weights, [0.3, 0.7], atol=0.1)


def test_posterior_is_a_mixture_of_the_components():
    """``get_posterior`` is a MixtureSameFamily whose log density is the
    weighted sum of the component Gaussians."""
    guide = StructuredGaussianMixture(bimodal, num_components=3, group=groups.LowerTriangular(), weights=[0.2, 0.3, 0.5])
    numpyro.handlers.seed(guide, 0)()
    params = guide.params_from_state(guide.init_state())
    posterior = guide.get_posterior(params)
    z = jax.random.normal(jax.random.PRNGKey(3), (5, 2))
    locs, factors, log_weights = guide.unpack_params(params)
    precisions = [f @ f.T for f in factors.matrix]
    components = jnp.stack([dist.MultivariateNormal(m, precision_matrix=s).log_prob(z) for m, s in zip(locs, precisions)])
    expected = jax.scipy.special.logsumexp(components + jnp.log(jnp.array([0.2, 0.3, 0.5]))[:, None], axis=0)
    np.testing.assert_allclose(posterior.log_prob(z), expected, rtol=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_components": 0}, "num_components"),
        ({"num_components": 2, "weights": [0.5, 0.6]}, "simplex"),
        ({"num_components": 2, "weights": [1.0]}, "weights"),
        ({"num_components": 2, "init_locs": jnp.zeros((3, 2))}, "init_locs"),
        ({"num_components": 2, "group": groups.BlockUpperTriangular(3)}, "p=2"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        numpyro.handlers.seed(StructuredGaussianMixture(bimodal, **kwargs), 0)()



def test_gaussian_target_is_matched():
    """On a normalised Gaussian target the mixture matches it: the negative
    ELBO (= KL(q || p) here) goes to -log Z = 0 and the mixture's mean and
    covariance are the target's. (The components themselves need not coincide:
    mixtures of nearby Gaussians that nearly equal p form a flat valley.)"""
    cov = jnp.array([[1.0, 0.6, 0.0], [0.6, 2.0, 0.3], [0.0, 0.3, 0.5]])
    mean = jnp.array([1.0, -2.0, 0.5])

    def gaussian():
        numpyro.sample("z", dist.MultivariateNormal(mean, cov))

    guide = StructuredGaussianMixture(gaussian, num_components=3, group=groups.Dense(), init_locs="spread", init_spread=2.0)
    result = NGVI(gaussian, guide).run(jax.random.PRNGKey(4), 200, progress_bar=False)
    locs, factors, log_weights = guide.unpack_params(result.params)
    weights = jax.nn.softmax(log_weights)
    mixture_mean = weights @ locs
    second = sum(w * (jnp.linalg.inv(f @ f.T) + jnp.outer(m, m)) for w, f, m in zip(weights, factors.matrix, locs))
    np.testing.assert_allclose(mixture_mean, mean, atol=0.05)
    np.testing.assert_allclose(second - jnp.outer(mixture_mean, mixture_mean), cov, atol=0.05)
    assert abs(float(jnp.mean(result.losses[-50:]))) < 0.01
