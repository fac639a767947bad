"""Mesh, sharded state, optimizer, checkpoints, metrics, the train loop and a gradient-flow check
(``gradcheck``)."""
