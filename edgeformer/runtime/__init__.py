"""Runtime: the Engine (generate / stream / chat), sampling, stop strings, the paged KV
cache, continuous batching (BatchEngine) and speculative decoding."""
from edgeformer.errors import CapacityError
from edgeformer.runtime.engine import Engine
from edgeformer.runtime.events import GenerationResult, GenerationStats, TokenEvent, TokenLogprob
from edgeformer.runtime.kv_cache import BlockTable, PagedKVCache
from edgeformer.runtime.sampler import SamplingParams, make_logits_processors, make_sampler
from edgeformer.runtime.scheduler import BatchEngine, RequestHandle, Scheduler
from edgeformer.runtime.session import Session
from edgeformer.runtime.speculative import SpeculativeConfig
from edgeformer.runtime.stops import StopMatcher

__all__ = ["Engine", "GenerationResult", "GenerationStats", "TokenEvent", "TokenLogprob", "SamplingParams",
           "make_logits_processors", "make_sampler", "StopMatcher", "PagedKVCache", "BlockTable",
           "CapacityError", "BatchEngine", "RequestHandle", "Scheduler", "Session", "SpeculativeConfig"]
