"""Compiled kernels of relprop, one subpackage per backend.

``relprop.kernels.cpu`` holds the Numba kernels. A GPU backend (CuPy) will sit beside it in
``relprop.kernels.gpu`` with the same function names and signatures. Only
``relprop.core.backend`` imports a backend; the rest of relprop goes through it.
"""
