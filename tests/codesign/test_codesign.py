"""Co-design: the quality proxy is the published formula, the front is a real Pareto
front, the CLI prints and plots it, and the winner's GGUF loads and runs."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.cli.__main__ import main
from edgeformer.codesign.quality import chinchilla_loss, depth_penalty, predicted_loss
from edgeformer.codesign.search import kendall_tau, pareto_front, search
from edgeformer.codesign.space import Candidate, SearchSpace, parse_range
from edgeformer.errors import InputError, UnsupportedError

TINY = SearchSpace(layers=(4, 8), dims=(128, 256), head_dims=(32, 64), kv_groups=(1, 2), ffn_mults=(3.0,),
                   ffn_round=64, vocabs=(512,), tied=(True, False), qtypes=("Q8_0", "Q4_0"),
                   kv_dtypes=("f16", "int8"), params=(0.2e6, 20e6))


def test_chinchilla_constants_reproduce_the_paper():
    # Hoffmann et al. 2022: Chinchilla (70B params, 1.4T tokens) -> L = E + A/N^a + B/D^b
    n, d = 70e9, 1.4e12
    want = 1.69 + 406.4 / n ** 0.34 + 410.7 / d ** 0.28
    assert chinchilla_loss(n, d) == pytest.approx(want, rel=1e-12)
    assert 1.9 < want < 2.0          # the ~1.94 nats the fit implies for Chinchilla
    assert depth_penalty(30) == 0 and depth_penalty(12) > depth_penalty(20) > 0


def test_deeper_thinner_wins_at_equal_params():
    deep = Candidate(30, 576, 9, 3, 64, 1536, 49152, True)       # SmolLM2-135M's shape
    wide = Candidate(12, 896, 14, 2, 64, 2304, 49152, True)      # 4 % MORE parameters, 12 layers
    assert wide.params > deep.params
    # Chinchilla alone prefers the bigger model; the MobileLLM depth heuristic reverses it
    assert chinchilla_loss(wide.params, 2e12) < chinchilla_loss(deep.params, 2e12)
    assert predicted_loss(deep) < predicted_loss(wide)


def test_params_match_the_real_smollm2_file():
    from tests.conftest import shipped_path
    from edgeformer.formats import load_checkpoint
    ck = load_checkpoint(shipped_path("smollm2-135m-instruct"))
    n = sum(int(np.prod(s)) for _, s in ck.tensors.infos.values())
    assert Candidate(30, 576, 9, 3, 64, 1536, 49152, True).params == n


def test_search_front_is_pareto_and_within_budgets():
    res = search("raspberry_pi_5", TINY, latency_ms=50, memory_gb=0.5, prompt_len=16, context_len=64)
    assert res.front and res.n_evaluated == len(list(TINY.candidates()))
    key = lambda s: (s.loss, s.decode_s, s.memory)   # noqa: E731
    for f in res.front:
        assert f.feasible and f.decode_s * 1e3 <= 50 and f.memory <= 0.5e9
        assert not any(all(a <= b for a, b in zip(key(o), key(f))) and key(o) != key(f) for o in res.feasible)
    assert pareto_front(res.front, key) == res.front


def test_bad_input():
    with pytest.raises(UnsupportedError):
        search("no_such_device", TINY)
    with pytest.raises(InputError):
        search("raspberry_pi_5", TINY, latency_ms=0)
    with pytest.raises(InputError):
        parse_range("1B..100M")
    with pytest.raises(InputError):
        search("raspberry_pi_5", SearchSpace(layers=(2,), dims=(64,), params=(1e9, 2e9)))


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # 5 concordant, 1 discordant pair: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)


def test_cli_prints_plots_builds_and_the_winner_runs(tmp_path, capsys):
    rc = main(["codesign", "--device", "raspberry_pi_5", "--latency-ms", "200", "--memory-gb", "1",
               "--params", "20M..60M", "--max-candidates", "40", "--qtypes", "Q8_0",
               "--kv", "f16", "--context", "256", "--build", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "Pareto front" in out
    png = (tmp_path / "pareto.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 5000
    built = list(tmp_path.glob("codesign_*.gguf"))
    assert len(built) == 1
    from edgeformer.backends import get_backend
    from edgeformer.formats import load_checkpoint
    from edgeformer.models.decoder import Decoder
    model = Decoder(load_checkpoint(built[0]), get_backend("numpy"))
    logits = model.forward(np.arange(3), model.make_cache(8))
    assert logits.shape == (3, model.config.vocab_size) and np.isfinite(logits).all()
    rc = main(["codesign", "--device", "raspberry_pi_5", "--latency-ms", "0.01", "--params", "20M..60M",
               "--max-candidates", "10", "--qtypes", "Q8_0", "--kv", "f16", "--no-plots"])
    assert rc == 3 and "latency binds" in capsys.readouterr().out
