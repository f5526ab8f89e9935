"""What a Ray Serve deployment of edgeformer runs with (`edgeformer serve --ray`, or
`serve run` with the builder `edgeformer.serve.ray_deploy:app_builder`): one frozen,
picklable config shared by the ingress and every engine replica. No Ray import here."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from edgeformer.errors import ConfigError
from edgeformer.serve.prefix_routing import DEFAULT_TABLE_ENTRIES, ROUTING_MODES

APP_NAME = "edgeformer"


@dataclass(frozen=True)
class RayServeConfig:
    """`model` ... `lookup`: each replica's engine and server, as `edgeformer serve` builds
    them. `replicas`: how many engines (the lower bound when `max_replicas` is larger:
    Ray Serve then scales between the two, aiming at `target_queue` requests in flight
    per replica). `threads_per_replica`: Numba threads (and logical Ray CPUs) of each.
    `routing`: "prefix" (prefix-aware) or "round-robin"; a replica with `busy_threshold`
    requests in flight (default `max_batch`) is passed over for a prefix hit.
    `replica_timeout_s`: the longest wait for the next piece of a reply (then 504, or an
    SSE error event); `max_retries`: resends of a request whose replica was lost before
    it produced output. ConfigError naming the field for a value out of range."""

    model: str | None = None
    model_name: str = "edgeformer"
    backend: str | None = None
    activations: str | None = None
    n_ctx: int | None = None
    chat_template: str | None = None
    kv_budget_bytes: int = 256 * 1024 * 1024
    kv_dtype: str = "f16"
    block_size: int = 16
    max_batch: int = 16
    prefill_chunk: int = 256
    max_body_bytes: int = 4 * 1024 * 1024
    api_key: str | None = None
    lookup: int | None = None
    replicas: int = 1
    max_replicas: int | None = None
    target_queue: float | None = None
    threads_per_replica: int = 1
    routing: str = "prefix"
    busy_threshold: int | None = None
    table_entries: int = DEFAULT_TABLE_ENTRIES
    replica_timeout_s: float = 300.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        for name in ("block_size", "max_batch", "prefill_chunk", "kv_budget_bytes", "max_body_bytes", "replicas",
                     "threads_per_replica", "table_entries"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"ray serve config: {name} must be an integer >= 1, got {v!r}")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ConfigError(f"ray serve config: max_replicas ({self.max_replicas}) is below replicas "
                              f"({self.replicas})")
        if self.routing not in ROUTING_MODES:
            raise ConfigError(f"ray serve config: routing must be one of {', '.join(ROUTING_MODES)}, "
                              f"got {self.routing!r}")
        if self.busy_threshold is not None and self.busy_threshold < 1:
            raise ConfigError(f"ray serve config: busy_threshold must be >= 1, got {self.busy_threshold}")
        if self.target_queue is not None and not self.target_queue > 0:
            raise ConfigError(f"ray serve config: target_queue must be > 0, got {self.target_queue}")
        if not self.replica_timeout_s > 0:
            raise ConfigError(f"ray serve config: replica_timeout_s must be > 0, got {self.replica_timeout_s}")
        if self.max_retries < 0:
            raise ConfigError(f"ray serve config: max_retries must be >= 0, got {self.max_retries}")

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> RayServeConfig:
        """From `serve run`'s `args:` mapping (sizes in bytes). ConfigError naming unknown
        keys, or a value of the wrong type."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ConfigError(f"ray serve config: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**args)
        except TypeError as e:      # a comparison with a value of the wrong type
            raise ConfigError(f"ray serve config: {e}") from None

    @property
    def busy(self) -> int:
        return self.busy_threshold or self.max_batch

    def deployment_options(self) -> dict[str, Any]:
        """Ray Serve options of the engine deployment: fixed replicas or autoscaling on
        requests in flight; room for two full batches per replica before Ray queues at
        the ingress; logical CPUs = threads."""
        opts: dict[str, Any] = {"max_ongoing_requests": 2 * self.max_batch,
                                "ray_actor_options": {"num_cpus": self.threads_per_replica},
                                "graceful_shutdown_timeout_s": 5}
        if self.max_replicas is not None and self.max_replicas > self.replicas:
            opts["autoscaling_config"] = {"min_replicas": self.replicas, "max_replicas": self.max_replicas,
                                          "target_ongoing_requests": self.target_queue or self.max_batch / 2}
        else:
            opts["num_replicas"] = self.replicas
        return opts
