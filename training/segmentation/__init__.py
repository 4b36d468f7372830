"""Segmentation recipe: trains a MONAI network and writes a MONAI bundle the imaging specialist loads."""
