"""gRPC client with MindSpore Serving's `mindspore_serving.client` API and behaviour.

One grpcio channel and one cached `unary_unary` multicallable per `Client`; requests and replies go through the
hand-written codec in `_codec.py` (raw bytes on the channel, no per-call message objects).
"""

from __future__ import annotations

from typing import Any

import grpc

from ._codec import decode_reply, encode_request, encode_servable_spec

__all__ = [
    "Client",
    "ClientError",
    "ClientGrpcAsyncError",
    "ClientGrpcAsyncResult",
    "InferResult",
    "SSLConfig",
]

#: What `Client.infer` and the async `.result()` return: one dict per instance, or `{"error": msg}` for the whole
#: request.
InferResult = list[dict[str, Any]] | dict[str, Any]

_PREDICT_METHOD = "/mindspore.serving.proto.MSService/Predict"
_MAX_MESSAGE_BYTES = 512 * 1024 * 1024  # MindSpore's client: 512 MB both ways
_UINT64_MAX = (1 << 64) - 1


class ClientError(RuntimeError):
    """A gRPC transport failure (server unreachable, message too large, ...), raised with `raise_on_error=True`.

    The message is the text MindSpore's client returns as `{"error": ...}`: `"Grpc Error, (14, 'unavailable'), ..."`.

    Attributes:
        code: The gRPC status code.
        details: The status details reported by grpcio.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(_grpc_error_text(code, details))
        self.code = code
        self.details = details

    def __reduce__(self) -> tuple[type[ClientError], tuple[grpc.StatusCode, str]]:
        return (type(self), (self.code, self.details))


def _grpc_error_text(code: grpc.StatusCode, details: str | None) -> str:
    # StatusCode.value is a tuple such as (14, 'unavailable'): MindSpore formats it as is.
    return f"Grpc Error, {code.value}, {details}"


def _client_error(exc: grpc.RpcError) -> ClientError:
    if isinstance(exc, grpc.Call):
        return ClientError(exc.code(), exc.details() or "")
    return ClientError(grpc.StatusCode.UNKNOWN, str(exc))


def _check_str(arg_name: str, value: object) -> None:
    if not isinstance(value, str):
        raise RuntimeError(f"Parameter '{arg_name}' should be str, but actually {type(value)}")
    if not value:
        raise RuntimeError(f"Parameter '{arg_name}' should not be empty str")


def _check_int(arg_name: str, value: object, minimum: int, maximum: int) -> None:
    if not isinstance(value, int):
        raise RuntimeError(f"Parameter '{arg_name}' should be int, but actually {type(value)}")
    if value < minimum:
        raise RuntimeError(f"Parameter '{arg_name}' should be >= {minimum}")
    if value > maximum:
        raise RuntimeError(f"Parameter '{arg_name}' should be <= {maximum}")


def _read_file(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class SSLConfig:
    """TLS settings of a `Client`: PEM file paths, read when the `Client` is created.

    Args:
        certificate: Client certificate chain (mutual TLS), or None. Must come with `private_key`.
        private_key: Private key of `certificate`, or None. Must come with `certificate`.
        custom_ca: Root certificates to verify the server with, or None for gRPC's default roots.

    Raises:
        RuntimeError: A path is not a non-empty str.

    Example:
        >>> ssl = SSLConfig(custom_ca="ca.pem")
        >>> client = Client("localhost:5500", "add", "add_common", ssl_config=ssl)  # doctest: +SKIP
    """

    def __init__(self, certificate: str | None = None, private_key: str | None = None, custom_ca: str | None = None):
        if certificate is not None:
            _check_str("certificate", certificate)
        if private_key is not None:
            _check_str("private_key", private_key)
        if custom_ca is not None:
            _check_str("custom_ca", custom_ca)
        self.certificate = certificate
        self.private_key = private_key
        self.custom_ca = custom_ca


class ClientGrpcAsyncResult:
    """Pending result of `Client.infer_async`; `result()` waits for the reply and parses it like `Client.infer`."""

    def __init__(self, result_future: grpc.Future, raise_on_error: bool = False) -> None:
        self.result_future = result_future
        self._raise_on_error = raise_on_error

    def result(self) -> InferResult:
        """Waits for the reply and parses it.

        Returns:
            The same as `Client.infer`: a list with one dict per instance, or `{"error": msg}`.

        Raises:
            ClientError: A transport failure, with `raise_on_error=True` (otherwise returned as `{"error": ...}`).
            RuntimeError: The reply's error list does not match its instances.
        """
        try:
            reply: bytes = self.result_future.result()
        except grpc.RpcError as exc:
            error = _client_error(exc)
            if self._raise_on_error:
                raise error from exc
            return {"error": str(error)}
        return decode_reply(reply)


class ClientGrpcAsyncError:
    """Result of an `infer_async` call that failed before it was sent; `result()` returns the error dict."""

    def __init__(self, result_error: dict[str, str]) -> None:
        self.result_error = result_error

    def result(self) -> dict[str, str]:
        """Returns the `{"error": "Grpc Error, ..."}` dict."""
        return self.result_error


class Client:
    """Client of a servable method over gRPC (`MSService.Predict`), compatible with `mindspore_serving.client.Client`.

    Args:
        address: `host:port` or `unix:<path>`.
        servable_name: Servable name.
        method_name: Method of the servable.
        version_number: Servable version; 0 (default) means the newest one being served.
        ssl_config: TLS settings; None (default) for a plaintext channel.
        raise_on_error: rustserve extension. False (default, MindSpore's behaviour): a transport failure is returned
            as `{"error": "Grpc Error, (<code>, '<name>'), <details>"}` (MindSpore also prints it; rustserve does
            not). True: it raises `ClientError` instead.

    Raises:
        RuntimeError: An argument has the wrong type or value (MindSpore's texts), or `ssl_config` gives only one of
            certificate and private key.
        OSError: An `ssl_config` file cannot be read.

    Example:
        >>> import numpy as np
        >>> client = Client("localhost:5500", "add", "add_common")
        >>> x = np.ones((2, 2), np.float32)
        >>> client.infer({"x1": x, "x2": x})  # doctest: +SKIP
        [{'y': array([[2., 2.], [2., 2.]], dtype=float32)}]
    """

    def __init__(
        self,
        address: str,
        servable_name: str,
        method_name: str,
        version_number: int = 0,
        ssl_config: SSLConfig | None = None,
        *,
        raise_on_error: bool = False,
    ) -> None:
        _check_str("address", address)
        _check_str("servable_name", servable_name)
        _check_str("method_name", method_name)
        _check_int("version_number", version_number, 0, _UINT64_MAX)

        self.address = address
        self.servable_name = servable_name
        self.method_name = method_name
        self.version_number = version_number
        self.raise_on_error = raise_on_error

        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ]
        if ssl_config is not None:
            if not isinstance(ssl_config, SSLConfig):
                raise RuntimeError("The type of ssl_config should be type of SSLConfig")
            certificate = _read_file(ssl_config.certificate)
            private_key = _read_file(ssl_config.private_key)
            custom_ca = _read_file(ssl_config.custom_ca)
            if (certificate is None) != (private_key is None):
                raise RuntimeError("The certificate and private_key should be passed at the same time")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=custom_ca, private_key=private_key, certificate_chain=certificate
            )
            self.channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)

        # NOTE: one multicallable per client (building one per call is what betterproto2's stubs do, and costs);
        # bytes in and out, the codec does the rest. _registered_method=True is what grpcio's generated stubs pass:
        # the method path is registered once with the channel instead of per call.
        self._predict: grpc.UnaryUnaryMultiCallable = self.channel.unary_unary(
            _PREDICT_METHOD, request_serializer=None, response_deserializer=None, _registered_method=True
        )
        self._servable_spec = encode_servable_spec(servable_name, method_name, version_number)

    def infer(self, instances: dict[str, Any] | list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> InferResult:
        """Sends one request and returns the parsed reply.

        Args:
            instances: One instance (a dict, input name -> value) or a list/tuple of them. Values: numpy arrays and
                numpy scalars (their dtype and shape), Python bool/int/float (shape [1] of bool/int64/float64), str
                (`MS_STRING`), bytes (`MS_BYTES`).

        Returns:
            A list with one dict per instance: output name -> value (read-only numpy array, str, bytes, or a list of
            str/bytes), or `{"error": msg}` for a failed instance. When the whole request failed (one error in the
            reply): the dict `{"error": msg}`. A transport failure also gives `{"error": "Grpc Error, ..."}` unless
            the client was made with `raise_on_error=True`.

        Raises:
            RuntimeError: `"instance should be a map"`, `"Not support value type <class '...'>"`,
                `"Unknown data type <dtype>"`, or a reply whose error list does not match its instances.
            ClientError: A transport failure, with `raise_on_error=True`.
        """
        request = encode_request(self._servable_spec, instances)
        try:
            reply: bytes = self._predict(request)
        except grpc.RpcError as exc:
            error = _client_error(exc)
            if self.raise_on_error:
                raise error from exc
            return {"error": str(error)}
        return decode_reply(reply)

    def infer_async(
        self, instances: dict[str, Any] | list[dict[str, Any]] | tuple[dict[str, Any], ...]
    ) -> ClientGrpcAsyncResult | ClientGrpcAsyncError:
        """Sends one request without waiting for the reply.

        The request is fully encoded before this returns, so the caller may modify its arrays right away.

        Args:
            instances: As for `infer`.

        Returns:
            An object whose `result()` waits for the reply and returns what `infer` would (a transport failure
            becomes `{"error": ...}`, or raises `ClientError` with `raise_on_error=True`).

        Raises:
            RuntimeError: Invalid instances, as for `infer`.
        """
        request = encode_request(self._servable_spec, instances)
        try:
            future = self._predict.future(request)
        except grpc.RpcError as exc:
            error = _client_error(exc)
            if self.raise_on_error:
                raise error from exc
            return ClientGrpcAsyncError({"error": str(error)})
        return ClientGrpcAsyncResult(future, self.raise_on_error)

    def close(self) -> None:
        """Closes the channel (rustserve extension; MindSpore's client leaves it to garbage collection)."""
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
