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
import optax
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from tqdm import tqdm

from ngvi.guides.mixture import StructuredGaussianMixture
from ngvi.laplace import check_laplace_start, laplace_start
from ngvi.ngd import is_finite
from ngvi.target import check_initial_point, make_target, model_param_sites
from ngvi.vi.base import keep_if

__all__ = ["NGVI", "NGVIState", "NGVIRunResult"]


class NGVIState(NamedTuple):
    """``vi_state`` is the state of the guide's :mod:`ngvi.vi` algorithm
    (``loc``, ``factor``, ``step``, ...); ``num_rejected`` counts the steps the
    algorithm rejected (not finite; the state stayed where it was);
    ``model_params`` are the model's ``numpyro.param`` sites, unconstrained,
    and ``optim_state`` their optimiser's state (both empty without them)."""

    vi_state: Any
    num_rejected: jax.Array
    rng_key: jax.Array
    model_params: dict = {}
    optim_state: Any = ()


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
    :param optim: the optax optimiser of the model's own ``numpyro.param``
        sites (default ``optax.adam(1e-2)``): each step they take one Euclidean
        step on the negative ELBO, ``grad_theta E_q[-log p(x, z; theta)]``
        averaged over ``num_samples`` fresh draws, in their unconstrained space
        (as SVI does); the latents take the natural-gradient step.
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
        optim=None,
        **estimator_kwargs,
    ):
        if warm_start not in (None, "laplace"):
            raise ValueError(f"warm_start must be None or 'laplace', got {warm_start!r}.")
        if warm_start and isinstance(guide, StructuredGaussianMixture):
            raise ValueError("warm_start='laplace' needs a StructuredGaussian guide; place a mixture with ngvi.find_modes.")
        self.optim = optax.adam(1e-2) if optim is None else optim
        if not isinstance(self.optim, optax.GradientTransformation):
            raise ValueError(f"optim must be an optax.GradientTransformation, got {type(self.optim).__name__}.")
        self.model, self.guide, self.warm_start = model, guide, warm_start
        self._param_constraints = {}
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

    def _constrain(self, model_params):
        """The model's ``numpyro.param`` values from their unconstrained ones."""
        return {name: biject_to(self._param_constraints[name])(u) for name, u in model_params.items()}

    def _model_at(self, model_params):
        """The model with its ``numpyro.param`` sites at ``model_params`` (unconstrained)."""
        return handlers.substitute(self.model, data=self._constrain(model_params)) if model_params else self.model

    def _algorithm(self, rng_key, args, kwargs, model_params):
        """The guide's algorithm on the model's target, seeded with ``rng_key``."""
        target = make_target(self._model_at(model_params), self.guide, rng_key, args, kwargs)
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
        first_loc = jnp.reshape(vi_state.loc, (-1, jnp.shape(vi_state.loc)[-1]))[0]
        sites = model_param_sites(self.model, self.guide, check_key, first_loc, args, kwargs)
        self._param_constraints = {name: constraint for name, (_, constraint) in sites.items()}
        model_params = {name: biject_to(constraint).inv(value) for name, (value, constraint) in sites.items()}
        check_initial_point(self._model_at(model_params), self.guide, check_key, vi_state.loc, args, kwargs)
        if self.warm_start == "laplace":
            vi_state = self._laplace_start(check_key, vi_state, model_params, args, kwargs)
        optim_state = self.optim.init(model_params) if model_params else ()
        return NGVIState(vi_state, jnp.zeros((), jnp.int32), state_key, model_params, optim_state)

    def _laplace_start(self, rng_key, vi_state, model_params, args, kwargs):
        """``vi_state`` moved to :func:`ngvi.laplace.laplace_start`."""
        model_key, fit_key = jax.random.split(rng_key)
        potential = make_target(self._model_at(model_params), self.guide, model_key, args, kwargs).potential
        start = jax.jit(partial(laplace_start, potential=potential, group=self.guide.group))(
            fit_key, loc=vi_state.loc, factor=vi_state.factor
        )
        check_laplace_start(start)
        return self.guide.init_state(start.loc, start.factor)

    def _update(self, state, args, kwargs):
        """One step: ``(state, info)``. The state's key splits into the next key,
        the model's seed (the data subsample), the algorithm's step key and the
        key of the draws for the model's ``numpyro.param`` sites."""
        rng_key, model_key, step_key, param_key = jax.random.split(state.rng_key, 4)
        algorithm = self._algorithm(model_key, args, kwargs, state.model_params)
        vi_state, info = algorithm.step(step_key, state.vi_state)
        model_params, optim_state = state.model_params, state.optim_state
        if model_params:
            draws = algorithm.sample(param_key, state.vi_state, self.num_samples)
            model_params, optim_state = self._param_step(model_key, draws, model_params, optim_state, args, kwargs)
            info = info._replace(num_grads=info.num_grads + self.num_samples)
        num_rejected = state.num_rejected + info.rejected.astype(jnp.int32)
        return NGVIState(vi_state, num_rejected, rng_key, model_params, optim_state), info

    def _param_step(self, model_key, draws, model_params, optim_state, args, kwargs):
        """One optax step of the model's ``numpyro.param`` sites on the negative
        ELBO's Monte-Carlo estimate ``mean_n -log p(x, z_n; theta)`` at ``draws``
        (the same data subsample as the latents' step); a step with a non-finite
        gradient is skipped. Costs one gradient per draw."""

        def neg_elbo(unconstrained):
            potential = make_target(self._model_at(unconstrained), self.guide, model_key, args, kwargs).potential
            return jnp.mean(jax.vmap(potential)(draws))

        grads = jax.grad(neg_elbo)(model_params)
        updates, new_optim_state = self.optim.update(grads, optim_state, model_params)
        new = (optax.apply_updates(model_params, updates), new_optim_state)
        return keep_if(is_finite(grads), new, (model_params, optim_state))

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
        """The guide's param dict (``{prefix}_loc``, ``{prefix}_factor_*``, ...)
        and the model's ``numpyro.param`` sites (constrained), as ``SVI.get_params``."""
        return {**self.guide.params_from_state(state.vi_state), **self._constrain(state.model_params)}

    def evaluate(self, state, *args, **kwargs):
        """A negative-ELBO estimate at ``state`` from fresh samples."""
        model_key, loss_key = jax.random.split(jax.random.fold_in(state.rng_key, 1))
        return self._algorithm(model_key, args, kwargs, state.model_params).loss(loss_key, state.vi_state)
