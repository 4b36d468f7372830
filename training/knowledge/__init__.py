"""Recipe: contrastive fine-tuning of the entity-linking embedder on HPO synonyms and definitions."""
