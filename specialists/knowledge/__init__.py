"""Knowledge graph: HPO phenotypes, rare-disease annotations, ICD-10-CM; entity linking and ranking."""
