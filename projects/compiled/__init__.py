"""Tracr (p2): RASP programs compiled into weights of superpose.nn transformers.

``programs`` (the library programs by name, for the CLI and the benchmark), ``compile`` (the CLI:
compile, save, explain, run), ``bench`` (compile time, ours vs tracr's), ``tracr_bridge`` (our RASP
→ tracr's RASP, to use tracr-pypi as an offline oracle when it is installed).
"""
