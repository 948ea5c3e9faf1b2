"""Pure units: readiness derivation, fault grammar, device groups and the MODELS setting."""

from __future__ import annotations

import asyncio

import pytest

from ttmedia.web.problems import NotReady, retry_after_header
from ttmedia.runners.faults import FaultPlan, FaultSyntaxError, parse_faults
from ttmedia.runners.sim import tokenizer
from ttmedia.runners.sim.llm import StepClock
from ttmedia.scheduler.devices import ConfigError, parse_groups, served_models
from ttmedia.scheduler.readiness import ModelState, WorkerState, WorkerView, derive_state, retry_after
from ttmedia.settings import Settings

R, W, S, RS, F = WorkerState.READY, WorkerState.WARMING, WorkerState.STARTING, WorkerState.RESTARTING, WorkerState.FAILED


def views(*states: WorkerState, restarts: int = 0, eta: float = 5.0) -> list[WorkerView]:
    return [WorkerView(s, restarts, 0.0 if s is R else eta) for s in states]


@pytest.mark.parametrize(
    ("workers", "draining", "expected"),
    [
        (views(S, S), False, ModelState.STARTING),
        (views(S, W), False, ModelState.WARMING),
        (views(R, W), False, ModelState.DEGRADED),
        (views(R, R), False, ModelState.READY),
        (views(RS, W, restarts=1), False, ModelState.UNAVAILABLE),
        (views(F, F), False, ModelState.FAILED),
        (views(F, W), False, ModelState.WARMING),
        (views(R, R), True, ModelState.DRAINING),
    ],
)
def test_model_state_is_derived_from_workers(workers, draining, expected):
    assert derive_state(workers, draining) is expected


def test_serving_states_and_reasons():
    assert ModelState.READY.serving and ModelState.DEGRADED.serving
    assert not ModelState.WARMING.serving
    assert ModelState.WARMING.reason == "warming_up"
    assert ModelState.UNAVAILABLE.reason == "no_workers"
    assert ModelState.FAILED.reason == "init_failed"
    assert ModelState.DRAINING.reason == "draining"


def test_retry_after_is_the_soonest_eta_and_at_least_one_second():
    assert retry_after(views(W, W, eta=7.2), ModelState.WARMING, 0) == 7.2
    assert retry_after(views(W, eta=0.01), ModelState.WARMING, 0) == 1.0
    assert retry_after(views(F, F), ModelState.FAILED, 0) >= 1.0
    assert retry_after_header(0.2) == {"Retry-After": "1"}
    assert retry_after_header(7.2) == {"Retry-After": "8"}
    assert retry_after_header(float("inf")) == {"Retry-After": "1"}


def test_not_ready_rejects_unknown_reasons():
    with pytest.raises(ValueError):
        NotReady("x", reason="busy", retry_after=1)


def test_fault_grammar():
    faults = parse_faults("init_fail, Qwen3-8B:crash_after=3@(0,1); error_rate=0.5")
    assert [f.name for f in faults] == ["init_fail", "crash_after", "error_rate"]
    assert faults[1].model == "Qwen3-8B" and faults[1].group == (0, 1) and faults[1].value == 3
    assert faults[1].applies_to("Qwen3-8B", (0, 1)) and not faults[1].applies_to("Qwen3-8B", (2,))
    for bad in ("explode", "crash_after", "error_rate=2", "init_fail=1"):
        with pytest.raises(FaultSyntaxError):
            parse_faults(bad)


def test_fault_plan_counts_requests():
    plan = FaultPlan(parse_faults("crash_after=2"), seed="x")
    assert [plan.next_request() for _ in range(3)] == [None, None, "crash"]


def test_device_groups():
    assert parse_groups("(0),(1)") == [(0,), (1,)]
    assert parse_groups("(0,1),(2,3)") == [(0, 1), (2, 3)]
    with pytest.raises(ConfigError):
        parse_groups("0,1")


def test_models_setting():
    models = served_models(Settings(models="stable-diffusion-xl-base-1.0@(0),(1);Qwen3-8B@(2);FLUX.1-schnell"))
    assert [(m.name, m.groups) for m in models] == [
        ("stable-diffusion-xl-base-1.0", ((0,), (1,))), ("Qwen3-8B", ((2,),)), ("FLUX.1-schnell", ((3,),))]
    single = served_models(Settings(model="Qwen3-8B", device_ids="(0,1),(2,3)"))
    assert [(m.name, m.groups) for m in single] == [("Qwen3-8B", ((0, 1), (2, 3)))]
    with pytest.raises(ConfigError, match="unknown model"):
        served_models(Settings(models="gpt-9"))
    with pytest.raises(ConfigError, match="more than one worker"):
        served_models(Settings(models="Qwen3-8B@(0);FLUX.1-dev@(0)"))


def test_tokenizer_round_trips_any_text():
    for text in ["Hello world.", "  spaced\n\nout ", "ünïcödé ✓ 🚀", "", "x" * 50]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    with pytest.raises(ValueError):
        tokenizer.decode([10**9])


def test_a_vocabulary_piece_encodes_to_its_own_id_as_the_split_would():
    ids, pieces = tokenizer.vocabulary()
    for piece in pieces:
        assert tokenizer._PIECE.findall(piece) == [piece]  # what makes the whole-piece shortcut exact
        assert tokenizer.encode(piece) == [ids[piece]]


def test_the_step_clock_wakes_every_stream_of_a_step_with_one_timer_and_cancels_one_alone():
    async def scenario() -> None:
        clock = StepClock(0.02)
        loop = asyncio.get_running_loop()
        timers_before = len(loop._scheduled)  # type: ignore[attr-defined]
        step = clock.next_step() + 1
        waiting = [asyncio.ensure_future(clock.wait_for(step)) for _ in range(5)]
        await asyncio.sleep(0)
        assert len(loop._scheduled) == timers_before + 1  # type: ignore[attr-defined]
        waiting[0].cancel()
        done, _ = await asyncio.wait(waiting[1:], timeout=1)
        assert len(done) == 4 and all(w.exception() is None for w in done)
        assert waiting[0].cancelled()
        assert loop.time() >= clock.origin + step * clock.step_s - 0.002
        await clock.wait_for(step - 1)  # a step that has already ended returns at once

    asyncio.run(scenario())


def test_the_spec_is_still_checked_at_start_up_by_the_compiled_validator() -> None:
    import copy

    from connexion.exceptions import InvalidSpecification
    from connexion.spec import OpenAPISpecification, Specification

    from ttmedia.web.app import compiled_spec_check, load_spec

    with compiled_spec_check():
        Specification.load(copy.deepcopy(load_spec()))  # the shipped spec passes
        broken = copy.deepcopy(load_spec())
        broken["paths"]["/health"]["get"]["responses"]["200"] = {"descripton": "typo"}
        with pytest.raises(InvalidSpecification, match="paths//health/get/responses/200"):
            Specification.load(broken)
    assert "_validate_spec" not in OpenAPISpecification.__dict__  # Connexion's own check is back


def test_response_validation_is_compiled_and_still_strict() -> None:
    from connexion.exceptions import NonConformingResponseBody

    from ttmedia.web.validation import CompiledJSONResponseBodyValidator

    schema = {"type": "object", "required": ["a"],
              "properties": {"a": {"type": "integer"}, "b": {"type": "string", "format": "date-time", "nullable": True}}}
    validator = CompiledJSONResponseBodyValidator({"type": "http"}, schema=schema, encoding="utf-8")
    validator._validate({"a": 1, "b": None})
    for bad in ({"a": "x"}, {}, {"a": 1, "b": "not a date"}):
        with pytest.raises(NonConformingResponseBody):
            validator._validate(bad)


def test_models_entries_choose_runner_options_and_batch_limits() -> None:
    models = served_models(Settings(models="x=sim-llm@(3)~family=llm~model_path=/m~threads=2~flag=true;"
                                           "all-MiniLM-L6-v2=sim-embedding~max_batch_delay_ms=4;bge-m3"))
    custom, minilm, bge = models
    assert custom.family == "llm" and custom.runner_target == "ttmedia.runners.sim.llm:SimLLMRunner"
    assert custom.info.options == {"model_path": "/m", "threads": 2, "flag": True} and custom.groups == ((3,),)
    assert minilm.max_batch_size == 32 and minilm.max_batch_delay_ms == 4.0  # catalog size, entry's delay
    assert bge.max_batch_size is None and bge.max_batch_delay_ms == 0.0
    # The environment setting, when set, comes before the catalog's choice; the entry before both.
    env = served_models(Settings(models="all-MiniLM-L6-v2=sim-embedding;bge-m3~max_batch_size=4", max_batch_size=2))
    assert [m.max_batch_size for m in env] == [2, 4]
    with pytest.raises(ConfigError, match="needs.*family|give its family"):
        served_models(Settings(models="mystery=sim-llm"))
    with pytest.raises(ConfigError, match="serves the llm family"):
        served_models(Settings(models="bge-m3=sim-llm"))
    with pytest.raises(ConfigError, match="no runner named 'nope'.*sim-llm"):
        served_models(Settings(models="bge-m3=nope"))
    with pytest.raises(ConfigError, match="max_batch_size must be"):
        served_models(Settings(models="bge-m3~max_batch_size=0"))
