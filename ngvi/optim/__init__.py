"""Optimisation with the structured natural-gradient step (MATH.md sec. 7), on a
plain function of a flat vector: second-order minimisation from gradients and
Hessian-vector products at the mean, and evolution strategies from values only.

    from ngvi import optim, groups
    opt = optim.structured_newton(loss_fn, group=groups.BlockLowerTriangular(5))
    state = opt.init(params)
    result = opt.run(rng_key, state, 300)

    es = optim.structured_es(f, group=groups.BlockUpperTriangular(10))
    state, info = es.run(rng_key, es.init(mean, scale=1.0), 1000)

``optim.newton`` and ``optim.es`` hold the pure pieces (``init``, ``update`` /
``step``, ``run``, the state and info tuples).
"""

from ngvi.optim import es, newton
from ngvi.optim.es import ESInfo, ESState, EvolutionStrategy, structured_es
from ngvi.optim.newton import StructuredNewton, StructuredNewtonInfo, StructuredNewtonState, structured_newton

__all__ = [
    "structured_newton", "StructuredNewton", "StructuredNewtonState", "StructuredNewtonInfo", "newton",
    "structured_es", "ESState", "ESInfo", "EvolutionStrategy", "es",
]
