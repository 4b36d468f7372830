"""RadFM: radiology visual question answering on 2D images and 3D volumes (model, loader, preprocessing)."""
