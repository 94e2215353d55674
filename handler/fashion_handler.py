"""What TorchServe loads (`torch-model-archiver --handler`): the adapter lives in
fashion_serve.torchserve_runtime, packed beside this file as a folder (scripts/archive.sh).
TorchServe's loader wants exactly one class defined in this module, hence the subclass."""

from fashion_serve.torchserve_runtime import TorchServeHandler


class FashionHandler(TorchServeHandler):
    pass
