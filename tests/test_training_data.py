"""Training data: a tiny published dataset (all four configs) built here, loaded back through
`datasets`, log-mel features, bucketing, tokenizers with special tokens.

`build_published` is also used by the other training tests (imported from this module); conftest's
session fixture `published` builds it once.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from scipy.signal import resample_poly  # noqa: E402

from simulforge.training import data as D  # noqa: E402
from simulforge.training.config import ConfigError, TokenizerConfig  # noqa: E402
from simulforge.training.tokenizer import build_tokenizer, check_specials, train_sentencepiece  # noqa: E402

RATE = 16000
LANGS = ["de", "es"]
LEVELS = ["low", "high"]
# (source chunks, de chunks, es chunks): the low level uses these chunks, the high level one chunk.
SENTENCES = [
    (["the cat", "sleeps on the mat"], ["die Katze", "schläft auf der Matte"], ["el gato", "duerme en la alfombra"]),
    (["we read", "a good book"], ["wir lesen", "ein gutes Buch"], ["leemos", "un buen libro"]),
    (["my friend", "drinks cold water"], ["mein Freund", "trinkt kaltes Wasser"], ["mi amigo", "bebe agua fría"]),
    (["the sun", "is very hot today"], ["die Sonne", "ist heute sehr heiß"], ["el sol", "hace mucho calor hoy"]),
    (["she walks", "to the old house"], ["sie geht", "zum alten Haus"], ["ella camina", "a la casa vieja"]),
    (["they sing", "a happy song"], ["sie singen", "ein fröhliches Lied"], ["cantan", "una canción alegre"]),
]
SELF, OTHER = "<SELF>", "<OTHER>"


def speak(text: str, voice: str = "en", rate: int = RATE) -> np.ndarray:
    """espeak-ng -> float32 mono at `rate` (16 kHz). Without espeak-ng the tests that need speech skip: a tone
    passed off as speech would let them pass on nothing."""
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed (make setup installs it): no speech to build the dataset from")
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "190", "--stdout", text], check=True,
                         capture_output=True).stdout
    import io

    import soundfile as sf

    samples, own = sf.read(io.BytesIO(wav), dtype="float32")
    return resample_poly(samples, rate // 50, own // 50).astype(np.float32)


def _utterances(clips, rate: int = RATE):
    """The fixture's utterances, their clips written into the folder `clips` as the audio stage would."""
    from simulforge.transforms.audio import encode_flac
    from simulforge.transforms.records import AudioRef, Segmentation, Utterance

    utts = []
    for i, (src, de, es) in enumerate(SENTENCES):
        samples = speak(" ".join(src), rate=rate)
        duration = len(samples) / rate
        rng = np.random.default_rng(i)
        emb = rng.standard_normal(384).astype(np.float32)
        segs = {
            "low": Segmentation("low", src, {"de": de, "es": es}),
            "high": Segmentation("high", [" ".join(src)], {"de": [" ".join(de)], "es": [" ".join(es)]}),
        }
        translations = {"de": " ".join(de), "es": " ".join(es)}
        if i == 5:
            translations.pop("es")  # a clip without a Spanish translation
            for seg in segs.values():
                seg.target_chunks.pop("es")
        clip = clips / f"utt_{i}.flac"
        clip.write_bytes(encode_flac(samples, rate))
        utts.append(Utterance(
            id=f"demo/utt_{i}", corpus="demo", split="train", audio=AudioRef(str(clip)), speaker=f"spk{i % 2}",
            source_lang="en", source_text=" ".join(src), translations=translations, duration_s=duration,
            segmentations=segs, embedding=(emb / np.linalg.norm(emb)).tolist()))
    return utts


BLOCK_SAMPLES = 15360  # the curate default (960 ms): the EASiST tiny config's block


def _timed(utt):
    """The utterance with word timings spread evenly over the clip (good enough for a fixture)."""
    from simulforge.transforms.records import Timing

    words = utt.source_text.split()
    step = utt.duration_s / (len(words) + 1)
    timed = [(w, round((i + 0.5) * step, 3), round((i + 1.5) * step, 3)) for i, w in enumerate(words)]
    ends = {}
    for name, seg in utt.segmentations.items():
        counts = np.cumsum([len(c.split()) for c in seg.source_chunks])
        ends[name] = [timed[c - 1][2] for c in counts]
    return utt.replace(timing=Timing(words=timed, chunk_end_s=ends))


def simulst_rows_of(utts, rate: int = RATE) -> tuple[datasets.Features, list[dict]]:
    from simulforge.pipeline.dataset_configs.simulst import row, simulst_features

    features = simulst_features(LANGS, LEVELS, rate, 384)
    block = BLOCK_SAMPLES * rate // RATE  # 960 ms at any rate
    return features, [row(_timed(u), LANGS, LEVELS, block_samples=block, sampling_rate=rate) for u in utts]


def _written(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def _conversations(utts, rate: int = RATE):
    from simulforge.pipeline.dataset_configs.conversations import conversation_features, row
    from simulforge.transforms.records import AudioRef, Conversation
    from simulforge.transforms.simulate import _flac
    from simulforge.transforms.sot import segment_table, sot_text, sot_translations

    rows = []
    tokens = {"SELF": SELF, "OTHER": OTHER}
    for k in range(3):
        a, b = utts[2 * k], utts[2 * k + 1]
        sa, _ = D_decode(open(a.audio.path, "rb").read())
        sb, _ = D_decode(open(b.audio.path, "rb").read())
        gap = int(0.2 * rate)
        n = len(sa) + gap + len(sb)
        channels = np.zeros((2, n), np.float32)
        channels[0, : len(sa)] += sa
        channels[1, : len(sa)] += 0.4 * sa
        channels[0, len(sa) + gap:] += 0.4 * sb
        channels[1, len(sa) + gap:] += sb
        a_ms, b_ms = round(1000 * len(sa) / rate), round(1000 * len(sb) / rate)
        table = segment_table([("SELF", 0, a_ms, a), ("OTHER", a_ms + 200, a_ms + 200 + b_ms, b)])
        conv = Conversation(
            id=f"conv_{k}", split="train", channels=2, sampling_rate=rate,
            room={"index": k, "array": "pair", "dims_m": [4.0, 5.0, 3.0], "rt60_s": 0.3, "absorption": 0.3,
                  "max_order": 3, "mic_positions_m": [[1.0, 1.0, 1.5], [1.2, 1.0, 1.5]],
                  "source_positions_m": {"self": [1.1, 1.2, 1.6], "other": [3.0, 4.0, 1.6]}, "snr_db": 20.0,
                  "channel_names": ["left", "right"]},
            segments=table, sot_text=sot_text(table, tokens), sot_translations=sot_translations(table, tokens),
            audio=AudioRef(_written(os.path.join(os.path.dirname(a.audio.path), f"conv_{k}.flac"),
                                    _flac(channels, rate))))
        rows.append(row(conv, LANGS))
    return rows, conversation_features(LANGS, rate)


def D_decode(flac: bytes):
    from simulforge.transforms.audio import decode_flac

    return decode_flac(flac)


def build_published(root, *, embedding: bool = True, drop_configs=(), rate: int = RATE) -> str:
    """A dataset folder in the published layout with offline, simulst, simulmt and conversations,
    its audio at `rate`."""
    from simulforge.pipeline.dataset_configs.offline import offline_features, offline_row
    from simulforge.pipeline.dataset_configs.simulmt import simulmt_features, simulmt_rows

    clips = root.parent / f"{root.name}.clips"  # beside the dataset folder, which holds only the dataset
    clips.mkdir(parents=True, exist_ok=True)
    utts = _utterances(clips, rate)
    conv_rows, conv_features = _conversations(utts, rate)
    configs = {
        "offline": (offline_features(LANGS, rate, 384 if embedding else None), [offline_row(u, LANGS) for u in utts]),
        "simulst": simulst_rows_of(utts, rate),
        "simulmt": (simulmt_features(LANGS), [r for u in utts for r in simulmt_rows(u, LANGS)]),
        "conversations": (conv_features, conv_rows),
    }
    card = {"configs": [], "dataset_info": []}
    for name, (features, rows) in configs.items():
        if name in drop_configs:
            continue
        if not embedding:
            for r in rows:
                r.pop("embedding", None)
        (root / "data" / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=features.arrow_schema),
                       root / "data" / name / "train-00000-of-00001.parquet")
        pq.write_table(pa.Table.from_pylist(rows[:2], schema=features.arrow_schema),
                       root / "data" / name / "validation-00000-of-00001.parquet")
        card["configs"].append({"config_name": name, "data_files": [
            {"split": s, "path": f"data/{name}/{s}-*"} for s in ("train", "validation")]})
        card["dataset_info"].append({"config_name": name, "features": features._to_yaml_list()})
    (root / "README.md").write_text(f"---\n{yaml.safe_dump(card, sort_keys=False, allow_unicode=True)}---\n# tiny\n")
    return str(root)


# -- tests ------------------------------------------------------------------------------------
def test_the_published_configs_load_with_datasets_alone(published):
    for config in ("offline", "simulst", "simulmt", "conversations"):
        ds = datasets.load_dataset(published, config, split="train")
        assert len(ds) > 0
    conv = datasets.load_dataset(published, "conversations", split="train")[0]
    assert conv["audio"].get_all_samples().data.shape[0] == 2 and conv["sot_text"].startswith(SELF)


def test_log_mel_shape_and_a_tone_lands_in_the_right_band():
    t = torch.arange(RATE) / RATE
    tone = torch.sin(2 * torch.pi * 1000 * t)[None]
    feats = D.log_mel(tone, RATE, 80)
    assert feats.shape == (1, 1 + (RATE - 400) // 160, 80)
    peak = int(feats[0].mean(0).argmax())
    centres = np.array([700 * (10 ** (m / 2595) - 1) for m in np.linspace(2595 * np.log10(1 + 20 / 700),
                                                                          2595 * np.log10(1 + 8000 / 700), 82)[1:-1]])
    assert abs(centres[peak] - 1000) < 80
    assert D.log_mel(torch.zeros(1, 100), RATE).shape == (1, 1, 80)  # shorter than a window: one frame


def test_features_are_computed_once_and_cached(published, tmp_path):
    ds = D.open_split(published, "offline", "train", str(tmp_path))
    first = D.add_features(ds, RATE, 80, mono=True)
    assert first.features["features"].shape == (None, 80) and "audio" not in first.column_names
    again = D.add_features(D.open_split(published, "offline", "train", str(tmp_path)), RATE, 80, mono=True)
    assert again.cache_files and again.cache_files[0]["filename"] == first.cache_files[0]["filename"]
    conv = D.add_features(D.open_split(published, "conversations", "train", str(tmp_path)), RATE, 80, mono=False)
    assert conv.features["features"].shape == (None, 160)
    conv_split = D.open_split(published, "conversations", "train")
    assert (D.audio_channels(conv_split), D.audio_rate(conv_split)) == (2, RATE)


def test_a_row_with_other_microphones_is_named():
    from simulforge.transforms.simulate import _flac

    noise = np.random.default_rng(0).standard_normal((3, RATE // 2)).astype(np.float32) * 0.1
    ds = datasets.Dataset.from_dict({"id": ["pair", "triple"], "audio": [{"bytes": _flac(noise[:2], RATE)},
                                                                          {"bytes": _flac(noise, RATE)}]})
    ds = ds.cast_column("audio", datasets.Audio(sampling_rate=RATE))
    with pytest.raises(ConfigError, match=r"triple: the audio has 3 channel\(s\), the first row 2"):
        D.add_features(ds, RATE, 80, mono=False)


def test_bucketing_is_deterministic_and_respects_the_frame_budget():
    lengths = [5, 50, 7, 48, 6, 49, 8, 51, 100, 3]
    batches = D.BucketBatches(lengths, max_frames=110, max_batch=4, window=10, seed=1)
    one, two = batches.epoch(0), batches.epoch(0)
    assert one == two and batches.epoch(1) != one
    assert sorted(i for b in one for i in b) == list(range(len(lengths)))
    for b in one:
        assert len(b) <= 4 and max(lengths[i] for i in b) * len(b) <= 110 or len(b) == 1


def test_missing_config_split_and_column_are_named(published, tmp_path):
    with pytest.raises(ConfigError, match="no config 'nope'; it has: offline"):
        D.open_split(published, "nope", "train", str(tmp_path))
    with pytest.raises(ConfigError, match="no split 'dev'"):
        D.open_split(published, "offline", "dev", str(tmp_path))
    with pytest.raises(ConfigError, match="no split 'dev'"):
        D.open_split(published, "offline", "dev[:2]", str(tmp_path))
    with pytest.raises(ConfigError, match=r"split 'train\[x:\]': Unrecognized instruction format"):
        D.open_split(published, "offline", "train[x:]", str(tmp_path))
    last = D.open_split(published, "offline", "train[-2:]", str(tmp_path))  # datasets' slicing
    assert list(last["id"]) == ["demo/utt_4", "demo/utt_5"]
    ds = D.open_split(published, "offline", "train", str(tmp_path))
    with pytest.raises(ConfigError, match="lacks column.*translation.fr"):
        D.check_columns(ds, ["audio", "translation.fr"], "stages.st")
    with pytest.raises(ConfigError, match="does not exist"):
        D.open_split(str(tmp_path / "absent"), "offline", "train")


def test_tokenizer_keeps_special_tokens_whole_and_refuses_a_vocabulary_without_them(tmp_path):
    texts = [" ".join(s) for row in SENTENCES for s in row] * 3
    specials = ["<|end-of-read|>", "<|end-of-write|>", "<2de>", SELF, OTHER]
    tok = train_sentencepiece(texts, specials, 120, "unigram", 1000)
    ids = check_specials(tok, specials)
    encoded = tok.encode("the cat<|end-of-read|>die Katze<|end-of-write|>")
    assert ids["<|end-of-read|>"] in encoded and ids["<|end-of-write|>"] in encoded
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)

    plain = train_sentencepiece(texts, [], 120, "unigram", 1000)
    path = tmp_path / "plain.model"
    plain.save(path)
    with pytest.raises(ConfigError, match="lacks the special token.*<|end-of-read|>"):
        build_tokenizer(TokenizerConfig(path=str(path)), specials, None, tmp_path / "run" / "tokenizer.model")


def test_simulst_chunks_use_the_published_labels_or_recompute_them_for_another_block(published):
    from simulforge.training.simulst import chunks

    row = datasets.load_dataset(published, "simulst", split="train").remove_columns("audio")[0]
    low = row["latency"]["low"]
    same = chunks(row, "de", None, BLOCK_SAMPLES // 160, RATE)["low"]
    assert [c.stop_block for c in same] == [-(-s // BLOCK_SAMPLES) for s in low["speech_seg_size"]]
    assert [label for c in same for label in c.labels] == low["labels"]
    assert [c.target for c in same] == low["target_chunks"]["de"]
    finer = chunks(row, "de", ["low"], 32, RATE)["low"]  # 320 ms blocks: three times as many, same rule
    assert finer[-1].stop_block >= same[-1].stop_block and all(c.labels[-1] == 1 for c in finer if c.labels)
    assert sum(len(c.labels) for c in finer) == finer[-1].stop_block
