"""KEP pathology model: architecture, checkpoint loading, preprocessing and zero-shot classification."""
