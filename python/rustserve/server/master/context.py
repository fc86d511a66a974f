"""MindSpore Serving's `server.master.context`: server-wide limits."""

from __future__ import annotations


def set_max_enqueued_requests(max_enqueued_requests: int) -> None:
    """Bounds the requests in flight (default 10000); same as `rustserve.server.set_max_enqueued_requests`.

    Args:
        max_enqueued_requests: Requests in flight, >= 1.

    Raises:
        RuntimeError: `max_enqueued_requests` is not an int >= 1.

    Example:
        >>> from rustserve.server import master
        >>> master.context.set_max_enqueued_requests(100)
    """
    from rustserve import server

    server.set_max_enqueued_requests(max_enqueued_requests)


__all__ = ["set_max_enqueued_requests"]
