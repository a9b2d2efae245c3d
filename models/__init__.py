"""Small NumPyro model zoo with shipped data and NUTS reference posteriors."""
