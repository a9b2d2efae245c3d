"""Every zoo model's guide with NumPyro's own tools: Predictive, ArviZ, stock SVI."""

import jax
import numpy as np
import numpyro
import pytest
from numpyro import handlers
from numpyro.infer import SVI, Predictive, RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from ngvi import NGVI, to_inference_data
from test_zoo import WITH_REFERENCE
from test_zoo_fits import default_guide

KEY = jax.random.PRNGKey(0)

ELBOS = [Trace_ELBO(), TraceMeanField_ELBO(), RenyiELBO(alpha=0.5, num_particles=2), TraceGraph_ELBO()]
# A GLM, a hierarchical model, a GP (a Cholesky inside) and a state-space model.
ALL_ELBOS = {"logistic_regression", "eight_schools", "gp_classification", "local_level"}


@pytest.mark.slow
@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_predictive_inference_data_and_stock_svi_on_every_model(name):
    """The guide of every model, at its default start, works with NumPyro's own
    tools: ``Predictive`` draws finite observed sites, ``to_inference_data``
    gives finite posterior draws and a Pareto k (not NaN), and one SVI step
    (Adam) with Trace_ELBO gives a finite loss; on the models of
    ``ALL_ELBOS`` also with TraceMeanField_ELBO, RenyiELBO and TraceGraph_ELBO
    (which read the guide's reparameterisation, a property of the guide, not of
    the model)."""
    module, data, guide = default_guide(name)
    NGVI(module.model, guide).init(KEY, **data)
    params = guide.params_from_state(guide.init_state())
    observed = [k for k, site in handlers.trace(handlers.seed(module.model, 0)).get_trace(**data).items()
                if site["type"] == "sample" and site["is_observed"]]
    predictions = Predictive(module.model, guide=guide, params=params, num_samples=20)(KEY, **data)
    assert all(np.all(np.isfinite(predictions[k])) for k in observed)
    idata = to_inference_data(guide, params, num_samples=200, rng_key=KEY, **data)
    assert all(np.all(np.isfinite(idata.posterior[k].values)) for k in idata.posterior.data_vars)
    assert not np.isnan(idata.attrs["pareto_k"])  # inf is a valid verdict on an unfitted guide
    for elbo in ELBOS if name in ALL_ELBOS else ELBOS[:1]:
        svi = SVI(module.model, guide, numpyro.optim.Adam(1e-3), elbo)
        state, loss = jax.jit(lambda state: svi.update(state, **data))(svi.init(KEY, **data))  # sizes stay static
        assert np.isfinite(loss), type(elbo).__name__
        assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(svi.get_params(state))), type(elbo).__name__
