"""``NGVI``: natural-gradient variational inference for NumPyro models, a thin
adaptor that mirrors ``numpyro.infer.SVI`` (``init``, ``update``, ``run``,
``get_params``, ``evaluate``) over the pure algorithms of :mod:`ngvi.vi`.

Each step builds the potential ``l(z) = -log p(x, z)`` of the ``model`` passed
to ``NGVI`` over the guide's flat unconstrained latent vector (seeded afresh,
so that data subsampling draws one subsample per step, as in SVI), asks the
guide for its algorithm (:meth:`ngvi.StructuredGaussian.algorithm`) and takes
one step of it.
"""

import math
import numbers
import os
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from tqdm import tqdm

from ngvi import checkpoint as checkpoints
from ngvi import convergence
from ngvi.guides.mixture import StructuredGaussianMixture
from ngvi.laplace import check_laplace_start, laplace_start
from ngvi.ngd import is_finite
from ngvi.target import check_initial_point, make_target, model_param_sites
from ngvi.vi.base import keep_if, step_size_at

__all__ = ["NGVI", "NGVIState", "NGVIRunResult"]

CHUNK = 10
"""Steps per compiled chunk of a run that stops by itself (the stopping rule looks between chunks)."""
# num_samples="auto": the draws a step starts with, and the most numbers its draws may hold once grown.
AUTO_DRAWS, MAX_DRAW_NUMBERS = 8, 2**25


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
    algorithm's per-step diagnostics stacked along a leading step axis;
    ``converged`` (``None`` when ``num_steps`` was given) and ``stop_reason``
    (``"converged"``, ``"max_steps"`` or ``"num_steps"``) say why the run stopped."""

    params: dict
    state: NGVIState
    losses: jax.Array
    info: Any
    converged: Any = None
    stop_reason: str = "num_steps"


class NGVI:
    """Natural-gradient VI (Lin, Nielsen, Khan and Schmidt, ICML 2021).

    :param model: the NumPyro model whose posterior is fitted (as in SVI, the
        guide's own model gives only the latent layout).
    :param guide: a :class:`ngvi.StructuredGaussian` or
        :class:`ngvi.StructuredGaussianMixture` of the model; it picks the
        algorithm (:mod:`ngvi.vi.structured_gaussian` or
        :mod:`ngvi.vi.gaussian_mixture`).
    :param step_size: ``beta``, a float or a schedule ``step -> float`` (e.g.
        an optax schedule). Under data subsampling it is per pass over the data:
        a step of ``beta n / N`` (the guide's ``subsample_fraction``) on a
        target that carries a control variate at the mean
        (:func:`ngvi.target.with_control_variate`: one full-data gradient a
        step), so that the subsample's noise neither leaves the mean far from
        the fixed point nor inflates the scale parameters it feeds back into
        (``docs/maths.md``, Data subsampling).
    :param num_samples: Monte-Carlo samples per step (drawn in antithetic pairs;
        per component for a mixture). ``"auto"`` (the default): 8, and in
        ``run(key, None)`` more by powers of two while the answer at the
        smallest step is still moving with the draws (:mod:`ngvi.convergence`:
        the fixed point of a step of ``N`` draws is ``O(beta / N)`` off the
        optimum), up to 32 times as many and ``2^25`` numbers per step's draws;
        a number: that many, always (the stopping rule then halves the step
        instead).
    :param estimator: ``"auto"`` (the default, :func:`ngvi.estimators.auto`:
        ``"hessian"``, exact for a full-matrix group or ``p <= 128``, else with
        the diagonal from 4 whitened probes, so that a structured step costs
        ``k + 4`` products per draw),
        ``"hessian"`` (Hessian-vector products), ``"stein"``
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
    :param tol: for ``run(key, None, ...)``: the Monte-Carlo error the answer
        must reach in every coordinate (at 99%), for the means in posterior
        standard deviations and for the scales relative (:mod:`ngvi.convergence`).
    :param max_steps: for ``run(key, None, ...)``: the most steps it takes,
        counted at the first number of draws (a step with twice the draws
        counts twice, so the budget bounds the gradient evaluations too).
        120,000 (about a million gradient evaluations at 8 draws): measured
        in float64, Neal's funnel (p = 11), whose scale the step forgets ~80
        times more slowly than the rest, ends 0.011 sd from the KL optimum
        (0.31 sd at 30,000; in float32 0.14 sd), and an 84-dimensional
        horseshoe regression converges at 32 times the draws (5,890 steps;
        not converged at 30,000, 0.08 sd off).
    :param mesh: a ``jax.sharding.Mesh`` over which each step is spread: its
        draws along all the mesh's axes but ``"data"`` (``num_samples`` a
        multiple of their size) and, under data subsampling, each plate's
        subsample along the axis ``"data"`` if the mesh has one
        (``subsample_size`` a multiple of its size). The step stays one
        compiled program, XLA's partitioner places the model's evaluations and
        sums (no hand-written communication), and the result is the one-device
        result up to float rounding. Data placed with ``jax.device_put`` on the
        same mesh stays there. For several hosts, call
        ``jax.distributed.initialize()`` first and pass a mesh of ``jax.devices()``.
    """

    def __init__(
        self,
        model,
        guide,
        step_size=0.5,
        num_samples="auto",
        estimator="auto",
        gamma=1.0,
        trust_radius=1.0,
        loc_trust_radius=10.0,
        warm_start=None,
        optim=None,
        tol=0.03,
        max_steps=120_000,
        mesh=None,
        **estimator_kwargs,
    ):
        if warm_start not in (None, "laplace"):
            raise ValueError(f"warm_start must be None or 'laplace', got {warm_start!r}.")
        if warm_start and isinstance(guide, StructuredGaussianMixture):
            raise ValueError("warm_start='laplace' needs a StructuredGaussian guide; place a mixture with ngvi.find_modes.")
        self.optim = optax.adam(1e-2) if optim is None else optim
        if not isinstance(self.optim, optax.GradientTransformation):
            raise ValueError(f"optim must be an optax.GradientTransformation, got {type(self.optim).__name__}.")
        if not tol > 0 or int(max_steps) != max_steps or max_steps < 1:
            raise ValueError(f"tol must be positive and max_steps a positive integer, got tol={tol}, max_steps={max_steps}.")
        self.tol, self.max_steps = tol, int(max_steps)
        self.grow_draws = isinstance(num_samples, str)
        if self.grow_draws and num_samples != "auto":
            raise ValueError(f"num_samples must be 'auto' or a positive integer, got {num_samples!r}.")
        num_samples = AUTO_DRAWS if self.grow_draws else num_samples
        self.draw_sharding, self.subsample_sharding = _mesh_shardings(mesh, num_samples)
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

    def _algorithm(self, rng_key, args, kwargs, model_params, step_scale=1.0, anchor=None, num_samples=None):
        """The guide's algorithm on the model's target, seeded with ``rng_key``,
        its step size scaled by ``step_scale`` (``num_samples`` draws, default
        the fit's); under data subsampling with an
        ``anchor``, the target carries a control variate there
        (:func:`ngvi.target.with_control_variate`)."""
        target = make_target(
            self._model_at(model_params), self.guide, rng_key, args, kwargs, self.draw_sharding,
            self.subsample_sharding, anchor,
        )
        scale = step_scale * self.guide.subsample_fraction
        step_size = lambda step: scale * step_size_at(self.step_size, step)  # noqa: E731
        num_samples = num_samples or self.num_samples
        return self.guide.algorithm(target, **{**self._settings, "step_size": step_size, "num_samples": num_samples})

    def init(self, rng_key, *args, **kwargs):
        """Set up the guide on the model's arguments and return the initial state.

        Raises ``ValueError`` for discrete latent sites, a group that does not fit
        the latent dimension, a log density that is not finite at the start, or a
        Laplace warm start without a finite mode and positive curvature there."""
        init_key, check_key, state_key = jax.random.split(rng_key, 3)
        with handlers.block():
            handlers.seed(self.guide, init_key)(*args, **kwargs)
        _check_subsamples_split(self.guide.subsampled_plates, self.subsample_sharding)
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

    def _update(self, state, args, kwargs, step_scale=1.0, num_samples=None):
        """One step of ``num_samples`` draws (default the fit's): ``(state,
        info)``. The state's key splits into the next key, the model's seed (the
        data subsample), the algorithm's step key and the key of the draws for
        the model's ``numpyro.param`` sites."""
        rng_key, model_key, step_key, param_key = jax.random.split(state.rng_key, 4)
        loc = state.vi_state.loc
        anchor = jnp.mean(jnp.reshape(loc, (-1, loc.shape[-1])), axis=0)  # a mixture's: the mean of its means
        num_samples = num_samples or self.num_samples
        algorithm = self._algorithm(model_key, args, kwargs, state.model_params, step_scale, anchor, num_samples)
        vi_state, info = algorithm.step(step_key, state.vi_state)
        if self.guide.subsampled_plates:  # the control variate: a full-data and a subsample gradient
            info = info._replace(num_grads=info.num_grads + 1 + round(1 / self.guide.subsample_fraction))
        model_params, optim_state = state.model_params, state.optim_state
        if model_params:
            draws = algorithm.sample(param_key, state.vi_state, num_samples)
            model_params, optim_state = self._param_step(model_key, draws, model_params, optim_state, args, kwargs)
            info = info._replace(num_grads=info.num_grads + num_samples)
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

    def run(
        self, rng_key, num_steps, *args, progress_bar=True, init_state=None, checkpoint=None, checkpoint_every=1000,
        **kwargs,
    ):
        """``num_steps`` steps, or with ``num_steps=None`` until converged
        (:mod:`ngvi.convergence`: the window average of the iterates is
        stationary and its standard error below ``tol``; at most
        ``max_steps``). Steps run as one jit-compiled loop per chunk, compiled
        once per call; the host sees each chunk's diagnostics (progress bar,
        stopping rule), never a single step's.

        With ``checkpoint`` (a path) the run writes a checkpoint
        (:mod:`ngvi.checkpoint`) there every ``checkpoint_every`` steps (at the
        end of a chunk; chunks are no longer than that) and when it stops; if that file exists, the run
        resumes from it (the same key stream: it ends where an uninterrupted
        run ends), after checking that it is of this fit.

        The result's ``converged`` and ``stop_reason`` say why it stopped
        (``None`` and ``"num_steps"`` with ``num_steps`` given). A run that
        converged, or ran out of steps with its last window stationary,
        returns the window average (in the state, too), otherwise the last
        iterate."""
        _check_num_steps(num_steps)
        if int(checkpoint_every) != checkpoint_every or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive number of steps, got {checkpoint_every!r}.")
        state = self.init(rng_key, *args, **kwargs) if init_state is None else _check_init_state(init_state)
        recorder = _Recorder(self, checkpoint, checkpoint_every, num_steps, state, args, kwargs)
        if init_state is not None and recorder.resumed is not None:
            raise ValueError(f"init_state was given and checkpoint {checkpoint!r} exists: pass one of them.")
        if num_steps is None:
            return self._run_to_convergence(state, args, kwargs, progress_bar, recorder)
        state, infos, done = recorder.start(state)
        length = max(1, num_steps // 20) if progress_bar else num_steps
        length = length if checkpoint is None else min(length, int(checkpoint_every))
        chunk = self._compiled_chunk(args, kwargs, length)
        with tqdm(total=num_steps, initial=done, disable=not progress_bar) as bar:
            while done < num_steps:
                num = min(length, num_steps - done)
                state, _, info = chunk(state, num, 1.0)
                infos.append(jax.tree.map(lambda x, num=num: x[:num], info))
                if progress_bar:
                    bar.set_postfix_str(_progress(state, info, num))
                bar.update(num)
                done += num
                recorder.save(state, infos, done, force=done == num_steps)
        return self._result(state, infos, None, "num_steps")

    def _run_to_convergence(self, state, args, kwargs, progress_bar, recorder):
        """Chunks of ``CHUNK`` steps, averaged into batches for
        :func:`ngvi.convergence.add_batch`, until converged or ``max_steps``."""
        chunks = {}  # one compiled chunk per number of draws
        shift_fn = jax.jit(partial(convergence.shift, self.guide.group))
        fresh = dict(window=convergence.new_window(), check=None, batch=None, position=0, num_chunks=0, spent=0)
        state, infos, done = recorder.start(state)
        book = recorder.resumed.bookkeeping if recorder.resumed else fresh
        window, check, batch, position, num_chunks, spent = (book[name] for name in fresh)
        dim = state.vi_state.loc.shape[-1]
        max_draw_scale = _max_draw_scale(self.num_samples, state.vi_state.loc.size) if self.grow_draws else 1
        with tqdm(total=self.max_steps, initial=spent, disable=not progress_bar) as bar:
            while spent < self.max_steps and not (check and check.converged):
                left = -(-(self.max_steps - spent) // window.draw_scale)  # steps at this many draws
                if position == 0:  # a new batch: its length follows the step size
                    beta = window.step_scale * self.guide.subsample_fraction * _step_size(self.step_size, state)
                    batches = convergence.batch_length(beta, CHUNK, window.batch_scale)
                    num_chunks = min(batches, -(-left // CHUNK))
                num, num_samples = min(CHUNK, left), self.num_samples * window.draw_scale
                if num_samples not in chunks:
                    chunks[num_samples] = self._compiled_chunk(args, kwargs, CHUNK, num_samples)
                state, mean, info = chunks[num_samples](state, num, window.step_scale)
                infos.append(jax.tree.map(lambda x, num=num: x[:num], info))
                batch = mean if position == 0 else convergence.average(batch, mean, 1.0 / (position + 1))
                position += 1
                cost = num * window.draw_scale  # in steps at the first number of draws
                bar.update(cost)
                done, spent = done + num, spent + cost
                if position == num_chunks:
                    window, new_check = convergence.add_batch(window, batch, shift_fn, self.tol, dim, max_draw_scale)
                    check, position = new_check or check, 0
                    if progress_bar:
                        bar.set_postfix_str(_progress(state, info, num, check, self.tol, dim, num_samples))
                book = dict(window=window, check=check, batch=batch, position=position, num_chunks=num_chunks, spent=spent)
                recorder.save(state, infos, done, book)
            converged = bool(check and check.converged)
            recorder.save(state, infos, done, book, force=True)
            if progress_bar:
                bar.set_description("converged" if converged else "not converged")
        if check and check.stationary:  # converged, or out of steps with a stationary window
            state = state._replace(vi_state=convergence.with_parameters(state.vi_state, check.answer))
        return self._result(state, infos, converged, "converged" if converged else "max_steps")

    def _compiled_chunk(self, args, kwargs, length, num_samples=None):
        """``(state, n, step_scale) -> (state, mean of q's parameters over the
        n steps, infos)`` for ``n <= length`` steps (infos padded to
        ``length``) at ``step_scale`` times the step size, of ``num_samples``
        draws (default the fit's), jit-compiled."""
        parameters = partial(convergence.parameters, group=self.guide.group)

        def chunk(state, num, step_scale):
            info_shape = jax.eval_shape(lambda s: self._update(s, args, kwargs, 1.0, num_samples)[1], state)
            infos = jax.tree.map(lambda x: jnp.zeros((length,) + x.shape, x.dtype), info_shape)
            sums = jax.tree.map(jnp.zeros_like, parameters(state.vi_state))

            def body(i, carry):
                state, infos, sums = carry
                state, info = self._update(state, args, kwargs, step_scale, num_samples)
                infos = jax.tree.map(lambda buffer, x: buffer.at[i].set(x), infos, info)
                return state, infos, jax.tree.map(jnp.add, sums, parameters(state.vi_state))

            state, infos, sums = jax.lax.fori_loop(0, num, body, (state, infos, sums))
            return state, jax.tree.map(lambda x: x / num, sums), infos

        return jax.jit(chunk)

    def _result(self, state, infos, converged, stop_reason):
        info = _stack(infos)
        return NGVIRunResult(self.get_params(state), state, info.loss, info, converged, stop_reason)

    def get_params(self, state):
        """The guide's param dict (``{prefix}_loc``, ``{prefix}_factor_*``, ...)
        and the model's ``numpyro.param`` sites (constrained), as ``SVI.get_params``."""
        return {**self.guide.params_from_state(state.vi_state), **self._constrain(state.model_params)}

    def evaluate(self, state, *args, **kwargs):
        """A negative-ELBO estimate at ``state`` from fresh samples."""
        model_key, loss_key = jax.random.split(jax.random.fold_in(state.rng_key, 1))
        return self._algorithm(model_key, args, kwargs, state.model_params).loss(loss_key, state.vi_state)


def _stack(infos):
    """The per-chunk diagnostics ``infos`` as one tree along the step axis."""
    return jax.tree.map(lambda *parts: jnp.concatenate(parts), *infos)


class _Recorder:
    """A run's checkpoints (:mod:`ngvi.checkpoint`) at ``path`` (none if ``None``):
    ``resumed``, the checkpoint found there at the start (or ``None``), and
    ``save``, which writes one every ``every`` steps."""

    def __init__(self, ngvi, path, every, num_steps, state, args, kwargs):
        self.path, self.every, self.last = path, int(every), 0
        self.description = checkpoints.describe(ngvi.guide, num_steps)
        self.treedef = jax.tree.structure(convergence.parameters(state.vi_state, ngvi.guide.group))
        self.resumed = None
        if path is not None and os.path.exists(path):
            info_like = jax.eval_shape(lambda s: ngvi._update(s, args, kwargs)[1], state)
            self.resumed = checkpoints.load(path, self.description, state, info_like, self.treedef)
            self.last = self.resumed.steps

    def start(self, state):
        """``(state, infos, steps done)`` at the start: the checkpoint's, or ``state`` with none done."""
        if self.resumed is None or self.resumed.steps == 0:
            return (state if self.resumed is None else self.resumed.state), [], 0
        return self.resumed.state, [self.resumed.info], self.resumed.steps

    def save(self, state, infos, steps, bookkeeping=None, force=False):
        """Write a checkpoint if ``every`` steps have passed since the last (or ``force``)."""
        if self.path is not None and (force or steps - self.last >= self.every):
            checkpoints.save(self.path, self.description, state, _stack(infos), steps, bookkeeping, self.treedef)
            self.last = steps


DATA_AXIS = "data"


def _mesh_shardings(mesh, num_samples):
    """``(draw sharding, subsample sharding)`` on ``mesh`` (``(None, None)`` without
    one): a step's ``(num_samples, p)`` draws split along all the mesh's axes but
    :data:`DATA_AXIS`, a plate's subsample indices along :data:`DATA_AXIS` (``None``
    if the mesh has no such axis)."""
    if mesh is None:
        return None, None
    if not isinstance(mesh, jax.sharding.Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
    draw_axes = tuple(name for name in mesh.axis_names if name != DATA_AXIS)
    num_devices = math.prod(mesh.shape[name] for name in draw_axes)
    if int(num_samples) % num_devices:
        axes = f"axes {dict(mesh.shape)}" + (f" but {DATA_AXIS!r}" if DATA_AXIS in mesh.shape else "")
        raise ValueError(
            f"num_samples={num_samples} draws do not split over the mesh's {num_devices} devices"
            f" ({axes}): pass a multiple of {num_devices}."
        )
    spec = jax.sharding.PartitionSpec
    draws = jax.sharding.NamedSharding(mesh, spec(draw_axes or None, None))
    subsample = jax.sharding.NamedSharding(mesh, spec(DATA_AXIS)) if DATA_AXIS in mesh.shape else None
    return draws, subsample


def _check_subsamples_split(plates, subsample_sharding):
    """``ValueError`` naming the first subsampling plate whose ``subsample_size``
    does not split over the devices of the mesh's :data:`DATA_AXIS`."""
    if subsample_sharding is None:
        return
    num_devices = subsample_sharding.mesh.shape[DATA_AXIS]
    for name, (_, subsample_size) in plates.items():
        if subsample_size % num_devices:
            raise ValueError(
                f"Plate '{name}' has subsample_size={subsample_size}, which does not split over the mesh's"
                f" {DATA_AXIS!r} axis of {num_devices} devices: pass a multiple of {num_devices}."
            )


def _check_num_steps(num_steps):
    """``num_steps`` is a positive int or ``None``; anything else (an array: a
    model argument passed where ``num_steps`` belongs) is a ``ValueError``."""
    if num_steps is None or (isinstance(num_steps, numbers.Integral) and not isinstance(num_steps, bool) and num_steps >= 1):
        return
    shape = f" of shape {jnp.shape(num_steps)}" if hasattr(num_steps, "shape") else ""
    raise ValueError(
        f"num_steps must be a positive int, or None to run until converged; got {type(num_steps).__name__}{shape}"
        f" {num_steps!r:.60}. The model's arguments come after it: run(rng_key, num_steps, *args, **kwargs)."
    )


def _check_init_state(state):
    """``state``, after checking that its floating-point arrays are of the
    run's default float (float64 with ``jax_enable_x64``, else float32)."""
    expected = jnp.result_type(float)
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.floating) and dtype != expected:
            raise ValueError(
                f"init_state{jax.tree_util.keystr(path)} is {dtype}, but this run computes in {expected}"
                f" (jax_enable_x64 is {'on' if expected == jnp.float64 else 'off'}): convert the state, e.g. "
                f"jax.tree.map(lambda x: x.astype(jnp.{expected}) if jnp.issubdtype(x.dtype, jnp.floating) else x,"
                " state), or start afresh."
            )
    return state


def _max_draw_scale(num_samples, size):
    """How many times ``num_samples`` draws of ``size`` numbers each a step may
    grow: a power of two, at most ``convergence.MAX_DRAW_SCALE`` and with at most
    ``MAX_DRAW_NUMBERS`` numbers in a step's draws (at least 1)."""
    room = max(1, MAX_DRAW_NUMBERS // (num_samples * size))
    return min(convergence.MAX_DRAW_SCALE, 2 ** (room.bit_length() - 1))


def _step_size(step_size, state):
    """The step size at ``state``'s step, scaled by the step control's radius."""
    radius = getattr(state.vi_state, "radius", None)
    return float(step_size_at(step_size, state.vi_state.step)) * (1.0 if radius is None else float(radius))


def _progress(state, info, num, check=None, tol=None, dim=None, num_samples=None):
    """The progress bar's text after a chunk of ``num`` steps: the loss, the
    rejections and, once the stopping rule has looked, the drift between the
    window's halves and the answer's error bound (both in posterior sds) and
    the draws a step."""
    text = f"loss {float(jnp.nanmean(info.loss[:num])):.4g}, rejected {int(state.num_rejected)}"
    if check is not None:
        bound = check.se * convergence.error_quantile(dim)
        text += f", drift {check.drift:.3g}, error {bound:.3g} (tol {tol:g}), {num_samples} draws"
    return text

