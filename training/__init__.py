"""Training recipes, one folder per trainable model (`medagent train NAME`)."""
