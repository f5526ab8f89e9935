"""The integer-dot ceiling of one core, next to what the cpu backend's quantized linears
reach: how many `vpdpwssd` (int16 pairs, 32 multiply-adds on 512-bit registers) one core
retires per second with 8 independent accumulators, from registers and with one
L1-resident 512-bit load per instruction (the row dots' shape: activations from memory).

    python bench/int_dot_peak.py            # AVX512-VNNI hosts only; prints JSON

Compare `GMAC/s per core` with a linear's rate on one thread (NUMBA_NUM_THREADS=1).
"""
import json
import sys
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from edgeformer.backends.cpu import isa

I16, I32 = ir.IntType(16), ir.IntType(32)
V32W, V16I = ir.VectorType(I16, 32), ir.VectorType(I32, 16)
NACC = 8


def _kernel(from_memory: bool):
    @intrinsic
    def kern(typingctx, n, buf):
        def codegen(context, builder, sig, args):
            n, buf = args
            ptr = context.make_array(sig.args[1])(context, builder, buf).data
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(V16I, [V16I, V32W, V32W]),
                                                "llvm.x86.avx512.vpdpwssd.512")
            accs = [cgutils.alloca_once_value(builder, ir.Constant(V16I, [i] * 16)) for i in range(NACC)]
            a, reg = ir.Constant(V32W, [3] * 32), ir.Constant(V32W, [5] * 32)
            with cgutils.for_range(builder, n) as loop:
                i = loop.index
                base = builder.mul(builder.and_(i, ir.Constant(i.type, 31)), ir.Constant(i.type, 32 * NACC))
                for j, acc in enumerate(accs):
                    if from_memory:     # a different 64-byte line each time, 16 KiB in all (L1)
                        p = builder.gep(ptr, [builder.add(base, ir.Constant(base.type, 32 * j))])
                        b = builder.load(builder.bitcast(p, V32W.as_pointer()), align=2)
                    else:
                        b = reg
                    builder.store(builder.call(fn, [builder.load(acc), a, b]), acc)
            s = builder.load(accs[0])
            for acc in accs[1:]:
                s = builder.add(s, builder.load(acc))
            return builder.extract_element(s, ir.Constant(I32, 0))
        return types.int32(n, buf), codegen

    @njit
    def run(n, buf):
        return kern(n, buf)
    return run


def main() -> int:
    if isa.compiled_isa() != "avx512" or not isa.host_features().get("avx512vnni"):
        print(json.dumps({"skipped": "needs AVX512-VNNI"}))
        return 0
    buf = np.zeros(1 << 16, np.int16)
    out = {}
    for name, mem in (("registers", False), ("l1_load_each", True)):
        f = _kernel(mem)
        f(10, buf)
        n, rates = 5_000_000, []
        for _ in range(5):
            t = time.perf_counter()
            f(n, buf)
            rates.append(n * NACC / (time.perf_counter() - t))
        r = float(np.median(rates))
        out[name] = {"vpdpwssd_per_s": r, "gmac_s_per_core": r * 32 / 1e9}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
