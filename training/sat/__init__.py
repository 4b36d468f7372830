"""SAT recipe: trains the text-prompted 3D segmentation network and saves what specialists/sat/load.py reads."""
