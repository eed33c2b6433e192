"""The prefill matmul shapes of the bench model on OpenBLAS (through numpy), the peer of
`cargo bench -p helixflow-benches --bench linalg -- prefill_m512` in docs/BENCHMARKS.md.

    python3 -m venv /tmp/npvenv && /tmp/npvenv/bin/pip install numpy threadpoolctl
    OPENBLAS_CORETYPE=SkylakeX /tmp/npvenv/bin/python benches/peers/openblas_gemm.py

float32 `x[512, k] @ w[n, k].T`, 1 and 2 threads, best of 5 rounds of 10 calls, GFLOP/s.
OpenBLAS picks its kernels by CPU; on CPUs it does not know (Zen 5 in numpy 2.4.6's build)
it falls back to Haswell (AVX2) ones unless OPENBLAS_CORETYPE names others.
"""
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

M = 512
SHAPES = [(1536, 1024), (1024, 1024), (5632, 1024), (1024, 2816)]

print(np.__version__, [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()])
for threads in (1, 2):
    with threadpool_limits(threads):
        for n, k in SHAPES:
            x = np.random.rand(M, k).astype(np.float32)
            w = np.random.rand(n, k).astype(np.float32)
            for _ in range(3):
                x @ w.T
            best = float("inf")
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(10):
                    x @ w.T
                best = min(best, (time.perf_counter() - t) / 10)
            print(f"{threads}t {n}x{k}: {2 * M * n * k / best / 1e9:.1f} GFLOP/s")
