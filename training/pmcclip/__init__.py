"""Training recipe for PMC-CLIP: contrastive image-caption pretraining (open_clip's ClipLoss) plus caption MLM."""
