"""superpose: shared libraries for studying superposition in transformers (JAX / Flax NNX)."""

__version__ = "0.1.0"
