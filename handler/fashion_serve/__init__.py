"""fashion-serve's serving core and its two runtimes.

The core (contract, errors, options, image, request, oip, predict, explain, ig, memory,
settings, metrics, workers, service) imports no server: `service.FashionService` answers a
batch of `service.Request`s. The runtimes are thin adapters over it:
torchserve_runtime (TorchServe's handler API) and kserve_runtime (KServe's Python model
server, with its supervisor kserve_server, its token and size checks kserve_gates and its
Prometheus metrics kserve_metrics). docs/deployment.md says how to pick one.
"""
