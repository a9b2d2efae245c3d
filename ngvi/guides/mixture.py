"""``StructuredGaussianMixture``: a mixture of structured Gaussians over the flat
unconstrained latent vector, for multimodal posteriors (MATH.md sec. 6)."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer.elbo import ELBO
from numpyro.infer.initialization import init_to_uniform

from ngvi import vi
from ngvi.guides.distribution import StructuredNormal
from ngvi.guides.structured_gaussian import StructuredGaussian
from ngvi.target import make_target

__all__ = ["StructuredGaussianMixture", "MixtureELBO"]


def _check_weights(weights, num_components):
    weights = jnp.asarray(weights)
    if weights.shape != (num_components,):
        raise ValueError(f"weights must have shape ({num_components},), one per component, got {weights.shape}.")
    if bool(jnp.any(weights <= 0)) or abs(float(jnp.sum(weights)) - 1.0) > 1e-6:
        raise ValueError(f"weights must be a simplex (positive, summing to 1), got {weights.tolist()}.")
    return weights


class MixtureELBO(ELBO):
    """The stratified ELBO of a :class:`StructuredGaussianMixture` for stock SVI:

        ELBO = sum_c pi_c E_{q_c}[log p(x, z) - log q(z)],   z = mu_c + B_c^-T eps,

    reparameterised within each component (``num_particles`` draws from every
    component), so its gradient is unbiased for the means, the factors and the
    weights. ``Trace_ELBO`` would differentiate through the component draw as
    if it were fixed and miss the score term of the discrete choice.
    """

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs):
        return self.loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)["loss"]

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        if not isinstance(guide, StructuredGaussianMixture):
            raise ValueError("MixtureELBO is the loss of a StructuredGaussianMixture guide.")
        sample_key, model_key = jax.random.split(rng_key)
        mixture = guide.get_posterior(param_map)
        z = mixture.component_distribution.sample(sample_key, (self.num_particles,))  # (n, K, p)
        potential = jax.vmap(jax.vmap(make_target(model, guide, model_key, args, kwargs).potential))
        log_ratio = -potential(z) - mixture.log_prob(z)  # (n, K)
        elbo = jnp.sum(mixture.mixing_distribution.probs * jnp.mean(log_ratio, axis=0))
        return {"loss": -elbo, "mutable_state": None}


@jax.custom_jvp
def _weights_without_pathwise_gradient(log_weights):
    """The identity, whose derivative refuses to be taken: a draw of the mixture
    depends on the weights through the discrete choice of a component, which
    has no pathwise derivative, so an ELBO that differentiates through the
    guide's draw (``Trace_ELBO`` and the like) would silently miss the weights'
    gradient. :class:`MixtureELBO` reads the weights through ``get_posterior``
    instead and is not affected."""
    return log_weights


@_weights_without_pathwise_gradient.defjvp
def _refuse(primals, tangents):
    raise ValueError(
        "StructuredGaussianMixture(learn_weights=True): a draw of the guide has no pathwise gradient "
        "in the weights, so this ELBO gives biased gradients for them. Use SVI(model, guide, optim, "
        "ngvi.MixtureELBO()), or fixed weights (learn_weights=False), with which every ELBO is unbiased."
    )


class StructuredGaussianMixture(StructuredGaussian):
    """``q(z) = sum_c pi_c N(mu_c, (B_c B_c^T)^-1)``, each ``B_c`` in ``group``.

    Parameters: ``{prefix}_locs`` (``K x p``), ``{prefix}_factor_*`` (the group's
    storage with a leading ``K``) and, with ``learn_weights=True``,
    ``{prefix}_weight_logits`` (natural coordinates ``v_c = log(pi_c / pi_K)``,
    ``v_K = 0``). A component only learns of modes it puts mass near, so where
    the components start decides which modes the mixture finds:

    * ``init_locs="modes"`` (the default): at the distinct modes that
      :func:`ngvi.vi.multistart` finds from ``num_starts`` starts (the initial
      point and draws uniform in ``[-2, 2]`` in the unconstrained space, as
      ``init_to_uniform`` makes them), best first, cycling through them when
      there are fewer modes than components; with ``learn_weights=True`` and no
      ``weights`` the weights start at the fits' (their ELBOs'). Cost:
      ``num_starts`` diagonal fits of 100 steps, once, when the guide is first
      run (``guide.fits.num_grads`` gradient evaluations);
    * ``init_locs="spread"``: the initial point plus ``init_spread`` times
      independent standard normal draws;
    * an array ``(K, p)``: those means (e.g. :func:`ngvi.find_modes`'s).

    The random draws come from the guide's random key when it is first run.

    With :class:`ngvi.NGVI` each component takes the natural-gradient step of
    MATH.md sec. 6; with stock ``SVI`` use :class:`MixtureELBO`.

    :param num_components: ``K >= 1``.
    :param weights: fixed mixture weights (a simplex); equal by default.
    :param learn_weights: learn the weights (starting from ``weights``).
    :param num_starts: starts of ``init_locs="modes"`` (default ``4 K``).
    """

    def __init__(
        self,
        model,
        *,
        num_components,
        group=None,
        weights=None,
        learn_weights=False,
        prefix="auto",
        init_loc_fn=init_to_uniform,
        init_scale=0.1,
        init_locs="modes",
        init_spread=1.0,
        num_starts=None,
    ):
        if int(num_components) != num_components or num_components < 1:
            raise ValueError(f"num_components must be a positive integer, got {num_components}.")
        if isinstance(init_locs, str) and init_locs not in ("modes", "spread"):
            raise ValueError(f'init_locs must be "modes", "spread" or an array (K, p), got {init_locs!r}.')
        self.num_components = int(num_components)
        self.num_starts = 4 * self.num_components if num_starts is None else num_starts
        if int(self.num_starts) != self.num_starts or self.num_starts < 1:
            raise ValueError(f"num_starts must be a positive integer, got {num_starts}.")
        equal = jnp.full((self.num_components,), 1.0 / self.num_components)
        self._weights_given = weights is not None
        self._init_weights = equal if weights is None else _check_weights(weights, self.num_components)
        self.learn_weights = learn_weights
        self._init_locs_given, self._init_spread = init_locs, init_spread
        self.fits = None
        super().__init__(model, group=group, prefix=prefix, init_loc_fn=init_loc_fn, init_scale=init_scale)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        shape = (self.num_components, self.latent_dim)
        if isinstance(self._init_locs_given, str) and self._init_locs_given == "modes":
            self._start_at_modes(args, kwargs)
        elif isinstance(self._init_locs_given, str):
            noise = jax.random.normal(numpyro.prng_key(), shape, self._init_latent.dtype)
            self._init_component_locs = self._init_latent + self._init_spread * noise
        else:
            locs = jnp.asarray(self._init_locs_given, self._init_latent.dtype)
            if locs.shape != shape:
                raise ValueError(f"init_locs must have shape {shape} (components x latent dimension), got {locs.shape}.")
            self._init_component_locs = locs
        batch = lambda leaf: jnp.broadcast_to(leaf, (self.num_components,) + leaf.shape)
        self._factor_init = {name: batch(leaf) for name, leaf in self._factor_init.items()}

    def _start_at_modes(self, args, kwargs):
        """Components at :func:`ngvi.vi.multistart`'s distinct fits, cycling."""
        fit_key, start_key, target_key = jax.random.split(numpyro.prng_key(), 3)
        dtype = self._init_latent.dtype
        draws = jax.random.uniform(start_key, (self.num_starts - 1, self.latent_dim), dtype, -2.0, 2.0)
        starts = jnp.concatenate([self._init_latent[None], draws])
        with numpyro.handlers.block():
            potential = make_target(self.model, self, target_key, args, kwargs).potential
            self.fits = vi.multistart(potential, starts, fit_key)
        chosen = jnp.arange(self.num_components) % len(self.fits.locs)
        self._init_component_locs = self.fits.locs[chosen]
        if self.learn_weights and not self._weights_given:
            shares = jnp.bincount(chosen, length=len(self.fits.locs))[chosen]
            weights = self.fits.weights[chosen] / shares
            self._init_weights = weights / jnp.sum(weights)

    def _log_weights_init(self):
        logits = jnp.log(self._init_weights).astype(self._init_latent.dtype)
        return logits - logits[-1]

    def _get_posterior(self):
        locs = numpyro.param(f"{self.prefix}_locs", self._init_component_locs)
        leaves = [numpyro.param(name, init) for name, init in self._factor_init.items()]
        log_weights = self._log_weights_init()
        if self.learn_weights:
            log_weights = _weights_without_pathwise_gradient(numpyro.param(f"{self.prefix}_weight_logits", log_weights))
        return self._mixture(locs, jax.tree.unflatten(self._factor_treedef, leaves), log_weights)

    def _mixture(self, locs, factors, log_weights):
        components = StructuredNormal(locs, factors, self.group)
        return dist.MixtureSameFamily(dist.Categorical(logits=log_weights), components)

    def algorithm(self, potential_fn, **settings):
        """:func:`ngvi.vi.gaussian_mixture` on ``potential_fn`` with this guide's
        group, number of components and ``learn_weights``."""
        return vi.gaussian_mixture(
            potential_fn, self.num_components, group=self.group, learn_weights=self.learn_weights, **settings
        )

    def init_state(self):
        """The algorithm's initial state: the component means, ``init_scale`` and the weights."""
        return vi.gaussian_mixture.init(self._init_component_locs, self.group, self._init_scale, self._init_weights)

    def params_from_state(self, state):
        return self.pack_params(state.loc, state.factor, state.log_weights)

    def unpack_params(self, params):
        """``(locs, factors, log_weights)`` from a param dict."""
        leaves = [params[name] for name in self._factor_init]
        log_weights = params.get(f"{self.prefix}_weight_logits", self._log_weights_init())
        return params[f"{self.prefix}_locs"], jax.tree.unflatten(self._factor_treedef, leaves), log_weights

    def pack_params(self, locs, factors, log_weights):
        """The param dict of ``(locs, factors, log_weights)``."""
        params = {f"{self.prefix}_locs": locs, **dict(zip(self._factor_init, jax.tree.leaves(factors)))}
        if self.learn_weights:
            params[f"{self.prefix}_weight_logits"] = log_weights
        return params

    def get_posterior(self, params):
        """The mixture over the flat unconstrained latent vector
        (``numpyro.distributions.MixtureSameFamily``)."""
        return self._mixture(*self.unpack_params(params))

    def median(self, params):
        """The median of every coordinate's marginal, constrained (as for the
        single Gaussian, a per-coordinate summary in the unconstrained space)."""
        return self.quantiles(params, 0.5)

    def quantiles(self, params, quantiles):
        """Quantiles of every coordinate's marginal ``sum_c pi_c N(mu_cj, s_cj^2)``
        (bisection on its CDF, to float resolution), constrained."""
        posterior = self.get_posterior(params)
        locs, scales = posterior.component_distribution.loc, jnp.sqrt(posterior.component_distribution.variance)
        latent = _mixture_marginal_quantiles(posterior.mixing_distribution.probs, locs, scales, jnp.asarray(quantiles))
        return self._unpack_and_constrain(latent, params)


def _mixture_marginal_quantiles(weights, locs, scales, quantiles, num_iterations=100):
    """``x`` with ``sum_c w_c Phi((x - m_c) / s_c) = q`` per coordinate, for each
    ``q`` in ``quantiles`` (shape ``quantiles.shape + (p,)``)."""
    q = quantiles[..., None]
    cdf = lambda x: jnp.sum(weights[:, None] * jax.scipy.stats.norm.cdf((x[..., None, :] - locs) / scales), -2)
    lower = jnp.broadcast_to(jnp.min(locs - 40.0 * scales, 0), q.shape[:-1] + locs.shape[-1:])
    upper = jnp.broadcast_to(jnp.max(locs + 40.0 * scales, 0), lower.shape)

    def bisect(_, bounds):
        lower, upper = bounds
        middle = 0.5 * (lower + upper)
        below = cdf(middle) < q
        return jnp.where(below, middle, lower), jnp.where(below, upper, middle)

    lower, upper = jax.lax.fori_loop(0, num_iterations, bisect, (lower, upper))
    return 0.5 * (lower + upper)
