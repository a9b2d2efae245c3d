"""``StructuredGaussian``: a NumPyro autoguide ``q(z) = N(mu, (B B^T)^-1)`` over
the flattened unconstrained latent vector, with ``B`` in a matrix Lie group."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.initialization import init_to_uniform

from ngvi import vi
from ngvi.groups import Dense
from ngvi.guides.distribution import StructuredNormal
from ngvi.target import nonfinite_sites

__all__ = ["StructuredGaussian"]


def check_continuous_latents(prototype_trace):
    """Raise ``ValueError`` naming the first discrete latent site."""
    for name, site in prototype_trace.items():
        if site["type"] == "sample" and not site["is_observed"] and site["fn"].support.is_discrete:
            raise ValueError(
                f"Latent site '{name}' is discrete ({type(site['fn']).__name__}); ngvi fits continuous "
                "latent variables only: marginalise it out (e.g. with numpyro.infer.config_enumerate "
                "and a sum over its values) or observe it."
            )


def subsampled_plates(prototype_trace):
    """``{name: (size, subsample_size)}`` of the plates of ``prototype_trace``
    that subsample their data; ``ValueError`` naming the first plate whose
    ``subsample_size`` exceeds its size (NumPyro would warn and use the whole
    plate unscaled)."""
    plates = {}
    for name, site in prototype_trace.items():
        if site["type"] == "plate":
            size, subsample_size = site["args"]
            if subsample_size is not None and subsample_size > size:
                raise ValueError(
                    f"Plate '{name}' has subsample_size={subsample_size}, larger than its size {size}: "
                    f"pass a subsample_size of at most {size} (or None for the whole plate)."
                )
            if subsample_size is not None and subsample_size < size:
                plates[name] = (size, subsample_size)
    return plates


class StructuredGaussian(AutoContinuous):
    """Gaussian autoguide with structured precision ``S = B B^T``, ``B`` in ``group``.

    Parameters are ``{prefix}_loc`` (``mu``) and one ``{prefix}_factor_<field>``
    per array of the group's compact storage of ``B``; ``B`` starts at
    ``I / init_scale`` (so the initial standard deviations are ``init_scale``).
    Works with :class:`ngvi.NGVI` (natural gradients) and with stock
    ``numpyro.infer.SVI`` (Euclidean gradients).

    :param model: a NumPyro model with continuous latent sites.
    :param group: a :mod:`ngvi.groups` group (default :class:`~ngvi.groups.Dense`).
    :param init_loc_fn: a per-site NumPyro initialisation strategy.
    :param init_scale: initial standard deviation in the unconstrained space.

    Once set up, ``subsampled_plates``: ``{name: (size, subsample_size)}`` of
    the model's plates that subsample their data (:func:`subsampled_plates`).
    """

    def __init__(self, model, *, group=None, prefix="auto", init_loc_fn=init_to_uniform, init_scale=0.1):
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}.")
        self.group = Dense() if group is None else group
        self._init_scale = init_scale
        self.subsampled_plates = {}
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)

    @property
    def subsample_fraction(self):
        """The smallest ``subsample_size / size`` of the model's plates (1 without data subsampling)."""
        return min((n / size for size, n in self.subsampled_plates.values()), default=1.0)

    def _setup_prototype(self, *args, **kwargs):
        # Latents start where init_to_uniform puts them (as NumPyro's own set-up
        # does), so that sites without a sampler (ImproperUniform) trace too.
        seeded = numpyro.handlers.substitute(numpyro.handlers.seed(self.model, 0), substitute_fn=init_to_uniform)
        with numpyro.handlers.block():
            trace = numpyro.handlers.trace(seeded).get_trace(*args, **kwargs)
        check_continuous_latents(trace)
        self.subsampled_plates = subsampled_plates(trace)
        try:
            super()._setup_prototype(*args, **kwargs)
        except RuntimeError as err:  # NumPyro found no point with a finite log density
            bad = ", ".join(repr(name) for name in nonfinite_sites(trace)) or "(none found at a prior draw)"
            raise ValueError(
                f"The model's log density is not finite at any initial point tried; non-finite sites: {bad}. "
                "Check the observed data against the supports of these sites."
            ) from err
        try:
            self.group.check(self.latent_dim)
        except ValueError:
            self.prototype_trace = None  # so that the next call sets up again and raises again
            raise
        init_factor = self.group.init(self.latent_dim, self._init_scale, jnp.result_type(self._init_latent))
        paths, self._factor_treedef = jax.tree_util.tree_flatten_with_path(init_factor)
        self._factor_init = {self._factor_name(path): leaf for path, leaf in paths}

    def _factor_name(self, path):
        return "_".join([f"{self.prefix}_factor"] + [str(key.name) for key in path])

    def _get_posterior(self):
        loc = numpyro.param(f"{self.prefix}_loc", self._init_latent)
        leaves = [numpyro.param(name, init) for name, init in self._factor_init.items()]
        return StructuredNormal(loc, jax.tree.unflatten(self._factor_treedef, leaves), self.group)

    # --- the algorithm that fits the guide, and its state -------------------
    def algorithm(self, potential_fn, **settings):
        """:func:`ngvi.vi.structured_gaussian` on ``potential_fn`` with this
        guide's group (``settings`` as that function takes them)."""
        return vi.structured_gaussian(potential_fn, group=self.group, **settings)

    def init_state(self, loc=None, factor=None):
        """The algorithm's initial state (``init_loc_fn``, ``init_scale``), or one
        at ``(loc, factor)``; needs the prototype (run the guide once)."""
        loc = self._init_latent if loc is None else loc
        return vi.structured_gaussian.init(loc, self.group, self._init_scale, factor)

    def params_from_state(self, state):
        """The param dict of an algorithm state."""
        return self.pack_params(state.loc, state.factor)

    # --- the bridge between NumPyro's param dict and (mu, B) ------------------
    def unpack_params(self, params):
        """``(mu, B)`` from a param dict."""
        leaves = [params[name] for name in self._factor_init]
        return params[f"{self.prefix}_loc"], jax.tree.unflatten(self._factor_treedef, leaves)

    def pack_params(self, loc, factor):
        """The param dict of ``(mu, B)``."""
        leaves = jax.tree.leaves(factor)
        return {f"{self.prefix}_loc": loc, **dict(zip(self._factor_init, leaves))}

    # --- the AutoContinuous API ----------------------------------------------
    def get_posterior(self, params):
        """The Gaussian over the flat unconstrained latent vector."""
        return StructuredNormal(*self.unpack_params(params), self.group)

    def median(self, params):
        return self._unpack_and_constrain(self.unpack_params(params)[0], params)

    def quantiles(self, params, quantiles):
        posterior = self.get_posterior(params)
        scale = jnp.sqrt(posterior.variance)
        latent = dist.Normal(posterior.loc, scale).icdf(jnp.asarray(quantiles)[..., None])
        return self._unpack_and_constrain(latent, params)
