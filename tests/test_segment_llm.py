import json
import logging
import re
import socket
import time
import urllib.parse
from itertools import pairwise

import pytest

from fake_openai import FakeOpenAI, Reply, answer_with, completion, error
from segment_run import run_segment
from simulforge import segment_batch
from simulforge.pipeline.summaries import segment_card_section, segment_summary
from simulforge.settings import ConfigError
from simulforge.transforms.records import AudioRef, Utterance
from simulforge.transforms.segment import SYSTEMIC_REASONS, Segment, load_settings
from simulforge.transforms.segment_llm import LlmSegmenter, keys
from simulforge.transforms.segment_llm import batch as batch_api
from simulforge.transforms.segment_llm.answers import InvalidAnswer, check_answer, parse_answer
from simulforge.transforms.segment_llm.prompt import Item, build_messages, load_prompt

KEY = "sk-test-DO-NOT-LEAK-4242"
LEVELS = ["low", "medium", "high"]
PIECE = 8  # this many characters of the key in a row is a leak (what a cut or a line wrap leaves)


def leaked(text: str) -> list[str]:
    """Pieces of KEY in `text`, plain or escaped in any of the ways a leak takes (\\uXXXX,
    escaped again, %XX), found independently of the product's own redaction."""
    plain = text
    for _ in range(3):  # undo up to three layers of escaping
        plain = re.sub(r"\\+u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), plain)
        plain = urllib.parse.unquote(plain)
    return sorted({KEY[i : i + PIECE] for i in range(len(KEY) - PIECE + 1) if KEY[i : i + PIECE] in plain})


def file_texts(*roots):
    """(path, text) of every file under `roots`, binary ones decoded loosely."""
    return [
        (str(p), p.read_bytes().decode("utf-8", "replace"))
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]

SENTENCES = [
    (
        "We moved to a small town near the coast last year.",
        {
            "de": "Wir sind letztes Jahr in eine kleine Stadt an der Küste gezogen.",
            "es": "El año pasado nos mudamos a un pueblo pequeño cerca de la costa.",
        },
    ),
    (
        "The museum is closed on Mondays.",
        {"de": "Das Museum ist montags geschlossen.", "es": "El museo cierra los lunes."},
    ),
    (
        "She finally finished the book that her friend gave her.",
        {
            "de": "Sie hat endlich das Buch beendet, das ihre Freundin ihr geschenkt hat.",
            "es": "Por fin terminó el libro que le regaló su amiga.",
        },
    ),
    (
        "If it rains tomorrow, we will stay at home.",
        {
            "de": "Wenn es morgen regnet, bleiben wir zu Hause.",
            "es": "Si mañana llueve, nos quedaremos en casa.",
        },
    ),
    (
        "Our neighbours have two very loud dogs.",
        {
            "de": "Unsere Nachbarn haben zwei sehr laute Hunde.",
            "es": "Nuestros vecinos tienen dos perros muy ruidosos.",
        },
    ),
]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def utterances(n, langs=("de", "es")):
    out = []
    for k in range(n):
        en, tr = SENTENCES[k % len(SENTENCES)]
        suffix = f" ({k})" if k >= len(SENTENCES) else ""  # distinct texts: no cache sharing
        out.append(
            Utterance(
                id=f"u/{k}",
                corpus="t",
                split="train",
                audio=AudioRef("x.wav", duration_s=4.0),
                speaker="s",
                source_lang="en",
                source_text=en + suffix,
                translations={lang: tr[lang] + suffix for lang in langs},
            )
        )
    return out


def settings_for(fake, tmp_path, aligner="none", **llm):
    return load_settings(
        {
            "backend": "llm",
            "monotonicity": {"aligner": aligner},
            "llm": {
                "base_url": fake.base_url,
                "cache_dir": str(tmp_path / "answers"),
                "batch_dir": str(tmp_path / "batch"),
                "requests_per_minute": None,
                "backoff_s": 0.01,
                "backoff_max_s": 0.05,
                "timeout_s": 2.0,
                "max_retries": 3,
                **llm,
            },
        }
    )


def drop_last_source_word(answer):
    chunks = answer["items"][0]["levels"]["low"]["source_chunks"]
    chunks[-1] = " ".join(chunks[-1].split()[:-1]) or "x"


def drop_a_target_chunk(answer):
    answer["items"][0]["levels"]["low"]["target_chunks"]["de"].pop()


# -- prompt and validation (no server) ---------------------------------------------------------


def test_worked_examples_match_their_inputs():
    prompt = load_prompt("prompts/segment_v1.yaml", LEVELS)
    assert {ex["pair"] for ex in prompt.examples} == {"en-de", "en-es"}
    for ex in prompt.examples:
        item = Item("", ex["input"]["source"], ex["input"]["translations"])
        segs = check_answer(item, ex["output"], LEVELS)
        for seg in segs.values():  # these examples keep the reference's own words
            for lang, chunks in seg.target_chunks.items():
                assert " ".join(chunks) == ex["input"]["translations"][lang]


def test_messages_carry_the_examples_the_languages_need():
    prompt = load_prompt("prompts/segment_v1.yaml", LEVELS)
    only_de = build_messages(prompt, LEVELS, [Item("k", "Hi.", {"de": "Hallo."})])
    assert [m["role"] for m in only_de] == ["system", "user", "assistant", "user"]
    assert "Berlin" in only_de[1]["content"] and "low, medium, high" in only_de[0]["content"]
    both = build_messages(prompt, LEVELS, [Item("k", "Hi.", {"de": "Hallo.", "es": "Hola."})])
    assert len(both) == 6 and json.loads(both[-1]["content"].split("\n", 1)[1])["items"][0]["id"] == "1"
    with pytest.raises(ConfigError, match="does not describe level 'instant'"):
        load_prompt("prompts/segment_v1.yaml", ["instant"])


def _answer(levels):
    return {"id": "1", "levels": levels}


ITEM = Item("k", "I have seen the dog today.", {"de": "Ich habe heute den Hund gesehen."})
GOOD = {
    "low": {
        "source_chunks": ["I have", "seen the dog", "today."],
        "target_chunks": {"de": ["Ich habe", "den Hund gesehen", "heute."]},
    },
    "medium": {
        "source_chunks": ["I have", "seen the dog today."],
        "target_chunks": {"de": ["Ich habe", "den Hund heute gesehen."]},
    },
    "high": {
        "source_chunks": ["I have seen the dog today."],
        "target_chunks": {"de": ["Ich habe heute den Hund gesehen."]},
    },
}


def test_a_valid_answer_becomes_segmentations():
    segs = check_answer(ITEM, _answer(GOOD), LEVELS)
    assert segs["low"].target_chunks["de"] == ["Ich habe", "den Hund gesehen", "heute."]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda a: a["low"]["source_chunks"].__setitem__(2, "today"),
            "do not rebuild the source: joined text differs at word 6",
        ),
        (lambda a: a["low"]["source_chunks"].pop(), "joined text has 5 words, the source 6"),
        (lambda a: a["medium"]["target_chunks"]["de"].pop(), "medium: 1 de chunks for 2 source chunks"),
        (
            lambda a: a["low"]["target_chunks"]["de"].__setitem__(1, "  "),
            "low/target_chunks/de: chunk 2 is empty",
        ),
        (lambda a: a["low"]["target_chunks"].pop("de"), "expected a non-empty list"),
        (lambda a: a.pop("high"), "level high is missing"),
        (lambda a: a.__setitem__("low", a["high"]), "chunk counts grow from low (1) to medium (2)"),
    ],
)
def test_invalid_answers_say_what_is_wrong(change, message):
    answer = json.loads(json.dumps(GOOD))
    change(answer)
    with pytest.raises(InvalidAnswer, match=re.escape(message)):
        check_answer(ITEM, _answer(answer), LEVELS)


def test_answers_are_parsed_from_plain_text_too():
    assert parse_answer('Sure:\n```json\n{"items": [{"id": "1"}]}\n```') == {"1": {"id": "1"}}
    with pytest.raises(InvalidAnswer, match="malformed JSON"):
        parse_answer('{"items": [')
    with pytest.raises(InvalidAnswer, match='no "items" list'):
        parse_answer('{"answer": 1}')


# -- against a local server --------------------------------------------------------------------


def test_batched_requests_are_cached_and_a_rerun_makes_no_call(fake, tmp_path):
    settings = settings_for(fake, tmp_path, batch_size=4, concurrency=2)
    outcomes = LlmSegmenter(settings.llm, LEVELS).segment(utterances(10))
    assert len(fake.chat_requests) == 3  # 10 utterances, 4 per request
    assert all(o.segmentations and not o.reason for o in outcomes)
    assert sum(o.requests for o in outcomes) == pytest.approx(3)
    assert sum(o.prompt_tokens for o in outcomes) == pytest.approx(300)
    schema = fake.chat_requests[0]["response_format"]
    assert schema["type"] == "json_schema" and schema["json_schema"]["strict"] is True
    assert fake.authorizations[-1] == f"Bearer {KEY}"

    again = LlmSegmenter(settings.llm, LEVELS).segment(utterances(10))
    assert len(fake.chat_requests) == 3
    assert all(o.cache_hit and o.requests == 0 for o in again)
    assert [o.segmentations for o in again] == [o.segmentations for o in outcomes]


def test_an_invalid_answer_gets_one_repair(fake, tmp_path):
    settings = settings_for(fake, tmp_path)
    fake.script = [completion('{"items": [{"id": "1", "levels": ')]  # then the server answers well
    [outcome] = LlmSegmenter(settings.llm, LEVELS).segment(utterances(1))
    assert outcome.reason == "" and outcome.segmentations
    assert len(fake.chat_requests) == 2 and outcome.repair_requests == 1
    repair = fake.chat_requests[1]["messages"]
    assert repair[-2]["role"] == "assistant" and "malformed JSON" in repair[-1]["content"]


def test_an_answer_still_invalid_after_repair_is_rejected_and_never_cached(fake, tmp_path):
    settings = settings_for(fake, tmp_path)
    fake.script = [answer_with(drop_last_source_word), answer_with(drop_last_source_word)]
    [outcome] = LlmSegmenter(settings.llm, LEVELS).segment(utterances(1))
    assert outcome.segmentations is None and outcome.reason == "llm_invalid_answer"
    assert "do not rebuild the source" in outcome.detail and "after one repair" in outcome.detail
    [again] = LlmSegmenter(settings.llm, LEVELS).segment(utterances(1))
    assert not again.cache_hit and again.segmentations and len(fake.chat_requests) == 3


def test_only_the_invalid_items_of_a_batch_are_repaired(fake, tmp_path):
    settings = settings_for(fake, tmp_path, batch_size=3)
    fake.script = [answer_with(drop_a_target_chunk)]  # item 1 of 3 has a de chunk too few
    outcomes = LlmSegmenter(settings.llm, LEVELS).segment(utterances(3))
    assert all(o.segmentations for o in outcomes) and len(fake.chat_requests) == 2
    assert "Answer again for the item(s) 1 only" in fake.chat_requests[1]["messages"][-1]["content"]
    assert [o.repair_requests for o in outcomes] == [1, 0, 0]


def test_429_waits_as_long_as_retry_after_says_and_5xx_is_retried(fake, tmp_path):
    settings = settings_for(fake, tmp_path)
    fake.script = [error(429, "slow down", {"Retry-After": "0.5"}), error(500, "oops"), error(503, "busy")]
    start = time.monotonic()
    [outcome] = LlmSegmenter(settings.llm, LEVELS).segment(utterances(1))
    assert time.monotonic() - start >= 0.5
    assert outcome.segmentations and outcome.retries == 3 and len(fake.chat_requests) == 4


def test_a_reply_slower_than_the_timeout_is_retried_then_given_up(fake, tmp_path):
    settings = settings_for(fake, tmp_path, timeout_s=0.3, max_retries=1)
    fake.script = [Reply(body=None, delay_s=1.0)]
    [outcome] = LlmSegmenter(settings.llm, LEVELS).segment(utterances(1))
    assert outcome.segmentations and outcome.retries == 1
    fake.script = [Reply(body=None, delay_s=1.0), Reply(body=None, delay_s=1.0)]
    [outcome] = LlmSegmenter(settings.llm, LEVELS).segment(utterances(2)[1:])
    assert outcome.reason == "llm_unreachable" and "gave up after 2 attempts" in outcome.detail


def test_servers_without_structured_outputs_get_plain_json(tmp_path):
    with FakeOpenAI(refuse_json_schema=True) as fake:
        settings = settings_for(fake, tmp_path, batch_size=1, concurrency=1)
        outcomes = LlmSegmenter(settings.llm, LEVELS).segment(utterances(2))
    assert all(o.segmentations for o in outcomes)
    formats = [(r.get("response_format") or {}).get("type") for r in fake.chat_requests]
    assert formats == ["json_schema", None, None]  # refused once, then plain for the rest of the run


def test_redaction_finds_the_key_whole_cut_wrapped_and_escaped():
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    forms = [
        f"Error code: 401 - {{'message': 'Bearer {KEY} is not allowed'}}",
        f"got '{KEY[:12]}",  # what a cut at a length limit leaves
        f"{KEY[:12]}\n{KEY[12:]}",  # wrapped at a line end
        f"{KEY[:10]} {KEY[10:]}",  # chunked by a model
        escaped,  # JSON/Python escapes
        json.dumps(escaped),  # ... escaped twice
        urllib.parse.quote(KEY, safe=""),
    ]
    for text in forms:
        clean = keys.redact(text, KEY)
        assert leaked(text) and not leaked(clean), (text, clean)
        assert keys.REDACTED in clean and keys.holds_key(text, KEY)
    assert keys.redact(f"x {KEY} y", KEY) == "x [redacted] y"
    assert keys.redact("nothing to hide: sk-test", KEY) == "nothing to hide: sk-test"  # 7 characters
    # a piece of the key that is also in what we sent is a word of the text, not a leak
    assert not keys.holds_key("it is required", "sk-no-key-required", known="is required")
    assert keys.holds_key("it is sk-no-key", "sk-no-key-required", known="is required")
    assert not keys.holds_key("x marks the spot", "x")  # a placeholder key is no secret


def test_the_api_key_never_leaks(fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # the HTTP client logs response headers and bodies at DEBUG
    settings = settings_for(fake, tmp_path, batch_size=2, concurrency=1)
    # the client's message is "Error code: 403 - <the server's message>"; a cut at 300 keeps 12 of the key
    cut_mid_key = "." * (300 - len("Error code: 403 - ") - 12)
    fake.script = [
        error(429, "{key_split} slow down", {"Retry-After": "0", "X-Echo": "{auth}"}),
        error(500, "{key_escaped} is busy"),
        error(403, cut_mid_key + "{key} is not allowed here"),
        error(401, "{auth} is not allowed"),
    ]
    utts = utterances(3)
    out, rejects, stats = run_segment(settings, utts, tmp_path)
    assert any(KEY in a for a in fake.authorizations)  # the key did travel, so the test can bite
    assert [r.reason for r in rejects] == ["llm_request_failed", "llm_request_failed", "llm_request_failed"]
    assert "X-Echo" in caplog.text  # the client logged the echoing header: the log path was taken
    fake.models_reply = error(401, "{auth} is not allowed")
    with pytest.raises(ConfigError) as refused:
        Segment(settings)
    texts = [
        caplog.text,
        str(refused.value),
        repr(out),
        repr(rejects),
        json.dumps(stats),
        json.dumps(segment_summary(stats)),
        *(text for _, text in file_texts(tmp_path)),
    ]
    assert [leaked(t) for t in texts if leaked(t)] == []
    assert all(keys.REDACTED in r.detail for r in rejects)  # the echoes reached the details


def put_in_first_target_chunk(placeholder):
    def change(answer):
        answer["items"][0]["levels"]["low"]["target_chunks"]["de"][0] += f" {placeholder}"

    return change


def test_an_answer_holding_the_key_is_never_cached_or_published(fake, tmp_path):
    """Target chunks need not repeat the reference word for word, so a key in one would pass
    every other check: the answer is invalid because it holds the key."""
    settings = settings_for(fake, tmp_path, batch_size=1, concurrency=1)
    fake.script = [
        answer_with(put_in_first_target_chunk("{key}")),
        answer_with(put_in_first_target_chunk("{key_escaped}")),  # stays escaped in the chunk's text
        answer_with(put_in_first_target_chunk("{key_split}")),
        answer_with(put_in_first_target_chunk("{key}")),
    ]  # then the server answers well
    out, rejects, stats = run_segment(settings, utterances(3), tmp_path)
    assert [(r.id, r.reason) for r in rejects] == [("u/0", "llm_invalid_answer"), ("u/1", "llm_invalid_answer")]
    assert "holds the API key" in rejects[0].detail and "after one repair" in rejects[0].detail
    assert [u.id for u in out] == ["u/2"] and stats["llm/repair_requests"] == 2
    texts = [repr(out), repr(rejects), *(text for _, text in file_texts(tmp_path))]
    assert [leaked(t) for t in texts if leaked(t)] == []


def test_the_llm_backend_fails_before_any_work(fake, tmp_path, monkeypatch):
    settings = settings_for(fake, tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ConfigError, match="needs an API key in the environment variable OPENAI_API_KEY"):
        Segment(settings)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(ConfigError, match="is not reachable"):
        Segment(settings_for(fake, tmp_path, base_url=closed))
    fake.models_reply = error(401, "bad key")
    with pytest.raises(ConfigError, match="refused the key in OPENAI_API_KEY"):
        Segment(settings)
    assert fake.chat_requests == []


@pytest.mark.parametrize(
    "broken, reason, asked",
    [
        # retried with backoff (max_retries 2: three attempts per request), then given up
        (error(429, "slow down", {"Retry-After": "0"}), "llm_unreachable", 3),
        (error(503, "overloaded"), "llm_unreachable", 3),
        (Reply(drop=True), "llm_unreachable", 3),  # the server went away after the preflight
        # refused for good: asking again would not help
        (error(401, "invalid api key"), "llm_request_failed", 1),
        (error(429, "no credit left", code="insufficient_quota"), "llm_request_failed", 1),
        (Reply(body="<html>proxy error</html>"), "llm_request_failed", 1),  # a 200 that is not JSON
        # answers, but garbage: one repair re-ask, then rejected
        (completion("I cannot help with that."), "llm_invalid_answer", 2),
        (Reply(body={"object": "chat.completion", "choices": []}), "llm_invalid_answer", 2),
    ],
)
def test_a_broken_service_ends_as_systemic_rejects(fake, tmp_path, broken, reason, asked):
    """Whatever way the server fails on every request, each utterance leaves as a reject whose
    reason the run counts against segment.max_reject_fraction, after the retries it deserves."""
    settings = settings_for(fake, tmp_path, batch_size=2, concurrency=1, max_retries=2)
    fake.always = broken
    out, rejects, stats = run_segment(settings, utterances(4), tmp_path)
    assert out == [] and stats["in"] == 4
    assert [r.reason for r in rejects] == [reason] * 4
    assert reason in SYSTEMIC_REASONS
    assert len(fake.chat_requests) == 2 * asked  # two requests of two utterances


def test_the_preflight_refuses_what_cannot_work_and_lets_the_rest_through(fake, tmp_path, caplog):
    """Before any work: an unreachable server, a refused key or no quota is a ConfigError; a
    rate-limited or odd model list is not a reason to stop (the chat calls will tell)."""
    settings = settings_for(fake, tmp_path)
    fake.models_reply = error(429, "no credit left {auth}", code="insufficient_quota")
    with pytest.raises(ConfigError, match="no quota left") as refused:
        Segment(settings)
    assert not leaked(str(refused.value))
    for odd in (error(429, "slow down {auth}"), error(400, "what? {key}"), Reply(body="not json {key}")):
        fake.models_reply = odd
        Segment(settings)
    assert "going on" in caplog.text and not leaked(caplog.text)
    assert fake.chat_requests == []


def test_the_segment_stage_declares_its_systemic_reasons():
    assert SYSTEMIC_REASONS == {"llm_unreachable", "llm_request_failed", "llm_invalid_answer"}
    assert load_settings().max_reject_fraction == 0.02
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="max_reject_fraction: must be within 0..1"):
            load_settings({"max_reject_fraction": bad})


def test_the_stage_accounts_for_every_utterance(fake, tmp_path):
    settings = settings_for(fake, tmp_path, aligner="eflomal", batch_size=4, concurrency=2)
    utts = utterances(8)
    utts[3] = utts[3].replace(translations={"de": utts[3].translations["de"]})  # only some languages
    utts.append(utterances(9)[8].replace(translations={}))
    out, rejects, stats = run_segment(settings, utts, tmp_path)
    assert stats["in"] == 9 and len(out) == 8 and [r.reason for r in rejects] == ["no_translation"]
    assert all(list(u.segmentations) == LEVELS for u in out)
    summary = segment_summary(stats)
    assert summary["llm"]["requests"] == 3  # the de+es utterances in 2 requests, the de-only one alone
    assert summary["llm"]["requests_per_utterance"] <= 0.5
    assert summary["tokens"]["prompt_per_audio_hour"] == pytest.approx(300 / (9 * 4 / 3600), rel=1e-3)
    assert set(summary["crossing_rate"]) == {"de", "es"}
    assert "LLM: 3 requests (0.3333 per utterance" in segment_card_section(summary)

    out, rejects, stats = run_segment(settings, utts, tmp_path)
    assert len(fake.chat_requests) == 3 and stats["llm/cache_hits"] == 8
    assert segment_summary(stats)["llm"]["requests_per_utterance"] == 0


def test_a_rejected_answer_never_reaches_the_dataset(fake, tmp_path):
    settings = settings_for(fake, tmp_path, batch_size=2)
    fake.script = [answer_with(drop_last_source_word), answer_with(drop_last_source_word)]
    out, rejects, stats = run_segment(settings, utterances(2), tmp_path)
    assert [u.id for u in out] == ["u/1"]
    assert [(r.id, r.reason) for r in rejects] == [("u/0", "llm_invalid_answer")]
    assert stats["in"] == 2 and stats["out"] == 1


# -- Batch API ---------------------------------------------------------------------------------


def test_batch_mode_fills_the_cache_and_resumes(tmp_path):
    with FakeOpenAI(polls_until_done=2) as fake:
        settings = settings_for(fake, tmp_path, batch_size=2).llm
        work = str(tmp_path / "batch")
        fake.script = [answer_with(drop_a_target_chunk)]  # the first request's first item comes back invalid
        state = batch_api.submit(settings, LEVELS, utterances(5), work)
        lines = (tmp_path / "batch" / state["batches"][0]["requests"]).read_text().splitlines()
        assert len(lines) == 3 and json.loads(lines[0])["url"] == "/v1/chat/completions"
        files = len(fake.files)
        assert batch_api.submit(settings, LEVELS, utterances(5), work)["batches"] == state["batches"]
        assert len(fake.files) == files  # resumed: nothing uploaded or started twice

        assert batch_api.collect(settings, LEVELS, work)["pending_batches"] == 1
        assert batch_api.status(settings, work)["batches"][0]["status"] == "completed"
        counts = batch_api.collect(settings, LEVELS, work)
        assert (counts["valid"], counts["invalid"], counts["prompt_tokens"]) == (4, 1, 300)
        assert batch_api.collect(settings, LEVELS, work)["valid"] == 0  # collected once

        asked = len(fake.chat_requests)
        outcomes = LlmSegmenter(settings, LEVELS).segment(utterances(5))
        assert [o.cache_hit for o in outcomes] == [False, True, True, True, True]
        assert len(fake.chat_requests) == asked + 1  # only the invalid one is asked online


def test_segment_batch_command(tmp_path, capsys):
    tsv = tmp_path / "sentences.tsv"
    tsv.write_text(
        "id\ten\tde\n" + "".join(f"s{k}\t{en}\t{tr['de']}\n" for k, (en, tr) in enumerate(SENTENCES))
    )
    work = tmp_path / "work"
    with FakeOpenAI() as fake:
        config = tmp_path / "curate.yaml"  # a curation config, read as curate reads it
        config.write_text(json.dumps({"segment": {"llm": {"base_url": fake.base_url}}}))
        run = ["--config", str(config), "--work-dir", str(work)]
        assert segment_batch.main(["submit", "--input", str(tsv), "--languages", "de", *run]) == 0
        assert json.loads(capsys.readouterr().out)["utterances"] == 5
        assert segment_batch.main(["collect", *run]) == 0
        assert json.loads(capsys.readouterr().out)["valid"] == 5
    # the run's work_dir holds the cache and the batch folder, as it would for curate
    assert {p.name for p in work.iterdir()} >= {"llm_answers", "segment_batch"}
    assert (work / "segment_batch" / "state.json").is_file()
    assert segment_batch.main(["submit", "--input", str(tsv), "--config", str(config),
                               "--work-dir", str(tmp_path / "other")]) == 2
    assert "needs --languages" in capsys.readouterr().err
    assert segment_batch.main(["status", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no config file" in capsys.readouterr().err
    bare = tmp_path / "bare.yaml"  # a segment section on its own is not a curation config
    bare.write_text(json.dumps({"llm": {"model": "m"}}))
    assert segment_batch.main(["status", "--config", str(bare), "--work-dir", str(work)]) == 2
    assert "unknown key(s) llm" in capsys.readouterr().err


# -- a real curate ------------------------------------------------------------------------------


def llm_overrides(fake, *more):
    return [
        "embed.enabled=false",
        "segment.backend=llm",
        f"segment.llm.base_url={fake.base_url}",
        "segment.llm.requests_per_minute=null",
        "segment.llm.backoff_s=0.01",
        "segment.llm.backoff_max_s=0.05",
        "segment.monotonicity.aligner=none",
        *more,
    ]


def published_utterances(out, path):
    """The offline rows of a build as segment-batch input (.jsonl): the texts the stage segmented."""
    import datasets

    ds = datasets.load_dataset(str(out), "offline")
    with open(path, "w", encoding="utf-8") as f:
        for split in ds:
            for row in ds[split].remove_columns(["audio"]):
                translations = {k: v for k, v in row["translation"].items() if v is not None}
                f.write(json.dumps({"id": row["id"], "source_text": row["source_text"],
                                    "translations": translations}, ensure_ascii=False) + "\n")
    return path


def test_the_llm_cache_lives_in_work_dir_whatever_the_cwd(demo_root, tmp_path, monkeypatch, capsys):
    """Two curates and a segment-batch, each from its own empty folder, with one work_dir: the
    first asks the server, the others find every answer in work_dir, and nothing is written
    anywhere else."""
    from conftest import curate

    folders = {name: tmp_path / name for name in ("cwd1", "cwd2", "cwd3")}
    for folder in folders.values():
        folder.mkdir()
    work = tmp_path / "work"
    with FakeOpenAI() as fake:

        def run(cwd, out):
            monkeypatch.chdir(folders[cwd])
            return curate(demo_root, tmp_path / out, langs=("de",), corpora=("mustc",), work_dir=str(work),
                          configs=("offline", "simulmt"), overrides=llm_overrides(fake))

        first = run("cwd1", "out1")
        asked = len(fake.chat_requests)
        assert asked > 0 and first["segment"]["llm"]["cache_hits"] == 0
        second = run("cwd2", "out2")
        assert len(fake.chat_requests) == asked  # no call: every answer came from work_dir
        assert second["segment"]["llm"]["cache_hits"] == second["segment"]["utterances"]["in"] > 0

        rows = published_utterances(tmp_path / "out1", tmp_path / "rows.jsonl")
        monkeypatch.chdir(folders["cwd3"])
        capsys.readouterr()
        argv = ["submit", "--input", str(rows), "--work-dir", str(work), "--set", f"segment.llm.base_url={fake.base_url}"]
        assert segment_batch.main(argv) == 0
        assert json.loads(capsys.readouterr().out)["utterances"] == 0  # the same cache: nothing left to ask
        assert fake.files == {}
    assert [p for folder in folders.values() for p in folder.iterdir()] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd1", "cwd2", "cwd3", "out1", "out2", "rows.jsonl", "work"]
    assert any((work / "llm_answers").rglob("*.json")) and (work / "segment_batch" / "state.json").is_file()


def test_a_real_curate_publishes_the_servers_chunks_at_the_configured_rate(demo_root, tmp_path):
    """`curate` with the LLM backend, four requests in flight at most and 120 requests a minute:
    the simulmt rows are the chunks the server answered, and the server saw its requests arrive
    at least 0.5 s apart (arrival times jitter a little around the client's spacing)."""
    import datasets

    from conftest import curate
    from fake_openai import asked_items, valid_answer

    rpm, tolerance_s = 120, 0.1
    with FakeOpenAI() as fake:
        stats = curate(demo_root, tmp_path / "out", langs=("de",), corpora=("mustc",), configs=("offline", "simulmt"),
                       overrides=llm_overrides(fake, f"segment.llm.requests_per_minute={rpm}",
                                               "segment.llm.batch_size=6", "segment.llm.concurrency=4"))
    answered = {}  # source text -> level -> chunks, as the server answered each request
    for body in fake.chat_requests:
        for item, answer in zip(asked_items(body), valid_answer(body)["items"], strict=True):
            answered[item["source"]] = answer["levels"]
    assert len(fake.chat_requests) == stats["segment"]["llm"]["requests"] >= 4
    gaps = [b - a for a, b in pairwise(fake.chat_times)]
    assert min(gaps) >= 60 / rpm - tolerance_s, gaps

    offline = datasets.load_dataset(str(tmp_path / "out"), "offline")
    simulmt = datasets.load_dataset(str(tmp_path / "out"), "simulmt")
    for split in offline:
        utterances = {row["id"]: row["source_text"] for row in offline[split].remove_columns(["audio"])}
        rows = list(simulmt[split])
        assert sorted((r["id"], r["latency"]) for r in rows) == sorted(
            (uid, level) for uid in utterances for level in LEVELS)
        for row in rows:
            levels = answered[utterances[row["id"]]]
            assert row["source_chunks"] == levels[row["latency"]]["source_chunks"]
            assert row["target_chunks"]["de"] == levels[row["latency"]]["target_chunks"]["de"]


def test_the_key_never_leaks_from_a_real_curate(demo_root, tmp_path):
    """`simulforge curate` and `segment-batch` in child processes (the HTTP client logging at
    DEBUG) against a server that echoes the key in every way it can: nothing they print or
    write holds a piece of it."""
    from segment_run import run_cli

    env = {"OPENAI_API_KEY": KEY}
    debug = ("openai", "httpx2", "httpcore2")
    work, out = tmp_path / "work", tmp_path / "out"
    cut_mid_key = "." * (300 - len("Error code: 403 - ") - 12)  # the 300-character cut keeps 12 of the key
    with FakeOpenAI() as fake:
        fake.models_reply = error(429, "{auth} slow down", {"Retry-After": "0"})  # the preflight goes on
        fake.script = [  # requests go one at a time (concurrency 1), in this order
            error(429, "{key_split} slow down", {"Retry-After": "0", "X-Echo": "{auth}"}),
            error(500, "{key_escaped} is busy"),
            error(401, "{auth} is not allowed"),  # request 1: rejected
            error(403, cut_mid_key + "{key} is not allowed here"),  # request 2: rejected
            answer_with(put_in_first_target_chunk("{key}")),  # request 3: its first item is repaired ...
            answer_with(drop_last_source_word),  # ... in vain
            Reply(body="<html>{auth}</html>"),  # request 4: not JSON
        ]
        overrides = llm_overrides(fake, "segment.llm.batch_size=4", "segment.llm.concurrency=1",
                                  "segment.max_reject_fraction=1.0")  # publish despite the rejects
        argv = ["curate", "--input", demo_root, "--output", out, "--work-dir", work, "--langs", "de",
                "--corpora", "mustc", "--set", "configs=[offline,simulmt]"]
        for o in overrides:
            argv += ["--set", o]
        curated, _ = run_cli(argv, tmp_path / "seen1.json", cwd=tmp_path, env=env, debug_loggers=debug)
        assert curated.returncode == 0, curated.stderr[-3000:]

        tsv = tmp_path / "sentences.tsv"
        tsv.write_text("id\ten\tde\n" + "".join(f"s{k}\t{en}\t{tr['de']}\n" for k, (en, tr) in enumerate(SENTENCES)))
        fake.batch_extra = {"request_counts": {"total": "{auth}", "completed": 0, "failed": "{key_escaped}"}}
        fake.script = [answer_with(put_in_first_target_chunk("{key}")), Reply(body="{auth}")]
        batch = ["--work-dir", work, "--set", f"segment.llm.base_url={fake.base_url}",
                 "--set", "segment.llm.batch_size=2"]
        submitted, _ = run_cli(["segment-batch", "submit", "--input", tsv, "--languages", "de", *batch],
                               tmp_path / "seen2.json", cwd=tmp_path, env=env, debug_loggers=debug)
        collected, _ = run_cli(["segment-batch", "collect", *batch],
                               tmp_path / "seen3.json", cwd=tmp_path, env=env, debug_loggers=debug)
        assert submitted.returncode == collected.returncode == 0, submitted.stderr[-2000:] + collected.stderr[-2000:]
        counts = json.loads(collected.stdout)  # 3 requests: a key in one item, a reply that is not JSON, good
        assert (counts["valid"], counts["invalid"], counts["failed_requests"]) == (2, 1, 1)
    assert any(KEY in a for a in fake.authorizations)  # the key travelled, so the test can bite

    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["segment"]["rejected"] == {"llm_request_failed": 12, "llm_invalid_answer": 1}
    assert "X-Echo" in curated.stderr and "HTTP Request" in curated.stderr  # the DEBUG log path was taken
    import datasets

    simulmt = datasets.load_dataset(str(out), "simulmt")
    rows = [json.dumps(row, ensure_ascii=False) for split in simulmt for row in simulmt[split]]
    texts = {"curate stdout": curated.stdout, "curate stderr": curated.stderr,
             "submit stdout": submitted.stdout, "submit stderr": submitted.stderr,
             "collect stdout": collected.stdout, "collect stderr": collected.stderr,
             **{f"simulmt row {n}": row for n, row in enumerate(rows)}, **dict(file_texts(out, work))}
    assert {where: leaked(text) for where, text in texts.items() if leaked(text)} == {}
    assert (out / "rejected.jsonl").read_text().count(keys.REDACTED) == 8  # the echoes reached the details
    assert {p.name for p in (work / "segment_batch").iterdir()} >= {"state.json", "items.jsonl"}
