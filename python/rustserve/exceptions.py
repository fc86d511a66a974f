"""rustserve's exception hierarchy, created by the native core and re-exported here.

`RustServeError` is the base; `ServableStartError` (a servable failed to load), `ServerStartError` (a listener
could not start) and `ModelCallError` (`Model.call` failed) derive from it. The MindSpore-compatible start
functions of `rustserve.server` re-raise start-up failures as `RuntimeError` (chained to these) because
MindSpore Serving scripts catch `RuntimeError`.
"""

from rustserve._rustserve import ModelCallError, RustServeError, ServableStartError, ServerStartError

__all__ = ["ModelCallError", "RustServeError", "ServableStartError", "ServerStartError"]
