"""rustserve's exception hierarchy, created by the native core and re-exported here.

`RustServeError` is the base; `ServableStartError` (a servable failed to load), `ServerStartError` (a listener
could not start) and `ModelCallError` (`Model.call` failed) derive from it. All are `RuntimeError` subclasses, so
the MindSpore-compatible start functions of `rustserve.server` raise them as they are (with MindSpore's texts) and
MindSpore Serving scripts that catch `RuntimeError` still catch them.
"""

from rustserve._rustserve import ModelCallError, RustServeError, ServableStartError, ServerStartError

__all__ = ["ModelCallError", "RustServeError", "ServableStartError", "ServerStartError"]
