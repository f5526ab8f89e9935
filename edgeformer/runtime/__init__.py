"""Runtime: the Engine (generate / stream / chat), sampling, stop strings."""
from edgeformer.runtime.engine import Engine, GenerationResult, GenerationStats, TokenEvent, TokenLogprob
from edgeformer.runtime.sampler import SamplingParams, make_logits_processors, make_sampler
from edgeformer.runtime.stops import StopMatcher

__all__ = ["Engine", "GenerationResult", "GenerationStats", "TokenEvent", "TokenLogprob", "SamplingParams",
           "make_logits_processors", "make_sampler", "StopMatcher"]
