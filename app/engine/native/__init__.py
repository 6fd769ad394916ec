"""The native kernels: tokenwire's own CPU forward pass for Llama-family and Gemma 2/3 models (csrc/forward.c).

build.py compiles them, library.py loads the build this CPU runs, weights.py packs matrices into
their layout (exact Q4/Q8 grids where a checkpoint allows), model.py is the forward pass the runner
calls, backend.py decides at load whether a model runs on them.
"""
