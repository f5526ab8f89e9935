"""The OpenAI-compatible HTTP server (`edgeformer serve`): `create_app(engine, model_name=...)`
returns a Starlette app; run it with uvicorn."""
from edgeformer.extras import require

require("starlette", "serve", "edgeformer serve")  # before the modules that import it: the hint, not a bare ImportError

from edgeformer.serve.app import create_app, make_batch_engine  # noqa: E402
from edgeformer.serve.openai_schema import APIError  # noqa: E402

__all__ = ["create_app", "make_batch_engine", "APIError"]
