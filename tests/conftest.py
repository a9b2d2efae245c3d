import jax

# The brute-force checks compare against autodiff Fisher matrices to ~1e-10.
jax.config.update("jax_enable_x64", True)
