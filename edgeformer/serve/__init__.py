"""The OpenAI-compatible HTTP server (`edgeformer serve`): `create_app(engine, model_name=...)`
returns a Starlette app; run it with uvicorn."""
from edgeformer.serve.app import create_app, make_batch_engine
from edgeformer.serve.openai_schema import APIError

__all__ = ["create_app", "make_batch_engine", "APIError"]
