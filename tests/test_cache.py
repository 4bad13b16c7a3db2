"""The caches that outlive a worker: content-addressed objects under work_dir (transforms/objects.py),
holding LLM answers and corpus alignments, read back by any worker of any later run."""

import json
import multiprocessing
from collections import Counter

import pytest

from fake_openai import FakeOpenAI, asked_items
from segment_run import run_cli
from simulforge.transforms.objects import Objects, digest
from simulforge.transforms.segment_align import alignment_key
from simulforge.transforms.segment_llm.cache import AnswerCache
from simulforge.transforms.segment_llm.prompt import Item

KEY = "sk-test-cache-4242"


def test_objects_are_named_by_their_key_and_read_back(tmp_path):
    store = Objects(str(tmp_path / "objs"))
    key = digest({"what": "made it", "n": 1})
    assert key == digest({"n": 1, "what": "made it"})  # canonical JSON: key order does not matter
    assert store.get(key) is None
    path = store.put_json(key, {"links": [[0, 1]]})
    assert path == str(tmp_path / "objs" / key[:2] / f"{key}.json")
    assert store.get_json(key) == {"links": [[0, 1]]}
    assert [p.name for p in (tmp_path / "objs" / key[:2]).iterdir()] == [f"{key}.json"]  # no temporary left
    with pytest.raises(ValueError, match="not a hex digest"):
        store.path("../../etc/passwd")


def _write_many(root, key, size, times):
    store = Objects(root)
    for n in range(times):
        store.put(key, bytes([n % 251]) * size)


def test_a_reader_never_sees_a_half_written_object(tmp_path):
    """Two processes rewrite one 4 MB object while this one reads it: every read is all of one write."""
    root, key, size = str(tmp_path / "objs"), digest("big"), 4 << 20
    writers = [multiprocessing.get_context("spawn").Process(target=_write_many, args=(root, key, size, 15))
               for _ in range(2)]
    for w in writers:
        w.start()
    store, reads = Objects(root), 0
    while any(w.is_alive() for w in writers):
        data = store.get(key)
        if data is not None:
            reads += 1
            assert len(data) == size and data.count(data[:1]) == size
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert reads > 0
    assert sorted(p.name for p in (tmp_path / "objs" / key[:2]).iterdir()) == [f"{key}.json"]


def test_a_damaged_or_foreign_answer_is_asked_again(tmp_path, caplog):
    cache = AnswerCache(str(tmp_path / "answers"))
    item = Item(digest("item"), "Hello there.", {"de": "Hallo."})
    assert cache.get(item) is None
    cache.objects.put(item.key, b'{"source": "Hello')  # cut short
    assert cache.get(item) is None and "cannot be read" in caplog.text
    cache.objects.put_json(item.key, {"source": "Other.", "translations": {"de": "Anders."}, "levels": {}})
    assert cache.get(item) is None and "another utterance's texts" in caplog.text


def test_the_alignment_key_covers_what_changes_the_links():
    from simulforge.transforms.segment import load_settings

    eflomal = load_settings().align.eflomal
    pairs = [("a b", "x y")]
    base = alignment_key(pairs, eflomal, [])
    assert alignment_key(list(pairs), eflomal, []) == base
    other_settings = type(eflomal)(**{**eflomal.__dict__, "null_prior": 0.3})
    assert len({base, alignment_key(pairs, other_settings, []), alignment_key(pairs, eflomal, [("c", "z")]),
                alignment_key([("a b", "x z")], eflomal, [])}) == 4


def _curate(demo_root, tmp_path, machine, out, work, fake, runner):
    """`simulforge curate` in a child process whose HOME, TMPDIR and cwd are `machine`'s own folders:
    nothing it could keep on a worker's disk survives into another machine's run."""
    home = tmp_path / machine
    for sub in ("home", "tmp", "cwd"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    argv = ["curate", "--input", demo_root, "--output", tmp_path / out, "--work-dir", work, "--langs", "de",
            "--corpora", "mustc,covost", "--set", "configs=[offline,simulmt]", "--set", "embed.enabled=false",
            "--set", "segment.backend=llm", "--set", f"segment.llm.base_url={fake.base_url}",
            "--set", "segment.llm.requests_per_minute=null", "--set", "segment.monotonicity.aligner=none",
            "--set", "segment.llm.batch_size=4", "--set", "segment.llm.concurrency=2", *runner]
    env = {"OPENAI_API_KEY": KEY, "HOME": str(home / "home"), "TMPDIR": str(home / "tmp")}
    proc, _ = run_cli(argv, home / "seen.json", cwd=home / "cwd", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / out / "stats.json").read_text())["segment"]


def test_a_rerun_on_another_machine_makes_no_llm_call_and_no_text_is_asked_twice(demo_root, tmp_path):
    """Two worker processes curate with the LLM backend; the same sentence read by several speakers
    is asked for once in the run. A second run, as another machine would do it (its own home, temp
    folder and cwd, one worker) with the same work_dir, finds every answer there: no call at all."""
    work = tmp_path / "work"
    with FakeOpenAI() as fake:
        first = _curate(demo_root, tmp_path, "machine-a", "out1", work, fake,
                        ["--runner-profile", "direct-mp", "--direct_num_workers=2"])
        asked = Counter(json.dumps([it["source"], it["translations"]], sort_keys=True)
                        for body in fake.chat_requests for it in asked_items(body))
        utterances = first["utterances"]["in"]
        assert utterances > len(asked) > 0  # some texts repeat, so a duplicate ask could happen
        assert [text for text, n in asked.items() if n > 1] == []
        assert len(fake.chat_requests) == first["llm"]["requests"]
        assert len(list((work / "llm_answers").rglob("*.json"))) == len(asked)

        calls = len(fake.chat_requests)
        second = _curate(demo_root, tmp_path, "machine-b", "out2", work, fake, ["--runner-profile", "direct"])
        assert len(fake.chat_requests) == calls  # 0 calls
        assert second["llm"]["cache_hits"] == second["utterances"]["in"] == utterances
    for out in ("out1", "out2"):  # the same answers, so the same rows (simulmt's rows of one id come
        # in the runner's order, so the bytes, hence the build id, may differ between the two runners)
        shards = {(p.parent.name, p.name.split("-")[0]): _rows(p) for p in (tmp_path / out / "data").rglob("*.parquet")}
        if out == "out1":
            first_shards = shards
    assert len(shards) == 6 and shards == first_shards


def _rows(path):
    import pyarrow.parquet as pq

    return sorted(json.dumps(row, sort_keys=True, default=repr) for row in pq.read_table(path).to_pylist())


def test_an_old_sqlite_cache_is_named_and_not_read(tmp_path, caplog, monkeypatch):
    from simulforge.transforms.segment import load_settings
    from simulforge.transforms.segment_llm import check_ready

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    (tmp_path / "segment_llm.sqlite").write_bytes(b"SQLite format 3\0")
    with FakeOpenAI() as fake:
        settings = load_settings({"backend": "llm", "llm": {"base_url": fake.base_url,
                                                            "cache_dir": str(tmp_path / "llm_answers")}})
        check_ready(settings.llm, settings.levels)
    assert f"{tmp_path / 'segment_llm.sqlite'} (the answer cache of an older simulforge) is not read" in caplog.text


def test_answers_kept_in_an_s3_bucket_serve_a_second_segmenter(tmp_path, monkeypatch):
    """The answer cache on moto's S3 server (tests/bucket.py), through Beam's S3 filesystem: a second
    segmenter, sharing nothing with the first but the bucket, asks nothing."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from bucket import S3Server
    from simulforge.transforms.records import AudioRef, Utterance
    from simulforge.transforms.segment import load_settings
    from simulforge.transforms.segment_llm import LlmSegmenter

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    utts = [Utterance(id=f"u/{k}", corpus="t", split="train", audio=AudioRef("x.wav", duration_s=2.0), speaker="s",
                      source_lang="en", source_text=f"The museum is closed on day {k}.",
                      translations={"de": f"Das Museum ist am Tag {k} geschlossen."}) for k in range(5)]
    store = S3Server(tmp_path, tmp_path / "moto.log")
    try:
        root = store.make_bucket("work") + "/run/llm_answers"
        FileSystems.set_options(PipelineOptions(store.beam_args()))
        with FakeOpenAI() as fake:
            settings = load_settings({"backend": "llm", "llm": {"base_url": fake.base_url, "cache_dir": root,
                                                                "batch_size": 2, "requests_per_minute": None}})
            first = LlmSegmenter(settings.llm, settings.levels).segment(utts)
            assert len(fake.chat_requests) == 3 and all(o.segmentations and not o.cache_hit for o in first)
            again = LlmSegmenter(settings.llm, settings.levels).segment(utts)
            assert len(fake.chat_requests) == 3 and all(o.cache_hit for o in again)
        assert [o.segmentations for o in again] == [o.segmentations for o in first]
        assert len([k for k in store.keys("s3://work/run/llm_answers") if k.endswith(".json")]) == 5
    finally:
        FileSystems.set_options(PipelineOptions([]))
        store.close()
