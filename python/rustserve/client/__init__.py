"""MindSpore-Serving-compatible gRPC client: `Client(address, servable, method).infer(instances)`.

Drop-in for `mindspore_serving.client` (same names, arguments, value conversions, result shapes and error texts),
plus `raise_on_error=True` to get `ClientError` exceptions for transport failures instead of `{"error": ...}` dicts,
and `Client.close()` / `with Client(...) as client:`. Depends only on grpcio and numpy.

Example:
    >>> import numpy as np
    >>> from rustserve.client import Client
    >>> client = Client("localhost:5500", "add", "add_common")
    >>> x = np.ones((2, 2), np.float32)
    >>> client.infer([{"x1": x, "x2": x}])  # doctest: +SKIP
    [{'y': array([[2., 2.], [2., 2.]], dtype=float32)}]
"""

from ._client import (
    Client,
    ClientError,
    ClientGrpcAsyncError,
    ClientGrpcAsyncResult,
    InferResult,
    SSLConfig,
)

__all__ = [
    "Client",
    "ClientError",
    "ClientGrpcAsyncError",
    "ClientGrpcAsyncResult",
    "InferResult",
    "SSLConfig",
]
