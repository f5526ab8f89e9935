"""edgeformer on Ray Serve: N engine replicas (`ray_replica.EngineReplica`) behind one
OpenAI-compatible ingress (`ray_ingress.Ingress`) with prefix-aware routing
(`ray_router.PrefixAwareRouter`). docs/SCALING.md describes the design.

    edgeformer serve --ray --replicas 2 --threads-per-replica 1       # the CLI
    serve run edgeformer.serve.ray_deploy:app_builder model=smollm2-135m-instruct replicas=2
    serve run deploy.yaml           # import_path: edgeformer.serve.ray_deploy:app_builder

Needs the ray extra (`pip install 'edgeformer[ray]'`); `edgeformer serve` without --ray
imports none of this.
"""
from __future__ import annotations

from typing import Any

from edgeformer.extras import require
from edgeformer.serve.ray_config import APP_NAME, RayServeConfig

require("ray.serve", "ray", "edgeformer serve --ray")   # the hint, before the modules that import ray

from ray import serve  # noqa: E402
from ray.serve.config import RequestRouterConfig  # noqa: E402

from edgeformer.serve.ray_ingress import Ingress  # noqa: E402
from edgeformer.serve.ray_replica import EngineReplica  # noqa: E402


def build_app(cfg: RayServeConfig) -> Any:
    """The Ray Serve application (an unstarted `Application`) for `cfg`."""
    router_kw: dict[str, Any] = {"request_router_class": "edgeformer.serve.ray_router.PrefixAwareRouter",
                                 "request_router_kwargs": {"mode": cfg.routing, "busy_threshold": cfg.busy,
                                                           "table_entries": cfg.table_entries}}
    router = RequestRouterConfig(**router_kw)
    engine: Any = serve.deployment(EngineReplica, name="EngineReplica", request_router_config=router,
                                   **cfg.deployment_options())
    # the ingress only relays: no CPU reserved, and room for many open streams
    front: Any = serve.ingress()(Ingress)      # the class builds its app: Ingress.__serve_build_asgi_app__
    ingress: Any = serve.deployment(front, name="Ingress", num_replicas=1, max_ongoing_requests=4096,
                                    ray_actor_options={"num_cpus": 0})
    return ingress.bind(engine.bind(cfg), cfg)


def app_builder(args: dict[str, Any]) -> Any:
    """`serve run` / `serve deploy` entry: `args` as in RayServeConfig (ConfigError for
    unknown keys or bad values)."""
    return build_app(RayServeConfig.from_args(dict(args)))


def deploy(cfg: RayServeConfig, host: str, port: int, address: str | None = None) -> str:
    """Start (or join, with `address`) a Ray cluster, start Serve's HTTP proxy on host:port
    and deploy `cfg`; returns the base URL once every replica is up."""
    import logging

    import ray
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"
