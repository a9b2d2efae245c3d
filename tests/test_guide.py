"""``StructuredGaussian`` as a NumPyro autoguide (API.md, "Guides"): sampling,
parameter names, posterior summaries, the flat posterior against dense
references, ``Predictive``, stock ``SVI``, and the set-up errors."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoContinuous
from scipy import stats

from ngvi.models import eight_schools
from ngvi import NGVI, StructuredGaussian, groups

KEY = jax.random.PRNGKey(0)
LATENT_SHAPES = {"mu": (), "tau": (), "theta_tilde": (8,)}


def vector_model(p):
    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([p]).to_event(1))

    return model


def setup(guide, *args, **kwargs):
    """Run the guide once (as SVI and NGVI do) so that its prototype exists."""
    handlers.seed(guide, 0)(*args, **kwargs)
    return guide


def random_factor(group, p, key, spread=0.4):
    """A generic element of ``group``: the identity retracted along two random
    directions of its sub-algebra."""
    b = group.identity(p, jnp.float64)
    for k in jax.random.split(key, 2):
        leaves, treedef = jax.tree.flatten(b)
        keys = jax.random.split(k, len(leaves))
        noise = [spread * jax.random.normal(kk, x.shape, x.dtype) for x, kk in zip(leaves, keys)]
        b = group.retract(b, group.natural_direction(jax.tree.unflatten(treedef, noise)))
    return b


@pytest.fixture(scope="module")
def es():
    """Eight schools with a dense guide and known (non-trivial) parameters."""
    data = eight_schools.data()
    guide = setup(StructuredGaussian(eight_schools.model), **data)
    loc = jnp.asarray(np.random.default_rng(0).normal(0.0, 0.5, 10))
    b = 2.0 * np.eye(10) + 0.3 * np.random.default_rng(1).normal(size=(10, 10))
    params = {"auto_loc": loc, "auto_factor_matrix": jnp.asarray(b)}
    cov = np.linalg.inv(b @ b.T)
    return guide, data, params, np.asarray(loc), cov


def test_is_autocontinuous():
    """The guide is a NumPyro ``AutoContinuous`` with the Dense group by default."""
    guide = StructuredGaussian(eight_schools.model)
    assert isinstance(guide, AutoContinuous)
    assert isinstance(guide.group, groups.Dense)


def test_guide_call_samples_every_latent_site(es):
    """``guide(*args)`` under ``seed`` samples each latent site, constrained, with its shape."""
    guide, data, _, _, _ = es
    samples = handlers.seed(guide, 3)(**data)
    assert set(samples) == set(LATENT_SHAPES)
    for name, shape in LATENT_SHAPES.items():
        assert jnp.shape(samples[name]) == shape
    assert samples["tau"] > 0
    trace = handlers.trace(handlers.seed(guide, 3)).get_trace(**data)
    sampled = {n for n, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}
    assert set(LATENT_SHAPES) <= sampled


@pytest.mark.parametrize(
    "group, prefix, names",
    [
        (groups.Dense(), "auto", {"auto_loc", "auto_factor_matrix"}),
        (groups.Diagonal(), "auto", {"auto_loc", "auto_factor_diag"}),
        (groups.BlockUpperTriangular(2), "q", {"q_loc", "q_factor_head", "q_factor_cross", "q_factor_diag"}),
    ],
    ids=["dense", "diagonal", "block_upper-prefix"],
)
def test_param_names(group, prefix, names):
    """Params are ``{prefix}_loc`` plus one ``{prefix}_factor_<field>`` per storage array,
    the same names NGVI's ``get_params`` returns; the initial scale is ``init_scale``."""
    data = eight_schools.data()
    guide = StructuredGaussian(eight_schools.model, group=group, prefix=prefix, init_scale=0.2)
    trace = handlers.trace(handlers.seed(guide, 0)).get_trace(**data)
    params = {n for n, s in trace.items() if s["type"] == "param"}
    assert params == names
    ngvi = NGVI(eight_schools.model, guide)
    state = ngvi.init(KEY, **data)
    assert set(ngvi.get_params(state)) == names
    np.testing.assert_allclose(guide.get_posterior(ngvi.get_params(state)).variance, 0.04 * np.ones(10))


def test_sample_posterior(es):
    """``sample_posterior`` returns constrained draws of every latent and deterministic
    site with a leading sample dimension; their unconstrained moments are the guide's."""
    guide, data, params, loc, cov = es
    n = 4000
    samples = guide.sample_posterior(jax.random.PRNGKey(1), params, sample_shape=(n,))
    assert set(samples) == set(LATENT_SHAPES) | {"theta"}
    for name, shape in {**LATENT_SHAPES, "theta": (8,)}.items():
        assert samples[name].shape == (n,) + shape
    assert np.all(samples["tau"] > 0)
    theta = samples["mu"][:, None] + samples["tau"][:, None] * samples["theta_tilde"]
    np.testing.assert_allclose(samples["theta"], theta, rtol=1e-10)
    flat = np.column_stack([samples["mu"], np.log(samples["tau"]), samples["theta_tilde"]])
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(flat.mean(0) - loc) < 5 * se)
    np.testing.assert_allclose(np.cov(flat.T), cov, atol=0.1 * np.max(np.diag(cov)))


def test_median_and_quantiles(es):
    """``median`` and ``quantiles`` are the Gaussian's, mapped through each site's
    constraint (``tau = exp(z_1)``)."""
    guide, _, params, loc, cov = es
    median = guide.median(params)
    np.testing.assert_allclose(median["mu"], loc[0])
    np.testing.assert_allclose(median["tau"], np.exp(loc[1]))
    np.testing.assert_allclose(median["theta_tilde"], loc[2:])
    qs = np.array([0.05, 0.5, 0.9])
    quantiles = guide.quantiles(params, qs)
    z = loc + np.sqrt(np.diag(cov)) * stats.norm.ppf(qs)[:, None]
    np.testing.assert_allclose(quantiles["mu"], z[:, 0], rtol=1e-8)
    np.testing.assert_allclose(quantiles["tau"], np.exp(z[:, 1]), rtol=1e-8)
    np.testing.assert_allclose(quantiles["theta_tilde"], z[:, 2:], rtol=1e-8)


def arrow(p):
    pattern = np.eye(p, dtype=bool)
    pattern[-1] = True
    return pattern


P = 6
POSTERIOR_GROUPS = [
    groups.Dense(),
    groups.Diagonal(),
    groups.BlockUpperTriangular(2),
    groups.Kronecker(groups.Dense(), groups.Diagonal(), shape=(2, 3)),
    groups.SparseCholesky(arrow(P)),
]


@pytest.mark.parametrize("group", POSTERIOR_GROUPS, ids=repr)
def test_get_posterior_matches_dense_gaussian(group):
    """``get_posterior(params)`` is a NumPyro distribution over the flat latent whose
    ``log_prob`` is scipy's MVN logpdf with ``Sigma = (B B^T)^-1``, whose ``variance``
    is ``diag(Sigma)`` and whose samples have mean ``loc`` and covariance ``Sigma``."""
    guide = setup(StructuredGaussian(vector_model(P), group=group))
    key_loc, key_b, key_z, key_s = jax.random.split(KEY, 4)
    loc = jax.random.normal(key_loc, (P,), jnp.float64)
    factor = random_factor(group, P, key_b)
    posterior = guide.get_posterior(guide.pack_params(loc, factor))
    assert isinstance(posterior, dist.Distribution)
    assert posterior.event_shape == (P,) and posterior.batch_shape == ()
    b = np.asarray(group.to_dense(factor))
    cov = np.linalg.inv(b @ b.T)
    z = loc + jax.random.normal(key_z, (2, 3, P), jnp.float64)
    reference = stats.multivariate_normal(np.asarray(loc), cov).logpdf(np.asarray(z))
    np.testing.assert_allclose(posterior.log_prob(z), reference, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(posterior.variance, np.diag(cov), rtol=1e-10)
    n = 20000
    draws = np.asarray(posterior.sample(key_s, (n,)))
    assert draws.shape == (n, P)
    scale = np.sqrt(np.diag(cov))
    assert np.all(np.abs(draws.mean(0) - loc) < 5 * scale / np.sqrt(n))
    np.testing.assert_allclose(np.cov(draws.T) / np.outer(scale, scale), cov / np.outer(scale, scale), atol=0.05)


def test_predictive(es):
    """``numpyro.infer.Predictive(model, guide=..., params=...)`` draws latents from the
    guide and predictions of the observed site."""
    guide, data, params, _, _ = es
    predictive = Predictive(eight_schools.model, guide=guide, params=params, num_samples=300)
    out = predictive(jax.random.PRNGKey(2), sigma=data["sigma"])
    assert set(out) == {"obs", "theta"}
    assert out["obs"].shape == (300, 8) and out["theta"].shape == (300, 8)
    sites = ["mu", "tau", "theta", "obs"]
    out = Predictive(eight_schools.model, guide=guide, params=params, num_samples=300, return_sites=sites)(
        jax.random.PRNGKey(2), sigma=data["sigma"]
    )
    assert out["mu"].shape == (300,) and np.all(out["tau"] > 0)
    np.testing.assert_allclose(np.median(np.log(out["tau"])), es[3][1], atol=0.2)
    residual_sd = np.std(out["obs"] - out["theta"], axis=0)
    np.testing.assert_allclose(residual_sd, data["sigma"], rtol=0.25)


def test_stock_svi_with_adam():
    """The guide trains with stock ``SVI`` + ``optax.adam`` + ``Trace_ELBO`` (Euclidean
    gradients through the structured storage) and its ELBO improves."""
    data = eight_schools.data()
    guide = StructuredGaussian(eight_schools.model, group=groups.BlockUpperTriangular(2))
    svi = SVI(eight_schools.model, guide, optax.adam(0.03), Trace_ELBO())
    result = svi.run(KEY, 400, progress_bar=False, **data)
    losses = np.asarray(result.losses)
    assert np.all(np.isfinite(losses))
    assert losses[-100:].mean() < losses[:20].mean() - 5.0
    assert set(result.params) == {"auto_loc", "auto_factor_head", "auto_factor_cross", "auto_factor_diag"}
    assert np.all(np.isfinite(guide.get_posterior(result.params).variance))


def discrete_model():
    numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.sample("switch", dist.Bernoulli(0.5))


def test_discrete_latent_site_is_rejected():
    """A discrete latent site raises ValueError naming the site, from the guide and from NGVI."""
    with pytest.raises(ValueError, match="'switch'"):
        setup(StructuredGaussian(discrete_model))
    with pytest.raises(ValueError, match="'switch'"):
        NGVI(discrete_model, StructuredGaussian(discrete_model)).init(KEY)


MISFITS = [
    (groups.BlockUpperTriangular(k=11), "BlockUpperTriangular(k=11)"),
    (groups.BlockLowerTriangular(k=12), "BlockLowerTriangular(k=12)"),
    (groups.Hierarchical(6, 5), "Hierarchical(k1=6, k2=5)"),
    (groups.Kronecker(groups.Dense(), groups.Diagonal(), shape=(3, 4)), "Kronecker("),
    (groups.SparseCholesky(arrow(4)), "SparseCholesky("),
]


@pytest.mark.parametrize("group, name", MISFITS, ids=[n for _, n in MISFITS])
def test_group_that_does_not_fit_p(group, name):
    """A group that cannot act on p = 10 raises ValueError naming the group and p when
    the guide is set up (an eager call), so ``NGVI.run`` fails before compiling a step."""
    data = eight_schools.data()
    with pytest.raises(ValueError) as err:
        setup(StructuredGaussian(eight_schools.model, group=group), **data)
    assert name in str(err.value) and "p=10" in str(err.value)
    with pytest.raises(ValueError, match="p=10"):
        NGVI(eight_schools.model, StructuredGaussian(eight_schools.model, group=group)).init(KEY, **data)
    with pytest.raises(ValueError, match="p=10"):
        NGVI(eight_schools.model, StructuredGaussian(eight_schools.model, group=group)).run(KEY, 5, **data)


def test_group_error_is_raised_again_on_retry():
    """Calling a guide again after its set-up failed raises the same ValueError
    (e.g. ``NGVI.init`` and then ``NGVI.run`` on the same guide)."""
    data = eight_schools.data()
    guide = StructuredGaussian(eight_schools.model, group=groups.BlockUpperTriangular(k=11))
    for _ in range(2):
        with pytest.raises(ValueError, match="p=10"):
            setup(guide, **data)


@pytest.mark.parametrize("scale", [0.0, -0.1, float("nan")])
def test_init_scale_must_be_positive(scale):
    """``init_scale <= 0`` (or NaN) raises ValueError at construction."""
    with pytest.raises(ValueError, match="init_scale"):
        StructuredGaussian(eight_schools.model, init_scale=scale)
