"""When a run has converged: batch means of the iterates, a stationarity test
between the two halves of a window, and the averaged answer.

At a constant step size the iterates of a stochastic step do not settle: they
fluctuate around the fixed point by the Monte-Carlo noise of one step. The
average over a window of ``W`` steps has a standard error that falls as
``1 / sqrt(W)``, so the answer of a run is the window average, and the run
stops when (MATH.md's step is the same; only the bookkeeping is new here)

* the window is **stationary**: the averages of its two halves differ by less
  than ``DRIFT_Z`` standard errors of their difference (or by less than ``tol``),
* the answer is **precise**: the standard error of the window average, times
  ``z_p`` (:func:`error_quantile`: a bound on all ``p`` coordinates' errors at
  99%), is below ``tol``;
* the answer is **unbiased**: at a constant step ``beta`` with ``N`` draws
  the iterates' mean sits ``O(beta / N)`` off the optimum (the precision of
  the mean step is updated from the same draws as the gradient, and ``h`` is
  quadratic), so once stationary the step size halves down to
  ``MIN_STEP_SCALE``; there, each precise answer is compared with the last
  precise one at a larger ``beta / N``: their difference, less its noise and
  scaled by the ratio of the two ``beta / N``, is the later answer's bias and
  must be below ``tol / z_p``; until it is, the draws grow by powers of two
  from the user's ``num_samples``, up to ``MAX_DRAW_SCALE`` times it, and the
  step shrinks beyond. A stationary answer there that is not yet precise
  doubles the draws too while they may grow (more draws cut the noise of the
  slowly mixing directions however correlated the batches are), then
  lengthens its batches.
  A run may stop earlier when, right after a halving, the halves agree to
  within that and its error is far below it (a fit with next to no
  Monte-Carlo noise).

Both are measured in the Gaussian's own units, so one ``tol`` serves every model:
the mean in whitened coordinates, ``||B^T (mu_1 - mu_2)|| / sqrt(p)`` (RMS over
coordinates of the shift in posterior standard deviations), and the scale as
``||sym(B_1^-1 B_2 - I) r|| / sqrt(p)`` over a few fixed probes ``r`` (RMS
relative change of the precision's square root); for a mixture, the largest
over the components, and the largest change of a weight. Each costs a few
structured products (``O(its structure)``).

The standard errors come from batch means: the iterates are averaged over
batches of at least ``BATCH_DECORRELATIONS / beta`` steps (a step of size
``beta`` forgets the previous iterate at rate ``beta`` along the directions its
preconditioner fits), and the spread of consecutive batch means gives the
noise of one batch mean. A window is ``2 m`` batches; while it is stationary
but not yet precise, it doubles (first by halving the step size, which also
shrinks the constant step's bias, then by doubling the batches' length, so that
batch means stay uncorrelated however slowly the iterates mix; its second half
starts the next window), so the run spends its steps on averaging only once it
has stopped moving, and a transient leaves the average within two windows.
Where the posterior has a direction the step forgets slowly (a funnel's
scale: ~80 times slower than ``beta``), batch means of ``4 / beta`` steps are
correlated, their spread understates the noise and the halves keep differing
by more than it; a window that is still moving at a second check in a row,
with its drift not halved since the first, doubles its batches' length too.
"""

import math
import statistics
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["PARAMETER_FIELDS", "parameters", "with_parameters", "shift", "Window", "new_window", "add_batch", "batch_length", "error_quantile", "average"]

PARAMETER_FIELDS = ("loc", "factor", "log_weights")
"""The fields of an algorithm state that describe ``q`` (and are averaged)."""

# A batch is at least BATCH_DECORRELATIONS / beta steps; a window starts with
# 2 * MIN_HALF batches; halves that differ by DRIFT_Z standard errors are moving.
BATCH_DECORRELATIONS, MIN_HALF, DRIFT_Z, NUM_PROBES = 4.0, 4, 3.0, 8
# Once stationary, the step size halves down to MIN_STEP_SCALE of the user's: at
# a constant step the iterates' mean sits O(beta) off the fixed point (the
# noise's second-order effect), which averaging alone does not remove.
MIN_STEP_SCALE = 1.0 / 16
# A run may stop above the smallest step only with its standard error below
# EARLY_SE of the tolerance's.
EARLY_SE = 0.25
# At the smallest step the draws grow by powers of two, up to MAX_DRAW_SCALE
# times the user's (then the step shrinks), until the answer stops moving.
MAX_DRAW_SCALE = 32


def parameters(vi_state, group):
    """The fields of ``vi_state`` that describe ``q``: ``loc``, ``factor`` (and
    ``log_weights``), the factor as ``group.canonical`` represents it (so that
    averages of iterates do not depend on the factor's rotation)."""
    params = {name: getattr(vi_state, name) for name in PARAMETER_FIELDS if hasattr(vi_state, name)}
    canonical = group.canonical if params["loc"].ndim == 1 else jax.vmap(group.canonical)
    return {**params, "factor": canonical(params["factor"])}


def with_parameters(vi_state, params):
    """``vi_state`` with its ``q`` replaced by ``params`` (step count, backup and radius kept)."""
    return vi_state._replace(**params)


def _gaussian_shift(group, loc_a, factor_a, loc_b, factor_b, probes):
    """``(||B_b^T (mu_b - mu_a)||, RMS_r ||sym(B_a^-1 B_b - I) r||) / sqrt(p)``."""
    p = loc_a.shape[-1]
    mean = jnp.linalg.norm(group.rmatvec(factor_b, loc_b - loc_a)) / math.sqrt(p)

    def sym_change(r):
        forward = group.solve(factor_a, group.matvec(factor_b, r)) - r
        backward = group.rmatvec(factor_b, group.rsolve(factor_a, r)) - r
        return jnp.sum((0.5 * (forward + backward)) ** 2)

    scale = jnp.sqrt(jnp.mean(jax.vmap(sym_change)(probes)) / p)
    return mean, scale


def shift(group, a, b):
    """How far ``q`` moved from parameters ``a`` to ``b`` (:func:`parameters`
    dicts): ``(mean shift, scale shift, weight shift)``, each in the units of
    the module docstring (the weight shift is 0 for a single Gaussian)."""
    loc = a["loc"]
    probes = jax.random.rademacher(jax.random.PRNGKey(0), (NUM_PROBES, loc.shape[-1]), loc.dtype)
    if loc.ndim == 1:
        mean, scale = _gaussian_shift(group, a["loc"], a["factor"], b["loc"], b["factor"], probes)
        return mean, scale, jnp.zeros((), loc.dtype)
    per_component = jax.vmap(lambda la, fa, lb, fb: _gaussian_shift(group, la, fa, lb, fb, probes))
    mean, scale = per_component(a["loc"], a["factor"], b["loc"], b["factor"])
    weights = jnp.max(jnp.abs(jax.nn.softmax(a["log_weights"]) - jax.nn.softmax(b["log_weights"])))
    return jnp.max(mean), jnp.max(scale), weights


def batch_length(step_size, chunk, batch_scale=1):
    """Chunks of ``chunk`` steps per batch at step size ``step_size``: at least
    ``batch_scale * BATCH_DECORRELATIONS / beta`` steps."""
    return max(1, math.ceil(batch_scale * BATCH_DECORRELATIONS / (max(step_size, 1e-6) * chunk)))


class Window(NamedTuple):
    """The host-side bookkeeping of the stopping rule: ``half`` batches per
    half-window; ``first`` the completed first half's average (``None`` until
    complete); ``current`` the running average of the half being filled
    (``filled`` batches so far); ``last_batch`` the previous batch mean;
    ``noise`` the squared shifts of consecutive batch means (mean, scale,
    weight); ``step_scale`` the factor the run's step size is scaled by and
    ``first_scale`` the one the first half ran at; ``batch_scale`` the factor
    the batches' length is scaled by; ``last_drift`` the drift of the previous
    check if it found the window moving, else ``None``; ``draw_scale`` the
    factor the number of draws is scaled by; ``reference``, ``reference_se``
    and ``reference_scale`` the last precise answer at a larger ``beta / N``
    (:func:`_bias`), its standard error and its ``step_scale / draw_scale``
    (``None`` until there is one)."""

    half: int
    first: Any
    current: Any
    filled: int
    last_batch: Any
    noise: tuple
    step_scale: float = 1.0
    first_scale: float = 1.0
    batch_scale: int = 1
    last_drift: Any = None
    draw_scale: int = 1
    reference: Any = None
    reference_se: float = 0.0
    reference_scale: float = 0.0


def new_window():
    """An empty window of ``2 * MIN_HALF`` batches, at the full step size."""
    return Window(MIN_HALF, None, None, 0, None, ())


def average(a, b, weight_b):
    """``(1 - w) a + w b`` leaf by leaf (a running mean with ``w = 1 / n``)."""
    return jax.tree.map(lambda x, y: (1.0 - weight_b) * x + weight_b * y, a, b)


class Check(NamedTuple):
    """One decision of the stopping rule: the halves' ``drift`` and the
    answer's standard error ``se`` (each the largest of the mean, scale and
    weight parts), whether the window is ``stationary`` and the run
    ``converged``, and ``answer``: the window average."""

    drift: float
    se: float
    stationary: bool
    converged: bool
    answer: Any


def error_quantile(p):
    """``z_p``: the standard normal quantile at ``1 - 0.005 / p``, so that an
    error of ``z_p`` standard errors bounds all ``p`` coordinates' at 99%."""
    return statistics.NormalDist().inv_cdf(1.0 - 0.005 / p)


def add_batch(window, batch, shift_fn, tol, p, max_draw_scale=MAX_DRAW_SCALE):
    """Add one batch mean; returns ``(window, check)``, ``check`` ``None``
    until a window is complete. ``shift_fn(a, b)`` is :func:`shift` on the
    group, compiled; ``tol`` bounds every one of the ``p`` coordinates' errors
    (``z_p`` times the RMS standard error, :func:`error_quantile`); the draws
    grow to at most ``max_draw_scale`` times the first (1: fixed draws)."""
    noise = window.noise
    if window.last_batch is not None:
        noise = (noise + (tuple(float(s) ** 2 for s in shift_fn(window.last_batch, batch)),))[-4 * window.half:]
    filled = window.filled + 1
    current = batch if window.filled == 0 else average(window.current, batch, 1.0 / filled)
    window = window._replace(current=current, filled=filled, last_batch=batch, noise=noise)
    if filled < window.half:
        return window, None
    if window.first is None:
        return window._replace(first=current, current=None, filled=0), None
    return _check(window, shift_fn, tol / error_quantile(p), max_draw_scale)


def _check(window, shift_fn, rms_tol, max_draw_scale):
    """Compare the halves, with the noise of a batch mean from the second
    half's consecutive batches (the first may hold the end of a transient);
    once they agree, the answer's standard error pools the differences of the
    whole window since the batches last changed length or step size (5 or 7
    instead of 3 at ``MIN_HALF = 4``: on a simulated AR(1) stream at the step's
    own rate, 400 seeds, the answers beyond ``tol`` fell from 5.8% to 4.0%).

    Stationary: if not yet converged, the window doubles, by halving the step
    scale (batches of ``BATCH_DECORRELATIONS / beta`` steps get twice as long)
    down to ``MIN_STEP_SCALE`` and by doubling the batches' length after; a
    precise answer there that is biased (or has no reference yet) starts the
    next level afresh (:func:`_next_level`: more draws, or a smaller step once
    they are at ``max_draw_scale``) with the answer as its reference. It
    keeps its second half as the start of its new first half (dropping the
    older half, which may still hold the transient). Moving: it slides by a
    half, and doubles its batches' length if it was moving at the previous
    check too with a drift not halved since (slow mixing, not a transient)."""
    half = window.half
    half_se = [math.sqrt(v / half) for v in _batch_variance(window.noise[-(half - 1):])]
    drift = [float(d) for d in shift_fn(window.first, window.current)]
    stationary = all(d <= max(DRIFT_Z * math.sqrt(2.0) * s, rms_tol) for d, s in zip(drift, half_se))
    # Once the halves agree, the answer's error pools the whole window's differences (up to 2 half - 1: the
    # history holds only batches of one length and step size, add_batch), a steadier estimate than the second half's.
    pooled = window.noise[-(2 * half - 1):] if stationary else window.noise[-(half - 1):]
    se = max(math.sqrt(v / (2 * half)) for v in _batch_variance(pooled))
    # Converged: stationary, precise and unbiased: at the smallest step, an
    # answer that agrees with the level before's (_bias), or, right after a
    # halving, halves that agree to within the tolerance (the larger step's bias
    # is gone) and an error far below it (a fit with next to no Monte-Carlo
    # noise, as on an in-family target: where the iterates mix slowly, a short
    # window's batch means understate the noise, and halves agree by chance).
    halved = window.step_scale < window.first_scale
    at_floor = window.first_scale == window.step_scale <= MIN_STEP_SCALE
    early = halved and max(drift) <= rms_tol and se <= EARLY_SE * rms_tol
    precise = stationary and se <= rms_tol
    answer = average(window.first, window.current, 0.5)
    bias = _bias(window, answer, se, shift_fn) if precise and at_floor else math.inf
    converged = precise and (early or bias <= rms_tol)
    check = Check(max(drift), se, stationary, converged, answer)
    slide = dict(first=window.current, current=None, filled=0, first_scale=window.step_scale)
    restart = dict(noise=(), last_batch=None)  # batches of another step size or length: not comparable
    room = max(1, max_draw_scale // window.draw_scale)
    if stationary and at_floor and not converged and (precise or room > 1):
        return _next_level(window, answer, se, bias, rms_tol, room), check
    if stationary and halved and math.sqrt(2.0) * se <= rms_tol:  # the first half, at twice the step: a reference
        window = _with_reference(window, window.first, math.sqrt(2.0) * se, window.first_scale)
    if stationary:
        if window.step_scale > MIN_STEP_SCALE:
            return window._replace(step_scale=window.step_scale / 2, last_drift=None, **slide, **restart), check
        # The second half's batches count as half as many of twice the length.
        doubled = dict(first=None, filled=half // 2, first_scale=window.step_scale, last_drift=None)
        return window._replace(batch_scale=2 * window.batch_scale, **doubled, **restart), check
    slow = window.last_drift is not None and max(drift) > window.last_drift / 2
    batch_scale = 2 * window.batch_scale if slow else window.batch_scale
    window = window._replace(batch_scale=batch_scale, last_drift=None if slow else max(drift), **slide)
    return (window._replace(**restart) if slow else window), check


def _next_level(window, answer, se, bias, rms_tol, room):
    """A fresh window at the next level, with the precise ``answer`` as its
    reference: ``beta / N`` scaled down by a power of two (2 without a bias
    estimate, else enough to bring an ``O(beta / N)`` bias below ``rms_tol /
    2``), by more draws up to ``room`` times as many, by a smaller step beyond."""
    factor = 2 if math.isinf(bias) else 2 ** max(1, math.ceil(math.log2(2 * bias / rms_tol)))
    draws = min(factor, room)
    step_scale = window.step_scale * draws / factor
    if se <= rms_tol:
        window = _with_reference(window, answer, se, window.step_scale)
    return window._replace(
        draw_scale=window.draw_scale * draws, first=None, current=None, filled=0, first_scale=step_scale,
        step_scale=step_scale, last_drift=None, noise=(), last_batch=None,
    )


def _with_reference(window, answer, se, step_scale):
    """``window`` with ``answer`` (standard error ``se``, at ``step_scale`` and
    the window's draws) as the reference of the bias test."""
    return window._replace(reference=answer, reference_se=se, reference_scale=step_scale / window.draw_scale)


def _bias(window, answer, se, shift_fn):
    """The bias of ``answer`` (step scale ``s`` over draw scale ``n``), from
    the answer ``window.reference`` of the level before (``s_r / n_r``): with
    the fixed point ``c beta / N`` off, their shift ``d`` is ``c (s_r / n_r -
    s / n)``, so the bias is ``d (s / n) / (s_r / n_r - s / n)``; the shift's
    noise (both standard errors) is taken out first. Infinite without a
    reference: the last precise answer, of the level before or the first half
    of the window that halved the step into the smallest."""
    if window.reference is None:
        return math.inf
    noise = se**2 + window.reference_se**2
    level, before = window.step_scale / window.draw_scale, window.reference_scale
    if before <= level:
        return math.inf
    excess = max(math.sqrt(max(0.0, float(d) ** 2 - noise)) for d in shift_fn(window.reference, answer))
    return excess * level / (before - level)


def _batch_variance(squared_shifts):
    """The variance of one batch mean (mean, scale, weight parts) from squared
    shifts of consecutive batch means: ``E|shift|^2 = 2 var``."""
    return [sum(pair[i] for pair in squared_shifts) / (2 * len(squared_shifts)) for i in range(3)]
