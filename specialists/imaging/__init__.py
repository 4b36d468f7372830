"""Radiology imaging: quantitative CT without weights, MONAI bundle runner, slice figures."""
