"""Benchmark and reliability tooling: how fast the package serves, and what it survives.

    python -m benchmarks.bench            # in-process, TorchServe, the kserve runtime and
                                          # LitServe figures, one run
    python -m benchmarks.reliability      # load, hostile input, worker kill, update, restart,
                                          # security, gRPC; --runtime torchserve kserve
    python -m benchmarks.report FILE      # a bench.json as Markdown (docs/performance.md)
    python -m benchmarks.explain_quality  # how faithful and how fast each explanation setting is
    python -m benchmarks.profile_served   # where a served request's time goes (py-spy, JFR)
    python -m benchmarks.heatmap_gallery  # every sample's heatmap in one picture
    python -m benchmarks.gpu_proof        # the serving core on CUDA against the CPU, speed,
                                          # one training epoch: one run on a GPU machine

Modules: cli (each command's arguments and archived variants), load (wrk and JIT-aware
warm-up), inprocess (the handler without a server, the machine's ceiling), report (targets
and tables), litserve_app (the peer), grpc_load (OIP gRPC load with stock tritonclient),
traffic, hostile, faults and update (the reliability checks),
make_samples (the sample images), gpu_proof (with --make-bundle: what a GPU machine lacks).

They start servers, build handler contexts and send the hostile and security corpora with
the tests' own harness, tests.support.
"""
