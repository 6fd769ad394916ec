"""How a model is built and run: checkpoints read, weights packed, the forward passes, the families, the
machine they run on, and the models a server can serve."""
