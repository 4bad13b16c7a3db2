import json
import logging
import re
import socket
import time

import pytest

from fake_openai import FakeOpenAI, Reply, answer_with, completion, error
from segment_run import run_segment
from simulforge import segment_batch
from simulforge.transforms import segment_llm
from simulforge.transforms.records import AudioRef, Utterance
from simulforge.transforms.segment import Segment, card_section, load_settings, summarize
from simulforge.transforms.segment_llm import (
    InvalidAnswer,
    Item,
    LlmSegmenter,
    batch_collect,
    batch_status,
    batch_submit,
    build_messages,
    check_answer,
    load_prompt,
    parse_answer,
)
from simulforge.transforms.settings import ConfigError

KEY = "sk-test-DO-NOT-LEAK-4242"
LEVELS = ["low", "medium", "high"]

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
                "cache_path": str(tmp_path / "cache.sqlite"),
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


def test_the_api_key_never_leaks(fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    settings = settings_for(fake, tmp_path, batch_size=2, concurrency=1)
    leak = "{auth} is not allowed"  # the server echoes the Authorization header into its errors
    fake.script = [error(429, leak, {"Retry-After": "0"}), error(500, leak), error(401, leak)]
    utts = utterances(3)
    out, rejects, stats = run_segment(settings, utts, tmp_path)
    assert any(KEY in a for a in fake.authorizations)  # the key did travel, so the test can bite
    assert [r.reason for r in rejects] == ["llm_request_failed", "llm_request_failed"]
    assert "[redacted]" in rejects[0].detail
    fake.models_reply = error(401, leak)
    with pytest.raises(ConfigError) as refused:
        Segment(settings)
    texts = [
        caplog.text,
        str(refused.value),
        repr(out),
        repr(rejects),
        json.dumps(stats),
        json.dumps(summarize(stats)),
    ]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert not [t for t in texts if KEY in t]


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


def test_the_stage_accounts_for_every_utterance(fake, tmp_path):
    settings = settings_for(fake, tmp_path, aligner="eflomal", batch_size=4, concurrency=2)
    utts = utterances(8)
    utts[3] = utts[3].replace(translations={"de": utts[3].translations["de"]})  # only some languages
    utts.append(utterances(9)[8].replace(translations={}))
    out, rejects, stats = run_segment(settings, utts, tmp_path)
    assert stats["in"] == 9 and len(out) == 8 and [r.reason for r in rejects] == ["no_translation"]
    assert all(list(u.segmentations) == LEVELS for u in out)
    summary = summarize(stats)
    assert summary["llm"]["requests"] == 3  # the de+es utterances in 2 requests, the de-only one alone
    assert summary["llm"]["requests_per_utterance"] <= 0.5
    assert summary["tokens"]["prompt_per_audio_hour"] == pytest.approx(300 / (9 * 4 / 3600), rel=1e-3)
    assert set(summary["crossing_rate"]) == {"de", "es"}
    assert "LLM: 3 requests (0.3333 per utterance" in card_section(summary)

    out, rejects, stats = run_segment(settings, utts, tmp_path)
    assert len(fake.chat_requests) == 3 and stats["llm/cache_hits"] == 8
    assert summarize(stats)["llm"]["requests_per_utterance"] == 0


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
        state = batch_submit(settings, LEVELS, utterances(5), work)
        lines = (tmp_path / "batch" / state["batches"][0]["requests"]).read_text().splitlines()
        assert len(lines) == 3 and json.loads(lines[0])["url"] == "/v1/chat/completions"
        files = len(fake.files)
        assert batch_submit(settings, LEVELS, utterances(5), work)["batches"] == state["batches"]
        assert len(fake.files) == files  # resumed: nothing uploaded or started twice

        assert batch_collect(settings, LEVELS, work)["pending_batches"] == 1
        assert batch_status(settings, work)["batches"][0]["status"] == "completed"
        counts = batch_collect(settings, LEVELS, work)
        assert (counts["valid"], counts["invalid"], counts["prompt_tokens"]) == (4, 1, 300)
        assert batch_collect(settings, LEVELS, work)["valid"] == 0  # collected once

        asked = len(fake.chat_requests)
        outcomes = LlmSegmenter(settings, LEVELS).segment(utterances(5))
        assert [o.cache_hit for o in outcomes] == [False, True, True, True, True]
        assert len(fake.chat_requests) == asked + 1  # only the invalid one is asked online


def test_segment_batch_command(tmp_path, capsys):
    tsv = tmp_path / "sentences.tsv"
    tsv.write_text(
        "id\ten\tde\n" + "".join(f"s{k}\t{en}\t{tr['de']}\n" for k, (en, tr) in enumerate(SENTENCES))
    )
    with FakeOpenAI() as fake:
        config = tmp_path / "curate.yaml"
        config.write_text(
            json.dumps(
                {
                    "segment": {
                        "llm": {
                            "base_url": fake.base_url,
                            "cache_path": str(tmp_path / "c.sqlite"),
                            "batch_dir": str(tmp_path / "b"),
                        }
                    }
                }
            )
        )
        assert (
            segment_batch.main(["submit", "--input", str(tsv), "--languages", "de", "--config", str(config)])
            == 0
        )
        assert json.loads(capsys.readouterr().out)["utterances"] == 5
        assert segment_batch.main(["collect", "--config", str(config)]) == 0
        assert json.loads(capsys.readouterr().out)["valid"] == 5
    other = ["--config", str(config), "--work-dir", str(tmp_path / "other")]
    assert segment_batch.main(["submit", "--input", str(tsv), *other]) == 2
    assert "needs --languages" in capsys.readouterr().err
    assert segment_batch.main(["status", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no config file" in capsys.readouterr().err
    assert segment_llm.redact(f"x {KEY} y", KEY) == "x [redacted] y"
