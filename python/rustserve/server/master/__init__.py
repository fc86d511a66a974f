"""MindSpore Serving's `server.master` namespace: only `context` exists in rustserve."""

from rustserve.server.master import context

__all__ = ["context"]
