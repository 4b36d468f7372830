"""Training recipe for the KEP pathology model (stage 1 knowledge encoder, stage 2 image-text pretraining)."""
