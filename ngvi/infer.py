"""``NGVI``: natural-gradient variational inference for NumPyro models, a thin
adaptor that mirrors ``numpyro.infer.SVI`` (``init``, ``update``, ``run``,
``get_params``, ``evaluate``) over the pure algorithms of :mod:`ngvi.vi`.

Each step builds the potential ``l(z) = -log p(x, z)`` of the ``model`` passed
to ``NGVI`` over the guide's flat unconstrained latent vector (seeded afresh,
so that data subsampling draws one subsample per step, as in SVI), asks the
guide for its algorithm (:meth:`ngvi.StructuredGaussian.algorithm`) and takes
one step of it.
"""

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from numpyro import handlers
from tqdm import tqdm

from ngvi.guides.mixture import StructuredGaussianMixture
from ngvi.laplace import check_laplace_start, laplace_start
from ngvi.target import check_initial_point, make_target

__all__ = ["NGVI", "NGVIState", "NGVIRunResult"]


class NGVIState(NamedTuple):
    """``vi_state`` is the state of the guide's :mod:`ngvi.vi` algorithm
    (``loc``, ``factor``, ``step``, ...); ``num_rejected`` counts the steps the
    algorithm rejected (not finite; the state stayed where it was)."""

    vi_state: Any
    num_rejected: jax.Array
    rng_key: jax.Array


class NGVIRunResult(NamedTuple):
    """``losses`` are the negative-ELBO estimates per step, ``info`` the
    algorithm's per-step diagnostics stacked along a leading step axis."""

    params: dict
    state: NGVIState
    losses: jax.Array
    info: Any


class NGVI:
    """Natural-gradient VI (Lin, Nielsen, Khan and Schmidt, ICML 2021).

    :param model: the NumPyro model whose posterior is fitted (as in SVI, the
        guide's own model gives only the latent layout).
    :param guide: a :class:`ngvi.StructuredGaussian` or
        :class:`ngvi.StructuredGaussianMixture` of the model; it picks the
        algorithm (:mod:`ngvi.vi.structured_gaussian` or
        :mod:`ngvi.vi.gaussian_mixture`).
    :param step_size: ``beta``, a float or a schedule ``step -> float`` (e.g. an optax schedule).
    :param num_samples: Monte-Carlo samples per step (drawn in antithetic pairs;
        per component for a mixture).
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
        self.model, self.guide, self.warm_start = model, guide, warm_start
        self.step_size, self.num_samples, self.estimator, self.gamma = step_size, num_samples, estimator, gamma
        self.trust_radius, self.loc_trust_radius = trust_radius, loc_trust_radius
        self.estimator_kwargs = estimator_kwargs
        guide.algorithm(None, **self._settings)  # checks the settings now, before any model is traced

    @property
    def _settings(self):
        return dict(
            step_size=self.step_size, num_samples=self.num_samples, estimator=self.estimator, gamma=self.gamma,
            trust_radius=self.trust_radius, loc_trust_radius=self.loc_trust_radius, **self.estimator_kwargs,
        )

    def _algorithm(self, rng_key, args, kwargs):
        """The guide's algorithm on the model's target, seeded with ``rng_key``."""
        target = make_target(self.model, self.guide, rng_key, args, kwargs)
        return self.guide.algorithm(target, **self._settings)

    def init(self, rng_key, *args, **kwargs):
        """Set up the guide on the model's arguments and return the initial state.

        Raises ``ValueError`` for discrete latent sites, a group that does not fit
        the latent dimension, a log density that is not finite at the start, or a
        Laplace warm start without a finite mode and positive curvature there."""
        init_key, check_key, state_key = jax.random.split(rng_key, 3)
        with handlers.block():
            handlers.seed(self.guide, init_key)(*args, **kwargs)
        vi_state = self.guide.init_state()
        check_initial_point(self.model, self.guide, check_key, vi_state.loc, args, kwargs)
        if self.warm_start == "laplace":
            vi_state = self._laplace_start(check_key, vi_state, args, kwargs)
        return NGVIState(vi_state, jnp.zeros((), jnp.int32), state_key)

    def _laplace_start(self, rng_key, vi_state, args, kwargs):
        """``vi_state`` moved to :func:`ngvi.laplace.laplace_start`."""
        model_key, fit_key = jax.random.split(rng_key)
        potential = make_target(self.model, self.guide, model_key, args, kwargs).potential
        start = jax.jit(partial(laplace_start, potential=potential, group=self.guide.group))(
            fit_key, loc=vi_state.loc, factor=vi_state.factor
        )
        check_laplace_start(start)
        return self.guide.init_state(start.loc, start.factor)

    def _update(self, state, args, kwargs):
        """One step: ``(state, info)``. The state's key splits into the next key,
        the model's seed (the data subsample) and the algorithm's step key."""
        rng_key, model_key, step_key = jax.random.split(state.rng_key, 3)
        vi_state, info = self._algorithm(model_key, args, kwargs).step(step_key, state.vi_state)
        return NGVIState(vi_state, state.num_rejected + info.rejected.astype(jnp.int32), rng_key), info

    def update(self, state, *args, **kwargs):
        """One natural-gradient step; returns ``(state, loss)`` with ``loss`` the
        negative-ELBO estimate at the state before the step. A step whose result
        is not finite is rejected: the state is kept and ``num_rejected`` grows."""
        state, info = self._update(state, args, kwargs)
        return state, info.loss

    def run(self, rng_key, num_steps, *args, progress_bar=True, init_state=None, **kwargs):
        """``num_steps`` steps as jit-compiled ``lax.scan`` chunks (one chunk
        without a progress bar, about twenty with one)."""
        state = self.init(rng_key, *args, **kwargs) if init_state is None else init_state

        @partial(jax.jit, static_argnums=1)
        def scan_chunk(state, length):
            return jax.lax.scan(lambda s, _: self._update(s, args, kwargs), state, None, length=length)

        if not progress_bar:
            state, info = scan_chunk(state, num_steps)
        else:
            chunk = max(1, num_steps // 20)
            chunks = []
            with tqdm(total=num_steps) as bar:
                done = 0
                while done < num_steps:
                    length = min(chunk, num_steps - done)
                    state, info = scan_chunk(state, length)
                    chunks.append(info)
                    done += length
                    bar.set_postfix_str(f"loss {float(jnp.nanmean(info.loss)):.4g}, rejected {int(state.num_rejected)}")
                    bar.update(length)
            info = jax.tree.map(lambda *parts: jnp.concatenate(parts), *chunks)
        return NGVIRunResult(self.get_params(state), state, info.loss, info)

    def get_params(self, state):
        """The guide's param dict (``{prefix}_loc``, ``{prefix}_factor_*``, ...)."""
        return self.guide.params_from_state(state.vi_state)

    def evaluate(self, state, *args, **kwargs):
        """A negative-ELBO estimate at ``state`` from fresh samples."""
        model_key, loss_key = jax.random.split(jax.random.fold_in(state.rng_key, 1))
        return self._algorithm(model_key, args, kwargs).loss(loss_key, state.vi_state)
