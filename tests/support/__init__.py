"""What the tests share with `python -m benchmarks.*`: servers started as users start them
(servers), a TorchServe worker's context without a server (handler_context), the hostile
request corpus (hostile) and the security probes (security)."""
