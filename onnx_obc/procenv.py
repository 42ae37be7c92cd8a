"""Process-wide settings the command line makes on import, before numpy loads (the package
loads it lazily, __init__.py); never over the user's own. Library code does not import this:
a program that calls convert() keeps its own settings.

BLAS_SPIN: OpenBLAS (numpy's wheels) keeps its threads spinning for 2^28 cycles (~0.1 s)
after each call, waiting for the next. A run that alternates onnxruntime with numpy (the
capture: a run, then its Hessians and histograms; the verification) so gave onnxruntime's
threads a core to share with them: ddddocr's recognizer's capture session ran 96 samples in
0.56 s alone, 0.88 s with an X X^T between runs (0.56-0.60 s at 2^20). 2^20 cycles (~0.4 ms)
still spins between the solvers' back-to-back calls (OBQ, ExactOBS and GPTQ layer times
unchanged) and sleeps before the next run. OpenBLAS reads it once, when it loads.
"""

import os

BLAS_SPIN = "20"  # OPENBLAS_THREAD_TIMEOUT: log2 of the cycles its threads spin

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", BLAS_SPIN)
