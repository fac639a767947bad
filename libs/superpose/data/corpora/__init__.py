"""Corpus building blocks: downloads (``fetch``), cleaning/splitting/de-duplication (``text``) and
the per-corpus extractors (``sources``). The command line is ``python -m superpose.data.corpus``."""
