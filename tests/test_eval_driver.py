"""The simultaneous decoding driver and `simulforge evaluate` on tiny runs trained here.

What the evaluator promises: a policy that waits for the whole input gives exactly the offline
output; a stream never encodes a block twice (nor the whole clip); delays follow the policy;
words are timed by their last subword; the logs are SimulEval's and score as SimulEval scores them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from simulforge.eval import policies as P  # noqa: E402
from simulforge.eval.agent import TRANSCRIPT as ASR  # noqa: E402
from simulforge.eval.driver import Decoder, Stream, _Frames  # noqa: E402
from simulforge.eval.instances import to_words  # noqa: E402
from simulforge.evaluate import main  # noqa: E402
from simulforge.models.encoder import StreamingEncoder  # noqa: E402
from simulforge.models.waitk import waitk_mask  # noqa: E402
from simulforge.training.data import log_mel  # noqa: E402
from simulforge.training.recipes import load_run  # noqa: E402

RUNS = ("bilingual", "unified", "easist", "jstar")  # wait-k single and joint multilingual, EASiST, JSTAR


@pytest.fixture(scope="module")
def runs(tiny_runs):
    """The tiny configs trained by conftest's `tiny_runs` (shared with test_training): each overfits the
    first three fixture clips, which are the ones decoded here."""
    for name in RUNS:
        tiny_runs(name)
    return tiny_runs.root


@pytest.fixture(scope="module")
def clips(published):
    import datasets

    ds = datasets.load_dataset(published, "offline", split="train").cast_column(
        "audio", datasets.Audio(sampling_rate=16000, num_channels=1))
    conv = datasets.load_dataset(published, "conversations", split="train")
    return ([ds[i]["audio"].get_all_samples().data for i in range(3)],
            [conv[i]["audio"].get_all_samples().data for i in range(2)])


def _feats(wave):
    return log_mel(wave, 16000).transpose(0, 1).reshape(1, -1, 80 * wave.shape[0])


def _decoder(runs, name, **kwargs):
    model, tok, info = load_run(runs / name)
    langs = {"bilingual": ["de"], "unified": ["de", "es"], "easist": ["de"], "jstar": ["de"]}[name]
    prompts = {"de": tok.encode("<2de>")} if name == "easist" else None
    return Decoder(model, info["family"], langs, prompts=prompts, sampling_rate=info["data"]["sampling_rate"],
                   **kwargs), model, tok


# The models' own offline decoding, written out here apart from their agents: greedy decoding with
# every encoder frame visible (wait-k), every block read then one write (EASiST).
def _waitk_offline(model, feats, lang: str, max_len: int = 200) -> list[int]:
    memory, lengths = model.encoder(feats, torch.tensor([feats.shape[1]]))
    tokens = [model.start_token(lang)]
    while len(tokens) <= max_len:
        mask = waitk_mask(len(tokens), lengths, model.cfg.encoder.block_len, None)
        token = int(model.decoder_for(lang)(torch.tensor([tokens]), memory, mask)[0, -1].argmax())
        if token == model.cfg.eos_id:
            break
        tokens.append(token)
    return tokens[1:]


def _easist_offline(model, feats, prompt: list[int], max_len: int = 200) -> list[int]:
    state, block = model.start(prompt), model.cfg.encoder.block_frames
    for i in range(-(-feats.shape[1] // block)):
        _, state = model.read(feats[:, i * block:(i + 1) * block], state)
    return model.write(state, max_len)[0]


# -- exactness ------------------------------------------------------------------------------------
def test_frames_arrive_incrementally_as_the_whole_clip_computes_them():
    wave = torch.randn(2, 16000 + 333)
    frames = _Frames(wave, 16000, 80)
    pieces, received = [], 0
    for step in (100, 500, 1700, 3000, 40, 8000, 10**6):
        received = min(wave.shape[1], received + step)
        available = frames.complete(received, received == wave.shape[1])
        if available > frames.computed:
            pieces.append(frames.take(available))
    assert frames.computed == 1 + (wave.shape[1] - 400) // 160
    assert torch.allclose(torch.cat(pieces, 1), _feats(wave), atol=1e-5)
    assert _Frames(torch.randn(1, 100), 16000, 80).complete(100, finished=True) == 1  # shorter than a window


@pytest.mark.parametrize("name", RUNS)
def test_waiting_for_the_whole_input_gives_exactly_the_offline_output(runs, clips, name):
    decoder, model, tok = _decoder(runs, name)
    waits = {"bilingual": P.WaitK(10**6), "unified": P.WaitK(10**6), "easist": P.PolicyHead(1.0),
             "jstar": P.Transducer()}[name]
    for wave in clips[1] if name == "jstar" else clips[0]:
        streamed = decoder.decode(wave, waits)
        offline = decoder.decode(wave, P.Offline())
        feats = _feats(wave)
        with torch.inference_mode():  # the model's own offline decoding
            if name == "easist":
                own = {"de": _easist_offline(model, feats, tok.encode("<2de>"))}
            elif name == "jstar":
                asr, st = model.decode_offline(feats)
                own = {ASR: asr, "de": st}
            else:
                own = {lang: _waitk_offline(model, feats, lang) for lang in decoder.languages}
        assert {t: s.tokens for t, s in streamed.streams.items()} == own
        assert {t: s.tokens for t, s in offline.streams.items()} == own
        assert any(own.values())
        # Offline: every token after the whole source, elapsed = source + computation so far.
        for stream in offline.streams.values():
            assert set(stream.delays) <= {offline.source_ms}
            assert all(e >= d for e, d in zip(stream.elapsed, stream.delays, strict=True))


# -- no re-encoding -------------------------------------------------------------------------------
@pytest.fixture
def encoder_calls(monkeypatch):
    """Every StreamingEncoder.forward_block call as (encoder, first position, frames out); whole-clip calls."""
    calls, whole = [], []
    block, forward = StreamingEncoder.forward_block, StreamingEncoder.forward

    def counted_block(self, feats, state):
        out, new = block(self, feats, state)
        calls.append((id(self), state.transformer.offset, out.shape[1]))
        return out, new

    def counted_forward(self, *args, **kwargs):
        whole.append(id(self))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(StreamingEncoder, "forward_block", counted_block)
    monkeypatch.setattr(StreamingEncoder, "forward", counted_forward)
    return calls, whole


@pytest.mark.parametrize("name,policy", [("bilingual", P.WaitK(1)), ("unified", P.AlignAtt(2)),
                                         ("unified", P.EDAtt(0.3)), ("easist", P.PolicyHead(0.3)),
                                         ("easist", P.WaitK(1)), ("jstar", P.Transducer())])
def test_streaming_never_encodes_a_block_twice(runs, clips, encoder_calls, name, policy):
    calls, whole = encoder_calls
    decoder, model, _ = _decoder(runs, name, segment_ms=30)
    wave = clips[1][0] if name == "jstar" else clips[0][0]
    decoder.decode(wave, policy)
    n_frames = _feats(wave).shape[1]
    block = (model.cfg.fast if name == "jstar" else model.cfg.encoder).block_frames
    assert whole == []
    assert len(calls) == math.ceil(n_frames / block)  # one call per block, each block once
    positions = [offset for _, offset, _ in calls]
    assert positions == [sum(n for _, _, n in calls[:i]) for i in range(len(calls))]  # in order, no repeat
    assert sum(n for _, _, n in calls) == math.ceil(n_frames / 4)  # every encoder frame exactly once


# -- policies and times --------------------------------------------------------------------------
def test_wait_k_delays_follow_k_and_elapsed_adds_computation(runs, clips):
    decoder, model, _ = _decoder(runs, "unified", segment_ms=40)
    wave = clips[0][1]
    n_samples, block_ms = wave.shape[1], model.cfg.encoder.block_frames * 10
    n_blocks = math.ceil(_feats(wave).shape[1] / model.cfg.encoder.block_frames)
    source_ms = 1000 * n_samples / 16000
    for k in (1, 3):
        out = decoder.decode(wave, P.WaitK(k))
        for stream in out.streams.values():
            assert stream.tokens and stream.delays == sorted(stream.delays)
            for u, delay in enumerate(stream.delays):
                # Token u needs k + u blocks: their audio, and 15 ms more for the last frame's 25 ms window.
                assert delay >= min(source_ms, min(k + u, n_blocks) * block_ms + 15)
            # The first token comes in the first 40 ms segment that completes block k (no early end predicted).
            assert stream.delays[0] <= min(source_ms, k * block_ms + 15 + 40)
            assert all(e > d for e, d in zip(stream.elapsed, stream.delays, strict=True))
            assert stream.elapsed == sorted(stream.elapsed)
        assert out.compute_ms >= max(s.elapsed[-1] - s.delays[-1] for s in out.streams.values())
    one = decoder.decode(wave, P.WaitK(1)).streams["de"].delays[0]
    three = decoder.decode(wave, P.WaitK(3)).streams["de"].delays[0]
    assert one < three


def test_the_decoder_refuses_what_the_family_cannot_decode(runs, clips):
    model, _, _ = load_run(runs / "jstar")
    with pytest.raises(ValueError, match=re.escape("JSTAR translates into one language, got ['de', 'es']")):
        Decoder(model, "jstar", ["de", "es"], sampling_rate=16000)
    with pytest.raises(ValueError, match="the jstar family cannot run the waitk policy"):
        Decoder(model, "jstar", ["de"], sampling_rate=16000).decode(clips[1][0], P.WaitK(3))
    easist, _, _ = load_run(runs / "easist")
    with pytest.raises(ValueError, match=re.escape("EASiST needs a prompt for every language, got []")):
        Decoder(easist, "easist", ["de"], sampling_rate=16000)


def test_attention_policies():
    attention = torch.tensor([0.1, 0.5, 0.1, 0.2, 0.1])
    assert P.EDAtt(0.4, frames=2).accept(attention, False)  # last two frames: 0.3 < 0.4
    assert not P.EDAtt(0.3, frames=2).accept(attention, False)
    assert P.AlignAtt(3).accept(attention, False)  # argmax 1 < 5 - 3
    assert not P.AlignAtt(4).accept(attention, False)
    assert P.AlignAtt(4).accept(attention, True)  # the source has ended: everything is written


def test_policy_parsing():
    class Cfg:
        policy_threshold = 0.6

    assert P.parse("waitk", None, None, Cfg) == [P.WaitK(3)]
    assert P.parse("easist", None, None, Cfg) == [P.PolicyHead(0.6)]
    assert P.parse("easist", None, "tau=0.3,0.5,0.3", Cfg) == [P.PolicyHead(0.3), P.PolicyHead(0.5)]
    assert P.parse("samu", "alignatt", "f=2,4", Cfg) == [P.AlignAtt(2), P.AlignAtt(4)]
    assert [P.label(p) for p in P.parse("waitk", "edatt", "alpha=0.2", Cfg)] == ["edatt_alpha=0.2"]
    assert P.parse("jstar", None, None, Cfg) == [P.Transducer()]
    for family, policy, sweep, message in [
        ("easist", "edatt", None, "the easist family runs policy-head, waitk, offline"),
        ("waitk", "waitk", "tau=0.5", "the waitk policy sweeps k"),
        ("waitk", "waitk", "k=0", "k: a whole number of blocks >= 1"),
        ("easist", None, "tau=1.5", "a probability in [0, 1]"),
        ("jstar", None, "k=1", "no latency knob"),
    ]:
        with pytest.raises(P.PolicyError, match=re.escape(message)):
            P.parse(family, policy, sweep, Cfg)


def test_words_are_timed_by_their_last_subword():
    pieces = {1: "▁Gu", 2: "ten", 3: "▁Mor", 4: "gen", 5: "<SELF>", 6: "▁!"}

    def decode(ids):
        return "".join(pieces[i] for i in ids).replace("▁", " ").strip()

    stream = Stream([5, 1, 2, 3, 4, 6], [0, 100, 200, 300, 400, 500], [10, 110, 220, 330, 440, 550])
    assert to_words(stream, decode, drop={5}) == ("Guten Morgen !", [200, 400, 500], [220, 440, 550])
    assert to_words(stream, decode) == ("<SELF> Guten Morgen !", [0, 200, 400, 500], [10, 220, 440, 550])
    assert to_words(Stream(), decode) == ("", [], [])


def test_report_scores_hand_computed(tmp_path):
    from simulforge.eval import report
    from simulforge.eval.instances import make_instance, write_instances

    # An SOT transcript: its words match the reference once the tags are off (WER 0), but "c" went to
    # OTHER: SELF "a b" vs "a b c" is 1 deletion, OTHER "c" vs "" 1 insertion: SA-WER 2 / 3.
    asr = tmp_path / "s" / "asr.log"
    asr.parent.mkdir()
    write_instances(asr, [make_instance(0, "<SELF> a b <OTHER> c", [100, 200, 300, 400, 500],
                                        [110, 220, 330, 440, 550], "<SELF> a b c", "x", 1000.0)])
    scores = report.score_log(asr, transcript=True, speakers=True)
    assert scores["WER"] == 0.0 and scores["SA-WER"] == pytest.approx(200 / 3)
    assert scores["ms_per_word"] == pytest.approx((550 - 500) / 5) and scores["StartOffset_CA"] == 110
    empty = tmp_path / "o" / "de.log"  # nothing predicted: BLEU 0, no latency
    empty.parent.mkdir()
    write_instances(empty, [make_instance(0, "", [], [], "Hallo", "x", 1000.0)])
    offline = report.score_log(empty)
    assert offline["BLEU"] == 0.0 and math.isnan(offline["LAAL"])

    settings = [{"name": "waitk_k=1", "policy": "waitk", "param": "k", "value": 1, "targets": {"asr": scores},
                 "compute": {"ms": 300.0, "tokens": 20, "utterances": 2}},
                {"name": "offline", "policy": "offline", "param": None, "value": None, "targets": {"de": offline},
                 "compute": {"ms": 200.0, "tokens": 16, "utterances": 2}}]
    summary = report.write(tmp_path, {"run": "r"}, settings)
    # 300 ms / 20 tokens streaming against 200 ms / 16 tokens offline: 15 / 12.5.
    assert summary["ms_per_token_vs_offline"] == {"waitk_k=1": pytest.approx(1.2)}
    written = json.loads((tmp_path / "scores.json").read_text())
    assert written["settings"][1]["targets"]["de"]["LAAL"] is None  # NaN is written as null
    assert written["plots"] == ["bleu_vs_laal.png", "bleu_vs_laal_ca.png"]


# -- the command ----------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")  # SimulEval's own
def test_evaluate_writes_simuleval_logs_scores_and_curves(runs, published, tmp_path):
    out = tmp_path / "eval"
    assert main(["--run", str(runs / "unified"), "--data", published, "--split", "train", "--limit", "3",
                 "--sweep", "k=1,3", "--out", str(out)]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert [s["name"] for s in scores["settings"]] == ["waitk_k=1", "waitk_k=3", "offline"]
    assert scores["languages"] == ["de", "es"] and scores["utterances"] == 3
    assert set(scores["ms_per_token_vs_offline"]) == {"waitk_k=1", "waitk_k=3"}
    for s in scores["settings"]:
        assert set(s["targets"]) == {"de", "es"} and s["compute"]["tokens"] > 0
        for target in s["targets"].values():
            assert {"BLEU", "chrF", "AL", "LAAL", "DAL", "AP", "LAAL_CA", "StartOffset", "ms_per_word"} <= set(target)
    assert scores["settings"][0]["targets"]["de"]["LAAL"] < scores["settings"][2]["targets"]["de"]["LAAL"]
    assert all((out / p).stat().st_size > 0 for p in scores["plots"]) and len(scores["plots"]) == 2

    log = out / "waitk_k=1" / "de" / "instances.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 3 and list(lines[0]) == ["index", "prediction", "delays", "elapsed", "prediction_length",
                                                  "reference", "source", "source_length"]
    assert lines[0]["reference"] == "die Katze schläft auf der Matte" and lines[0]["source"] == "demo/utt_0"
    # SimulEval 1.1.4 scores our log as we do.
    from simuleval.evaluator.instance import LogInstance
    from simuleval.evaluator.scorers.latency_scorer import LAALScorer
    from simuleval.evaluator.scorers.quality_scorer import SacreBLEUScorer

    theirs = {i: LogInstance(line) for i, line in enumerate(log.read_text().splitlines())}
    de = scores["settings"][0]["targets"]["de"]
    assert de["LAAL"] == pytest.approx(LAALScorer()(theirs))
    assert de["LAAL_CA"] == pytest.approx(LAALScorer(computation_aware=True)(theirs))
    assert de["BLEU"] == pytest.approx(SacreBLEUScorer()(theirs))


def test_evaluate_jstar_sot_outputs(runs, published, tmp_path):
    out = tmp_path / "eval"
    assert main(["--run", str(runs / "jstar"), "--data", published, "--split", "train", "--lang", "de",
                 "--out", str(out)]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["config"] == "conversations"
    transducer = scores["settings"][0]
    assert transducer["name"] == "transducer" and {"WER", "SA-WER"} <= set(transducer["targets"][ASR])
    assert "BLEU" in transducer["targets"]["de"]
    for setting in ("transducer", "offline"):
        de = [json.loads(line) for line in (out / setting / "de" / "instances.log").read_text().splitlines()]
        asr = [json.loads(line) for line in (out / setting / ASR / "instances.log").read_text().splitlines()]
        assert len(de) == len(asr) == scores["utterances"] == 3
        for instance in de + asr:  # the run overfits these conversations: every output says something
            assert instance["prediction"].strip(), (setting, instance)
            assert len(instance["delays"]) == len(instance["prediction"].split())
        assert all("<" not in i["reference"] and "<" not in i["prediction"] for i in de)  # no speaker tags in BLEU
        assert all(i["reference"].startswith("<SELF>") for i in asr)


def test_evaluate_easist_sweeps_the_policy_threshold(runs, published, tmp_path):
    out = tmp_path / "eval"
    assert main(["--run", str(runs / "easist"), "--data", published, "--split", "train", "--limit", "2",
                 "--sweep", "tau=0.0,1.0", "--out", str(out)]) == 0
    settings = {s["name"]: s["targets"]["de"] for s in json.loads((out / "scores.json").read_text())["settings"]}
    assert list(settings) == ["policy-head_tau=0", "policy-head_tau=1", "offline"]
    # tau=1 never writes before the end: the offline output and latency.
    assert settings["policy-head_tau=1"]["BLEU"] == pytest.approx(settings["offline"]["BLEU"])
    assert settings["policy-head_tau=1"]["LAAL"] == pytest.approx(settings["offline"]["LAAL"])
    assert settings["policy-head_tau=0"]["LAAL"] < settings["offline"]["LAAL"]


@pytest.mark.parametrize("args,message", [
    (["--policy", "edatt"], "the easist family runs policy-head, waitk, offline"),
    (["--sweep", "k=2"], "the policy-head policy sweeps tau"),
    (["--lang", "fr"], "the dataset has no fr references"),
    (["--config", "simulmt"], "lacks column(s) audio"),
    (["--split", "test"], "has no split 'test'"),
])
def test_bad_input_is_named(runs, published, tmp_path, capsys, args, message):
    assert main(["--run", str(runs / "easist"), "--data", published, "--split", "train",
                 "--out", str(tmp_path / "eval"), *args]) == 2
    assert message in capsys.readouterr().err


def test_jstar_decodes_the_language_its_run_records_and_a_run_must_exist(runs, published, tmp_path, capsys):
    # run.yaml records the joint stage's language (model.language): no --lang needed on two-language data.
    assert yaml.safe_load((runs / "jstar" / "run.yaml").read_text())["model"]["language"] == "de"
    assert main(["--run", str(runs / "jstar"), "--data", published, "--split", "train", "--out",
                 str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "scores.json").read_text())["languages"] == ["de"]
    assert main(["--run", str(runs / "jstar"), "--data", published, "--split", "train", "--lang", "es"]) == 2
    assert "the run does not translate into es; it has de" in capsys.readouterr().err
    old = tmp_path / "old"  # a run from before the record: --lang it must be
    shutil.copytree(runs / "jstar", old, ignore=shutil.ignore_patterns("cache"))
    info = yaml.safe_load((old / "run.yaml").read_text())
    del info["model"]["language"]
    (old / "run.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    assert main(["--run", str(old), "--data", published, "--split", "train"]) == 2
    assert "JSTAR translates into one language: pass --lang" in capsys.readouterr().err
    assert main(["--run", str(tmp_path / "nothing"), "--data", published]) == 2
    assert "holds no finished run" in capsys.readouterr().err


# -- a k per language: joint decoding of asynchronously trained models --------------------------------
def _log(out, setting: str, lang: str) -> list[dict]:
    return [json.loads(line) for line in (out / setting / lang / "instances.log").read_text().splitlines()]


@pytest.mark.parametrize("name", ["unified", "separate"])  # one decoder with language tags; one per language
def test_evaluate_decodes_jointly_with_a_k_per_language(runs, tiny_runs, published, tmp_path, name):
    tiny_runs(name)
    run = tiny_runs.root / name
    block_ms = load_run(run)[0].cfg.encoder.block_frames * 10
    common = ["--run", str(run), "--data", published, "--split", "train", "--limit", "2"]
    assert main([*common, "--k", "de=2,es=3", "--out", str(tmp_path / "joint")]) == 0
    scores = json.loads((tmp_path / "joint" / "scores.json").read_text())
    assert [s["name"] for s in scores["settings"]] == ["waitk_de=2,es=3", "offline"]
    assert scores["settings"][0]["k"] == {"de": 2, "es": 3} and scores["languages"] == ["de", "es"]
    for lang, k in (("de", 2), ("es", 3)):
        joint = _log(tmp_path / "joint", "waitk_de=2,es=3", lang)
        for instance in joint:  # the first word waits for k blocks (+ the last frame's 25 ms window), mid-clip
            assert instance["prediction"].strip() and instance["source_length"] > k * block_ms + 15
            assert instance["delays"][0] >= k * block_ms + 15
        # The joint decoding equals decoding the language alone at its k (the single-k form of --k).
        assert main([*common, "--lang", lang, "--k", str(k), "--out", str(tmp_path / lang)]) == 0
        alone = _log(tmp_path / lang, f"waitk_k={k}", lang)
        assert [(i["prediction"], i["delays"]) for i in joint] == [(i["prediction"], i["delays"]) for i in alone]
    # es at k=3 is not es at de's k=2: the joint decoding did not give every language one k.
    assert main([*common, "--lang", "es", "--k", "2", "--out", str(tmp_path / "es2")]) == 0
    assert _log(tmp_path / "es2", "waitk_k=2", "es") != _log(tmp_path / "es", "waitk_k=3", "es")


def test_evaluate_decodes_each_language_at_the_k_it_trained_with_by_default(runs, tiny_runs, published, tmp_path):
    """unified_tiny trains de at k=3 and es at k=5: without --k or --sweep, evaluate decodes so (run.yaml
    records the ks), not every language at one default k, which gives es outputs it never learned."""
    tiny_runs("unified")
    run = tiny_runs.root / "unified"
    assert yaml.safe_load((run / "run.yaml").read_text())["waitk"] == {"de": 3, "es": 5}
    common = ["--run", str(run), "--data", published, "--split", "train", "--limit", "2"]
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    scores = json.loads((tmp_path / "default" / "scores.json").read_text())
    assert [s["name"] for s in scores["settings"]] == ["waitk_de=3,es=5", "offline"]
    assert main([*common, "--k", "de=3,es=5", "--out", str(tmp_path / "given")]) == 0
    for lang in ("de", "es"):
        default, given = (_log(tmp_path / d, "waitk_de=3,es=5", lang) for d in ("default", "given"))
        assert [(i["prediction"], i["delays"]) for i in default] == [(i["prediction"], i["delays"]) for i in given]
    # One language evaluated alone: its own trained k.
    assert main([*common, "--lang", "es", "--out", str(tmp_path / "es")]) == 0
    assert [s["name"] for s in json.loads((tmp_path / "es" / "scores.json").read_text())["settings"]] == \
        ["waitk_k=5", "offline"]


@pytest.mark.parametrize("run,args,message", [
    ("unified", ["--k", "de=3,fr=4"], "--k: the run does not translate into fr; it has de, es"),
    ("unified", ["--k", "de=3"], "--k: no k for es; give every evaluated language its k (de, es)"),
    ("unified", ["--lang", "de", "--k", "de=3,es=5"], "--k: es is not evaluated (--lang de)"),
    ("unified", ["--k", "de=3,es"], "--k de=3,es: expected LANG=K pairs separated by commas"),
    ("unified", ["--k", "de=3,es=0"], "--k de=3,es=0: es's k must be a whole number of blocks >= 1, got '0'"),
    ("unified", ["--k", "de=3,de=4"], "de is given more than once"),
    ("unified", ["--k", "de=3,es=5", "--sweep", "k=1"], "--k de=3,es=5 and --sweep k=1: give the latency setting once"),
    ("unified", ["--policy", "edatt", "--k", "de=3,es=5"], "a k per language is the waitk policy's, not edatt's"),
    ("easist", ["--k", "de=3"], "--k: the easist family decodes each language alone"),
])
def test_bad_k_is_named(runs, published, tmp_path, capsys, run, args, message):
    assert main(["--run", str(runs / run), "--data", published, "--split", "train", "--limit", "1",
                 "--out", str(tmp_path / "eval"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
