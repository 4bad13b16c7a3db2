"""Evaluate a trained run the way SimulST papers do (`simulforge evaluate --run ...`).

Every utterance of a split is decoded by the run's family's agent (driver.py) under each setting of
a policy and offline; each output becomes a SimulEval instance log (instances.py) per setting and
target, scored from the log alone (report.py) into `scores.json` and BLEU-latency curves. What
differs between families (the dataset config read by default, the target languages, channels,
outputs and speaker tags) comes from the family's registry entry (models/registry.py).

The features are computed at the run's sampling rate (the published audio's rate it trained at),
to which `datasets` resamples the evaluated audio; a run that read no audio decodes at the
evaluated data's own rate.

Decoding runs on `device`, by default "auto": the GPU when torch sees one, since the
computation-aware latencies (LAAL_CA, ms/token) time the decoding itself; `scores.json` records it.
`k` ({lang: k}) decodes every language jointly with each at its own wait-k (policies.WaitKPerLanguage);
its setting in scores.json holds `k: {lang: k}` in place of one param and value.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulforge.models import registry
from simulforge.models.family import Family
from simulforge.training import data as D
from simulforge.training.recipes import load_run
from simulforge.training.tokenizer import prompt_ids

from . import policies as P
from . import report, sawer
from .agent import TRANSCRIPT
from .driver import Decoder
from .instances import make_instance, to_words, write_instances
from .quality import _SPEAKER_TAG


def _trained_k(info: dict[str, Any], languages: list[str]) -> dict[str, int] | None:
    """Each evaluated language's k in the run's last wait-k stage (run.yaml `waitk`), when every one
    of them trained with a k (None: some trained offline, or the run predates the record)."""
    trained = info.get("waitk") or {}
    ks = {lang: trained.get(lang) for lang in languages}
    return ks if ks and all(isinstance(v, int) for v in ks.values()) else None


def evaluate_run(run_dir: str, data: str, *, split: str = "test", config: str | None = None,
                 languages: list[str] | None = None, policy: str | None = None, sweep: str | None = None,
                 segment_ms: float = 40.0, limit: int | None = None, ids: str | None = None, out: str | None = None,
                 prompt: str | None = None, max_len: int = 200, device: str = "auto", k: dict[str, int] | None = None,
                 echo=print) -> dict[str, Any]:
    """Decode `split` under each setting of the policy and offline; write the logs, scores.json and plots."""
    import datasets

    device = resolve_device(device)
    model, tok, info = load_run(run_dir, device)
    family = registry.get(info["family"])
    config = config or family.eval_config
    settings = P.parse(family.name, policy, sweep, model.cfg) if k is None else []  # k: once languages are known
    if policy != "offline":
        settings.append(P.Offline())
    cache_dir = info["data"].get("cache_dir") or str(Path(run_dir) / "cache")

    ds = D.open_split(data, config, split, cache_dir, limit, ids)
    column, transcript = ("sot_translation", "sot_text") if config == "conversations" else ("translation",
                                                                                          "source_text")
    D.check_columns(ds, ["audio", "id", column] + ([transcript] if family.transcribes else []), "--data")
    languages = _languages(family, model, tok, languages, _dataset_languages(ds, column))
    if k is None and sweep is None and (policy or family.policies[0]) == "waitk":
        trained = _trained_k(info, languages)  # decode as the run trained: each language at its own k
        if trained is not None and len(set(trained.values())) == 1:
            settings[0] = P.parse(family.name, "waitk", f"k={trained[languages[0]]}", model.cfg)[0]
        elif trained is not None and family.joint:
            settings, k = settings[1:], trained
    if k is not None:
        own = family.languages(model, tok, _dataset_languages(ds, column), languages)
        settings.insert(0, P.per_language(family.name, policy, k, languages, own))
    rate, n_mels = info["data"]["sampling_rate"] or D.audio_rate(ds), info["data"]["n_mels"]
    mono = family.channels(model.cfg) == 1
    ds = ds.cast_column("audio", datasets.Audio(sampling_rate=rate, num_channels=1 if mono else None))
    # SOT outputs: speaker tags are words of the transcript (scored by SA-WER when the references carry
    # them) but not of the translation (left out of its log, hence of BLEU).
    found = {f"<{t}>" for text in (ds[transcript] if transcript in ds.column_names else [])
             for t in _SPEAKER_TAG.findall(text or "")}
    tag_ids = set()
    if family.speaker_tokens:
        tag_ids = {i for i in map(tok.piece_id, found | set(family.speaker_tokens)) if i is not None}

    prompt = prompt if prompt is not None else info.get("prompt")  # the run's own unless overridden
    chat = bool(info.get("chat_template"))
    prompts = {lang: prompt_ids(tok, prompt, lang, chat) for lang in languages} if prompt is not None else {}
    decoder = Decoder(model, family.name, languages, prompts=prompts, sampling_rate=rate, n_mels=n_mels,
                      segment_ms=segment_ms, max_len=max_len)

    def references(row: dict) -> dict[str, str | None]:
        refs = {lang: row[column][lang] for lang in languages}
        refs = {lang: report.strip_speakers(r) if found and r else r for lang, r in refs.items()}
        return refs | ({TRANSCRIPT: row[transcript]} if family.transcribes else {})

    logs, compute = _decode(decoder, ds, settings, references, tok.decode, tag_ids)
    out_dir = Path(out or Path(run_dir) / "eval" / split)
    results = []
    for setting in settings:
        name = P.label(setting)
        targets = {}
        for target, instances in logs[name].items():
            if not instances:
                continue
            path = out_dir / name / target / "instances.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_instances(path, instances)
            report.write_simuleval_config(path.parent)  # so that `simuleval --score-only --output` scores it
            targets[target] = report.score_log(path, transcript=target == TRANSCRIPT, speakers=bool(found)) | {
                "log": str(path.relative_to(out_dir))}
            if target == TRANSCRIPT:  # conversations: SA-WER per speaker, each word's delay from its true end
                targets[target] |= sawer.score_log(path)
        if isinstance(setting, P.WaitKPerLanguage):  # no one value to plot against: each target has its k
            knob = {"param": None, "value": None, "k": setting.k}
        else:
            knob = {"param": setting.param, "value": getattr(setting, setting.param) if setting.param else None}
        results.append({"name": name, "policy": setting.name, **knob, "compute": compute[name], "targets": targets})
        echo(_line(name, results[-1]))
    header = {"run": str(run_dir), "family": family.name, "data": data, "config": config, "split": split,
              "sampling_rate": rate, "segment_ms": segment_ms, "languages": languages, "utterances": len(ds),
              "device": device}
    return report.write(out_dir, header, results)


def resolve_device(name: str) -> str:
    """`--device`: "auto" is cuda when torch sees a GPU, else cpu; a device torch cannot use is refused."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(name).type
    except RuntimeError:
        raise ValueError(f"--device {name}: not a torch device (auto, cpu, cuda, cuda:N)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch {torch.__version__} sees no GPU (`make setup TORCH=cuda` "
                         f"installs the CUDA build)")
    return name


def _dataset_languages(ds, column: str) -> list[str]:
    feature = ds.features.get(column)
    return list(feature) if isinstance(feature, dict) else []


def _languages(family: Family, model, tok, requested: list[str] | None, available: list[str]) -> list[str]:
    """The run's target languages (all, or the requested ones), checked against the model and the data."""
    own = family.languages(model, tok, available, requested)
    languages = requested or own
    missing = [lang for lang in languages if lang not in available]
    if missing:
        raise ValueError(f"--lang: the dataset has no {', '.join(missing)} references; it has {', '.join(available)}")
    unknown = [lang for lang in languages if lang not in own]
    if unknown:
        raise ValueError(f"--lang: the run does not translate into {', '.join(unknown)}; it has {', '.join(own)}")
    if not languages:
        raise ValueError("no target language of the run has references in the dataset")
    return languages


def _decode(decoder: Decoder, ds, settings, references, detokenize: Callable[[list[int]], str], tag_ids: set[int]
            ) -> tuple[dict[str, dict[str, list]], dict[str, dict[str, float]]]:
    """Every row under every setting -> per setting {target: instances} and computation totals."""
    logs = {P.label(s): {t: [] for t in decoder.targets} for s in settings}
    compute = {P.label(s): {"ms": 0.0, "tokens": 0, "utterances": 0} for s in settings}
    channels = decoder.family.channels(decoder.model.cfg)
    for index, row in enumerate(ds):
        wave = row["audio"].get_all_samples().data
        if wave.shape[0] != channels:
            raise ValueError(f"{row['id']}: the audio has {wave.shape[0]} channel(s), the model takes {channels}")
        refs = references(row)
        if index == 0:  # warm-up: the first calls pay one-off costs that are no part of decoding
            for setting in settings:
                decoder.decode(wave, setting)
        for setting in settings:
            decoded, name = decoder.decode(wave, setting), P.label(setting)
            compute[name]["ms"] += decoded.compute_ms
            compute[name]["tokens"] += sum(len(s.tokens) for s in decoded.streams.values())
            compute[name]["utterances"] += 1
            for target, stream in decoded.streams.items():
                if refs[target] is None:  # no translation into this language: nothing to score
                    continue
                prediction, delays, elapsed = to_words(stream, detokenize, () if target == TRANSCRIPT else tag_ids)
                instance = make_instance(index, prediction, delays, elapsed, refs[target], row["id"], decoded.source_ms)
                if target == TRANSCRIPT and "words" in row:  # the true word times, for sawer.score_log
                    instance[sawer.KEY] = sawer.reference_words(row["words"])
                logs[name][target].append(instance)
    return logs, compute


def _line(name: str, result: dict[str, Any]) -> str:
    parts = [f"{name}:"]
    for target, s in result["targets"].items():
        quality = f"BLEU {s['BLEU']:.2f}" if "BLEU" in s else f"WER {s['WER']:.2f}"
        parts.append(f"{target} {quality} LAAL {s['LAAL']:.0f} LAAL_CA {s.get('LAAL_CA', float('nan')):.0f}")
    c = result["compute"]
    parts.append(f"({c['ms'] / max(c['tokens'], 1):.2f} ms/token)")
    return " ".join(parts)
