"""Pure model code, one folder per capability; knows nothing of agents or cases."""
