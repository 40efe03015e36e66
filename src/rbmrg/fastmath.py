"""Arithmetic for the numba kernels: exp(x) for x <= 0 in a form LLVM vectorises, and a fused
multiply-add.

A loop that calls ``np.exp`` compiles to one libm call per element: numba's LLVM has no vector math
library (numba -s: "SVML Operational: False"), so such loops stay scalar, about 6 ns per element on
this project's CPU. :func:`exp_nonpositive` is plain arithmetic instead (no call, no branch), so a
loop over it runs in SIMD lanes, about 0.85 ns per element, and is as accurate:

    x = n ln 2 + r,   n = round(x / ln 2),   |r| <= ln 2 / 2
    exp(x) = 2^n exp(r),  exp(r) by its Taylor polynomial of degree 13 (remainder < 5e-18 relative),

with ln 2 split in two parts (Cody and Waite) so that r is exact to rounding, and 2^n written
straight into the exponent bits. Measured against libm over 10^6 arguments in [-40, 0]: at most
1 ulp apart. Arguments below -708 give exp(-708) (about 3e-308) instead of an underflow: for the
kernels' uses (sigmoid(2x) = 1 / (1 + exp(-2|x|)), tanh |x| = (1 - e) / (1 + e), log 2cosh) the
difference is far below one rounding.
"""

from __future__ import annotations

import math

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_LOG2_E = 1.4426950408889634
# ln 2 = _LN2_HI + _LN2_LO, _LN2_HI with trailing zero bits so that n * _LN2_HI is exact.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
#: The smallest argument taken as it is; smaller ones are raised to it (2^n stays a normal number).
LOWEST = -708.0


@intrinsic
def _bits_as_float64(typingctx, bits):
    """Reinterpret an int64 as the float64 with the same bits (no conversion, no instruction)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


#: 1 / i! for i <= 13, the Taylor coefficients of exp.
_INVERSE_FACTORIALS = tuple(1.0 / math.factorial(i) for i in range(14))


@njit(cache=True, inline="always", fastmath={"contract"})
def _exp(x, degree):
    """exp(max(x, LOWEST)) through the Taylor polynomial of exp(r) of ``degree`` (see the module
    doc); ``degree`` is a constant at every call, so the loop unrolls into Horner's rule."""
    x = max(float(x), LOWEST)
    n = math.floor(x * _LOG2_E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = _INVERSE_FACTORIALS[degree]
    for i in range(degree - 1, -1, -1):
        p = p * r + _INVERSE_FACTORIALS[i]
    return p * _bits_as_float64((int(n) + 1023) << 52)


@njit(cache=True, inline="always")
def exp_nonpositive(x):
    """exp(x) in float64 for x <= 0 (within 1 ulp of libm): degree 13, see the module doc."""
    return _exp(x, 13)


@njit(cache=True, inline="always")
def exp_nonpositive_float32(x):
    """exp(x) in float64 for x <= 0 to float32 accuracy: the Taylor polynomial of degree 7
    (remainder < 5.3e-9 relative, below the 6e-8 of one float32 rounding); about half the
    arithmetic of :func:`exp_nonpositive`. For Gibbs probabilities of float32 fields, whose own
    rounding is the larger error."""
    return _exp(x, 7)


@intrinsic
def fma(typingctx, a, b, c):
    """a b + c with one rounding (LLVM's fma), in the type of ``a``: what torch's vectorised CPU
    kernels compute for ``lerp`` and ``addcmul`` on a CPU with FMA (x86-64 since Haswell)."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen
