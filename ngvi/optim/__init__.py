"""Optimisation with the structured natural-gradient step (MATH.md sec. 7), on a
plain loss over a flat vector:

    from ngvi import optim, groups
    opt = optim.structured_newton(loss_fn, group=groups.BlockLowerTriangular(5))
    state = opt.init(params)
    result = opt.run(rng_key, state, 300)

``optim.newton`` holds the pure pieces (``init``, ``update``, ``run``, the state
and info tuples).
"""

from ngvi.optim import newton
from ngvi.optim.newton import StructuredNewton, StructuredNewtonInfo, StructuredNewtonState, structured_newton

__all__ = ["structured_newton", "StructuredNewton", "StructuredNewtonState", "StructuredNewtonInfo", "newton"]
