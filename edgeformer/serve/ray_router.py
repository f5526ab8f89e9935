"""Ray Serve request router for the engine replicas: prefix-aware (`serve.prefix_routing`)
or round-robin, over Ray Serve's own replica list, queue-length probes and backoff.

Ray Serve runs a deployment's router inside each process that holds a handle to it (here
the ingress), so the routing map is per ingress replica and the ingress reads this
router's counters through `prefix_routing.ROUTERS` to answer /metrics (only functions of
other modules here: Ray Serve pickles this module's router class by value, with copies of
the globals it names). Configured on the engine deployment
by `RequestRouterConfig(request_router_class=PrefixAwareRouter, request_router_kwargs=
{"mode": ..., "busy_threshold": ..., "table_entries": ...})`.
"""
from __future__ import annotations

import random
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from edgeformer.serve.prefix_routing import (DEFAULT_TABLE_ENTRIES, ROUTING_MODES, PrefixTable, RouteHint,
                                             register_router, router_metrics)



class PrefixAwareRouter(RequestRouter):
    """Routes a request with a `RouteHint` (keyword `route`) to the replica holding its
    longest known prompt prefix while that replica has fewer than `busy_threshold`
    requests in flight; otherwise (and for a prompt with no known prefix) to the less
    loaded of two random replicas. `mode="round-robin"` cycles through the replicas
    instead (the comparison the benchmark makes)."""

    def initialize_state(self, mode: str = "prefix", busy_threshold: int = 16,
                         table_entries: int = DEFAULT_TABLE_ENTRIES, **_: Any) -> None:
        if mode not in ROUTING_MODES:
            raise ValueError(f"routing mode must be one of {', '.join(ROUTING_MODES)}, got {mode!r}")
        self.mode, self.busy_threshold = mode, busy_threshold
        self.table = PrefixTable(table_entries)
        self.metrics = router_metrics(self._deployment_id.name)
        self._rr = 0
        register_router(self._deployment_id.name, self)

    def replica_ids(self) -> list[str]:
        """The replicas this router routes to now (their unique ids)."""
        return sorted(r.unique_id for r in list(self.curr_replicas))

    async def _queue_len(self, r: RunningReplica) -> int | None:
        q = self.replica_queue_len_cache.get(r.replica_id)
        if q is None:
            got = await self._probe_queue_lens([r], 0)
            q = got[0][1] if got else None
        return q

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        """Ranks of replicas, most preferred first (Ray takes the least loaded replica of
        the first rank that has room, backing off when none has)."""
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True   # every rank below is all there is
        hint = pending_request.kwargs.get("route") if pending_request is not None else None
        if not candidate_replicas:
            return []
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        if not isinstance(hint, RouteHint):
            return [two_choices(candidate_replicas)]
        if hint.pin is not None:
            return [[by_id[hint.pin]]] if hint.pin in by_id else []
        if self.mode == "round-robin":
            ordered = [by_id[k] for k in sorted(by_id)]
            self._rr = (self._rr + 1) % len(ordered)
            hint.outcome = "round_robin"
            return [[ordered[self._rr]], ordered]
        if not hint.keys:
            hint.outcome = "none"
            return [two_choices(candidate_replicas)]
        pref, n = self.table.lookup(hint.keys, frozenset(by_id))
        if pref is None:
            hint.outcome = "miss"
            return [two_choices(candidate_replicas)]
        hint.preferred = pref
        q = await self._queue_len(by_id[pref])
        others = [r for r in candidate_replicas if r.replica_id.unique_id != pref]
        if q is not None and q < self.busy_threshold:
            hint.outcome = "hit"
            self.metrics.matched_blocks.inc(n)
            return [[by_id[pref]], two_choices(others)] if others else [[by_id[pref]]]
        hint.outcome = "fallback"
        return [two_choices(others), [by_id[pref]]] if others else [[by_id[pref]]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        hint = pending_request.kwargs.get("route")
        if not isinstance(hint, RouteHint) or hint.pin is not None:
            return
        rid = replica_id.unique_id
        if self.mode == "prefix" and hint.keys:
            self.table.record(hint.keys, rid)
            self.metrics.table_size = len(self.table)
        self.metrics.count(hint, rid)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.table.forget(replica_id.unique_id)
        self.metrics.table_size = len(self.table)


def two_choices(replicas: list[RunningReplica]) -> list[RunningReplica]:
    """Two random replicas (all, if two or fewer): Ray sends the request to the less loaded."""
    return list(replicas) if len(replicas) <= 2 else random.sample(replicas, 2)
