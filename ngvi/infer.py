"""``NGVI``: natural-gradient variational inference with a structured Gaussian
guide, a thin façade over the pure step of :mod:`ngvi.ngd` that mirrors
``numpyro.infer.SVI`` (``init``, ``update``, ``run``, ``get_params``,
``evaluate``)."""

import inspect
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from numpyro import handlers
from tqdm import tqdm

from ngvi.estimators import ESTIMATORS, Target
from ngvi.guides.mixture import StructuredGaussianMixture
from ngvi.laplace import check_laplace_start, laplace_start
from ngvi.ngd import is_finite, natural_gradient_step
from ngvi.target import check_initial_point, make_target

__all__ = ["NGVI", "NGVIState", "NGVIRunResult"]


class NGVIState(NamedTuple):
    """``loc`` and ``factor`` are ``mu`` and ``B`` (with a leading component axis
    for a mixture, whose ``log_weights`` are the natural weight coordinates);
    ``num_rejected`` counts steps that were not finite and were dropped (the
    state stayed where it was)."""

    loc: jax.Array
    factor: Any
    step: jax.Array
    num_rejected: jax.Array
    rng_key: jax.Array
    log_weights: Any = None


class NGVIRunResult(NamedTuple):
    params: dict
    state: NGVIState
    losses: jax.Array


class NGVI:
    """Natural-gradient VI (Lin, Nielsen, Khan and Schmidt, ICML 2021).

    :param model: the NumPyro model.
    :param guide: a :class:`ngvi.StructuredGaussian` or
        :class:`ngvi.StructuredGaussianMixture` of the same model. Each mixture
        component takes the single-Gaussian step on ``f = l + gamma log q``
        with expectations under its own component (stratified sampling,
        ``num_samples`` draws per component; MATH.md sec. 6).
    :param step_size: ``beta``, a float or a schedule ``step -> float`` (e.g. an optax schedule).
    :param num_samples: Monte-Carlo samples per step (drawn in antithetic pairs).
    :param estimator: ``"hessian"`` (Hessian-vector products), ``"stein"``
        (gradients only), ``"gauss_newton"`` (per-example gradients of the observed
        sites plus the prior's exact curvature) or ``"zeroth_order"`` (log-density
        values only); extra keyword arguments go to the estimator: with
        ``"hessian"``, ``probes=`` for Hutchinson diagonals and
        ``curvature_samples=`` for Hessian products at only the first that many
        draws (the gradient still averages all ``num_samples``).
    :param gamma: the weight of ``E_q[log q]`` (1 for VI).
    :param trust_radius: bound on the spectral norm of the local factor step
        (:func:`ngvi.ngd.natural_gradient_step`).
    :param loc_trust_radius: the same bound for the mean step, in standard
        deviations of the updated posterior.
    :param warm_start: ``None`` (start at the guide's ``init_loc_fn`` and
        ``init_scale``) or ``"laplace"``: start at the MAP with the group's
        closest match to the Laplace precision there (:mod:`ngvi.laplace`;
        single Gaussian guides; with data subsampling, the MAP of one subsample).
    """

    def __init__(
        self,
        model,
        guide,
        step_size=0.5,
        num_samples=8,
        estimator="hessian",
        gamma=1.0,
        trust_radius=1.0,
        loc_trust_radius=10.0,
        warm_start=None,
        **estimator_kwargs,
    ):
        if warm_start not in (None, "laplace"):
            raise ValueError(f"warm_start must be None or 'laplace', got {warm_start!r}.")
        if warm_start and isinstance(guide, StructuredGaussianMixture):
            raise ValueError("warm_start='laplace' needs a StructuredGaussian guide; place a mixture with ngvi.find_modes.")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {estimator!r}.")
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples}.")
        try:
            inspect.signature(ESTIMATORS[estimator]).bind_partial(**estimator_kwargs)
        except TypeError as err:
            raise ValueError(f"estimator={estimator!r} does not take {sorted(estimator_kwargs)}: {err}.") from None
        self.model, self.guide = model, guide
        self.step_size, self.num_samples, self.gamma = step_size, num_samples, gamma
        self.trust_radius, self.loc_trust_radius = trust_radius, loc_trust_radius
        self.estimator, self.warm_start = estimator, warm_start
        self._estimate = partial(ESTIMATORS[estimator], **estimator_kwargs)

    def _beta(self, step):
        return self.step_size(step) if callable(self.step_size) else self.step_size

    def init(self, rng_key, *args, **kwargs):
        """Set up the guide on the model's arguments and return the initial state.

        Raises ``ValueError`` for discrete latent sites, a group that does not fit
        the latent dimension, a log density that is not finite at the start, or a
        Laplace warm start without a finite mode and positive curvature there."""
        init_key, check_key, state_key = jax.random.split(rng_key, 3)
        with handlers.block():
            handlers.seed(self.guide, init_key)(*args, **kwargs)
        loc, factor, *log_weights = self.guide.init_params()
        first_loc = loc[0] if self._is_mixture else loc
        check_initial_point(self.guide, check_key, first_loc, args, kwargs)
        if self.warm_start == "laplace":
            loc, factor = self._laplace_start(check_key, loc, factor, args, kwargs)
        zero = jnp.zeros((), jnp.int32)
        return NGVIState(loc, factor, zero, zero, state_key, *log_weights)

    def _laplace_start(self, rng_key, loc, factor, args, kwargs):
        """``(mu_0, B_0)`` of :func:`ngvi.laplace.laplace_start`."""
        model_key, fit_key = jax.random.split(rng_key)
        potential = make_target(self.guide, model_key, args, kwargs).potential
        start = jax.jit(partial(laplace_start, potential=potential, group=self.guide.group))(fit_key, loc=loc, factor=factor)
        check_laplace_start(start)
        return start.loc, start.factor

    @property
    def _is_mixture(self):
        return isinstance(self.guide, StructuredGaussianMixture)

    def _step_gaussian(self, keys, state, target, beta):
        """The single-Gaussian step: ``gamma E[log q]`` in closed form."""
        estimate_key, step_key = keys
        estimate = self._estimate(estimate_key, target, self.guide.group, state.loc, state.factor, self.num_samples, self.gamma)
        if beta is None:
            return None, None, None, estimate.loss
        loc, factor, _ = natural_gradient_step(
            step_key, self.guide.group, state.loc, state.factor, estimate, beta, self.gamma,
            self.trust_radius, self.loc_trust_radius,
        )
        return loc, factor, None, estimate.loss

    def _step_mixture(self, keys, state, target, beta):
        """Each component steps on ``f = l + gamma log q`` under its own ``q_c``
        (MATH.md sec. 6); learned weights move by ``v_c -= beta (E_c[f] - E_K[f])``."""
        group, num = self.guide.group, self.guide.num_components
        mixture = self.guide._mixture(state.loc, state.factor, state.log_weights)
        f = Target(lambda z: target.potential(z) + self.gamma * mixture.log_prob(z), target.log_likelihood)
        # One component uses the keys as they are: it takes exactly the single-Gaussian step.
        estimate_keys, step_keys = (k[None] if num == 1 else jax.random.split(k, num) for k in keys)

        def component(estimate_key, step_key, loc, factor):
            estimate = self._estimate(estimate_key, f, group, loc, factor, self.num_samples, 0.0)
            if beta is None:
                return loc, factor, estimate.loss
            loc, factor, _ = natural_gradient_step(
                step_key, group, loc, factor, estimate, beta, 0.0,
                self.trust_radius, self.loc_trust_radius, entropy_weight=self.gamma,
            )
            return loc, factor, estimate.loss

        locs, factors, losses = jax.vmap(component)(estimate_keys, step_keys, state.loc, state.factor)
        loss = jnp.sum(jax.nn.softmax(state.log_weights) * losses)
        log_weights = state.log_weights
        if self.guide.learn_weights and beta is not None:
            log_weights = log_weights - beta * (losses - losses[-1])
        return locs, factors, log_weights, loss

    def _step(self, key, state, args, kwargs, beta):
        """``(loc, factor, log_weights, loss)`` after one step of size ``beta``
        (with ``beta=None``: only the loss estimate at ``state``)."""
        estimate_key, model_key, step_key = jax.random.split(key, 3)
        target = make_target(self.guide, model_key, args, kwargs)
        step = self._step_mixture if self._is_mixture else self._step_gaussian
        return step((estimate_key, step_key), state, target, beta)

    def update(self, state, *args, **kwargs):
        """One natural-gradient step; returns ``(state, loss)`` with ``loss`` the
        negative-ELBO estimate at the state before the step. A step whose result
        is not finite is rejected: the state is kept and ``num_rejected`` grows."""
        rng_key, key = jax.random.split(state.rng_key)
        loc, factor, log_weights, loss = self._step(key, state, args, kwargs, self._beta(state.step))
        accept = is_finite(loc, factor, log_weights, loss)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)
        new_state = NGVIState(
            keep(loc, state.loc),
            keep(factor, state.factor),
            state.step + 1,
            state.num_rejected + (~accept).astype(jnp.int32),
            rng_key,
            keep(log_weights, state.log_weights),
        )
        return new_state, loss

    def run(self, rng_key, num_steps, *args, progress_bar=True, init_state=None, **kwargs):
        """``num_steps`` steps as jit-compiled ``lax.scan`` chunks (one chunk
        without a progress bar, about twenty with one)."""
        state = self.init(rng_key, *args, **kwargs) if init_state is None else init_state

        @partial(jax.jit, static_argnums=1)
        def scan_chunk(state, length):
            return jax.lax.scan(lambda s, _: self.update(s, *args, **kwargs), state, None, length=length)

        if not progress_bar:
            state, losses = scan_chunk(state, num_steps)
        else:
            chunk = max(1, num_steps // 20)
            chunks = []
            with tqdm(total=num_steps) as bar:
                done = 0
                while done < num_steps:
                    length = min(chunk, num_steps - done)
                    state, losses = scan_chunk(state, length)
                    chunks.append(losses)
                    done += length
                    bar.set_postfix_str(f"loss {float(jnp.mean(losses)):.4g}, rejected {int(state.num_rejected)}")
                    bar.update(length)
            losses = jnp.concatenate(chunks)
        return NGVIRunResult(self.get_params(state), state, losses)

    def get_params(self, state):
        """The guide's param dict (``{prefix}_loc``, ``{prefix}_factor_*``, ...)."""
        extra = (state.log_weights,) if self._is_mixture else ()
        return self.guide.pack_params(state.loc, state.factor, *extra)

    def evaluate(self, state, *args, **kwargs):
        """A negative-ELBO estimate at ``state`` from fresh samples."""
        key = jax.random.fold_in(state.rng_key, 1)
        return self._step(key, state, args, kwargs, None)[-1]
