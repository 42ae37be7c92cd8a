"""floatcheck's timing of a float candidate group: a variant clearly slower than any error
gain could buy, or clearly within any limit, ends its timing early, with the decision the
full timing gives."""

from __future__ import annotations

import pytest

from onnx_obc import floatcheck
from onnx_obc.channels import timing
from onnx_obc.export.floatcand import Candidates


def _fake_timer(ms: tuple[float, float], calls: list[int]):
    """ort_timer's stand-in: rounds of the two variants at `ms` (the float one's runs
    spread ±2%), honouring `stop`; `calls` gets the rounds each timing ran."""
    def timer(runtime=None, rounds=21, seconds=0.0, keep=False, stop=None, block=0.0):
        def run(models, feed):
            times: list[list[float]] = [[], []]
            while len(times[0]) < rounds:
                k = len(times[0])
                times[0].append(ms[0] * (1.0 + 0.01 * (k % 3 - 1)))
                times[1].append(ms[1] * (1.0 + 0.02 * (k % 3 - 1)))
                if stop is not None and stop(times):
                    break
            calls.append(len(times[0]))
            return [sorted(t)[len(t) // 2] for t in times]
        return run
    return timer


@pytest.mark.parametrize("slower, rounds, kept", [
    (3.3, floatcheck.EARLY_ROUNDS, False),  # DNSMOS's high-resolution convs: stopped early
    (1.2, floatcheck.EARLY_ROUNDS, False),  # over the cap by more than the retime band
    (1.1, floatcheck.TIMING_ROUNDS, False),  # the runs overlap the band: every round
    (1.0, floatcheck.TIMING_ROUNDS, True),  # as fast: timed in full, then verified
    (1.01, floatcheck.TIMING_ROUNDS, True),  # its slowest runs not clearly within: in full
    (0.84, floatcheck.EARLY_ROUNDS, True),  # a float stem at 0.84x: clearly within any
    # limit, stopped early, then verified
])
def test_a_clearly_slower_variant_stops_its_timing_early(monkeypatch, slower: float,
                                                         rounds: int, kept: bool) -> None:
    calls: list[int] = []
    monkeypatch.setattr(timing, "ort_timer", _fake_timer((1.0, slower), calls))
    g = Candidates("high-resolution convs", {}, at_most=0.8, slower=1.05, slower_cap=1.15)
    verified: list[int] = []

    def verify():
        verified.append(1)
        return {}, 0.01

    ok, measured, _, _ = floatcheck._accept(g, 0.02, None, None, verify, None, {"x": 0},
                                            "calibration")
    assert ok is kept
    assert calls[0] == rounds
    assert bool(verified) is kept  # a rejected timing is not verified
    assert f"{slower:.3f}x" in measured
