"""Mesh, sharded state, optimizer, checkpoints, metrics and the train loop."""
