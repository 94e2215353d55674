"""Benchmark and reliability tooling: how fast the package serves, and what it survives.

    python -m benchmarks.bench          # in-process, TorchServe and LitServe figures, one run
    python -m benchmarks.reliability    # load, hostile input, worker kill, restart, security
    python -m benchmarks.report FILE    # a bench.json as Markdown (docs/performance.md)
    python -m benchmarks.gpu_proof      # the handler on CUDA against the CPU, speed, training

Modules: servers (TorchServe and LitServe launchers), load (wrk and JIT-aware warm-up),
inprocess (the handler in a real TorchServe Context, the machine's ceiling), report
(targets and tables), litserve_app (the peer), traffic, hostile, faults and security (the
reliability checks), make_samples (the sample images), gpu_proof with device_parity and
device_speed (one run on a GPU machine), gpu_bundle.sh (what that machine lacks).
"""
