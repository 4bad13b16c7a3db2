"""The built-in aligner: monophone GMM-HMMs trained on the corpus being aligned.

Training is Viterbi training from a flat start, as in Kaldi's monophone recipe: phones are
3-state left-to-right HMMs whose states emit from diagonal-covariance GMMs over MFCCs with
deltas. The first alignment spreads each clip's speech evenly over its phone states (the
low-energy ends go to silence); every pass then re-aligns all clips with the current model,
re-estimates the GMMs from that alignment (EM over the mixture components), and on
scheduled passes splits the heaviest components, up to `max_gaussians` per state.

Pronunciations are espeak-ng phonemes, so any language espeak-ng speaks can be aligned.
An aligned clip is also scored: its per-frame log-likelihood gap to the best state of the
model at each frame. A transcript that does not match the audio forces frames onto the
wrong phones and widens the gap far beyond what training clips show, so clips whose gap
exceeds the training median by `mismatch_mads` median absolute deviations are rejected.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.special import logsumexp

from . import Aligned, AlignFailure, Backend, Clip, TrainReport
from .features import FeatureSettings, frame_levels_db, mfcc
from .pronounce import Phonemizer, PronounceError
from .viterbi import Graph, build_graph, viterbi

SILENCE = "sil"
LOG_2PI = float(np.log(2 * np.pi))


@dataclass
class GmmSettings:
    states_per_phone: int
    passes: int  # re-alignment passes after the flat start
    split_at: list[int]  # passes after which mixture components are split
    max_gaussians: int  # per state
    min_phone_examples: int  # a rarer phone shares its base phone's model (r- -> r) where that is common
    min_frames_per_gaussian: int  # a state splits only with this many frames per component
    em_steps: int  # EM updates of the mixtures per alignment pass
    variance_floor: float  # fraction of the global variance no component may go below
    silence_between_words: bool
    acoustic_scale: float  # acoustic weight against transitions, as Kaldi's
    beam: float  # in scaled log-likelihood, as Kaldi's and MFA's --beam
    retry_beam: float
    speech_level: float  # flat start: speech is above this fraction of the way from quiet to loud frames
    min_speech_range_db: float  # a clip whose loud and quiet frames differ less holds no speech
    mismatch_mads: float
    batch_size: int  # clips per align call (one espeak round trip each)

    def validate(self, where: str) -> None:
        from ..settings import ConfigError

        if self.states_per_phone < 1 or self.passes < 1 or self.max_gaussians < 1 or self.em_steps < 1:
            raise ConfigError(f"{where}: states_per_phone, passes, max_gaussians and em_steps must be >= 1")
        if not 0 < self.beam <= self.retry_beam:
            raise ConfigError(f"{where}.retry_beam: must be at least beam ({self.beam}), got {self.retry_beam}")


@dataclass
class GmmModel:
    """A trained model of one language; plain arrays, so Beam pickles it cheaply."""

    lang: str
    voice: str
    phones: list[str]  # phones[0] is silence; pdf of state k of phone p is p * states + k
    states: int
    log_weights: np.ndarray  # (pdfs, M), -inf where a state has fewer than M components
    means: np.ndarray  # (pdfs, M, D)
    variances: np.ndarray  # (pdfs, M, D)
    transitions: np.ndarray  # (pdfs, 2): log P(stay), log P(leave)
    shared: dict[str, str]  # rare phone -> the base phone whose model it uses
    mismatch_limit: float = np.inf
    _terms: tuple | None = field(default=None, repr=False, compare=False)

    def loglik(self, feats: np.ndarray, pdfs: np.ndarray | None = None, best_component: bool = False) -> np.ndarray:
        """(frames, len(pdfs)) log-likelihood of each frame under each pdf (all pdfs if None).

        `best_component` scores a pdf by its best component alone (the Viterbi approximation),
        which is cheaper and good enough to compare pdfs with each other.
        """
        quad, lin, const = self._gaussian_terms()
        if pdfs is not None:
            quad, lin, const = quad[pdfs], lin[pdfs], const[pdfs]
        n, m, d = lin.shape
        x = feats.astype(np.float32)
        z = (x * x) @ quad.reshape(n * m, d).T
        z += x @ lin.reshape(n * m, d).T
        z += const.reshape(-1)
        z = z.reshape(len(x), n, m)
        top = z.max(axis=2)
        if best_component:
            return top
        z -= top[..., None]
        np.exp(z, out=z)
        return top + np.log(z.sum(axis=2))

    def _gaussian_terms(self):
        # log N(x) = x^2 . (-1/2v) + x . (mu/v) + const, so all pdfs score in two matrix products.
        if self._terms is None:
            inv = 1.0 / self.variances
            const = self.log_weights - 0.5 * (
                self.means.shape[2] * LOG_2PI + np.log(self.variances).sum(2) + (self.means**2 * inv).sum(2))
            self._terms = tuple(a.astype(np.float32) for a in (-0.5 * inv, self.means * inv, const))
        return self._terms

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_terms"] = None
        return state


def base_phone(name: str) -> str:
    """espeak's phoneme without its variant mark: r- (linking r) -> r, t# -> t, @2 -> @, I2 -> I."""
    return re.sub(r"[-#0-9]+$", "", name) or name


def _word_pdfs(model: GmmModel, phones: list[tuple[str, ...]]) -> list[list[int]]:
    """The pdfs of each word's states, in order; a phone training never saw uses its base's."""
    index = {p: i for i, p in enumerate(model.phones)}
    out = []
    for word_phones in phones:
        mapped = [model.shared.get(p, p) for p in word_phones]
        mapped = [p if p in index else base_phone(p) for p in mapped]
        unseen = [p for p in mapped if p not in index]
        if unseen:
            raise AlignFailure("unseen_phone", f"phone(s) {', '.join(unseen)} never occurred in the "
                                               f"{model.lang} training sample")
        out.append([index[p] * model.states + k for p in mapped for k in range(model.states)])
    return out


@dataclass
class _Alignment:
    path_pdfs: np.ndarray  # pdf per frame
    word_frames: list[tuple[int, int]]  # per word: first frame, one past its last
    retried: bool


def _align_features(model: GmmModel, feats: np.ndarray, phones: list[tuple[str, ...]],
                    s: GmmSettings) -> _Alignment:
    silence = list(range(model.states))  # phone 0
    graph = build_graph(_word_pdfs(model, phones), silence, s.silence_between_words)
    needed = int((graph.word >= 0).sum())
    if needed > len(feats):
        raise AlignFailure("audio_too_short", f"{len(phones)} words need at least {needed} frames, "
                                              f"the clip has {len(feats)}")
    used, column = np.unique(graph.pdf, return_inverse=True)
    scores = s.acoustic_scale * model.loglik(feats, used)[:, column]
    transitions = model.transitions[graph.pdf]
    path = viterbi(scores, graph, transitions, s.beam)
    retried = path is None
    if retried:
        path = viterbi(scores, graph, transitions, s.retry_beam)
    if path is None:
        raise AlignFailure("alignment_failed", f"no path through the {len(phones)} words within beam "
                                               f"{s.retry_beam} over {len(feats)} frames")
    return _Alignment(graph.pdf[path], _word_frames(graph, path, len(phones)), retried)


def _word_frames(graph: Graph, path: np.ndarray, words: int) -> list[tuple[int, int]]:
    owner = graph.word[path]
    out = []
    for w in range(words):
        frames = np.flatnonzero(owner == w)
        out.append((int(frames[0]), int(frames[-1]) + 1))
    return out


def _mismatch(model: GmmModel, feats: np.ndarray, path_pdfs: np.ndarray) -> float:
    """Mean per-frame log-likelihood the forced path loses against the best state of each frame."""
    ll = model.loglik(feats, best_component=True)
    return float((ll.max(axis=1) - ll[np.arange(len(feats)), path_pdfs]).mean())


# Training.


@dataclass
class _Item:
    feats: np.ndarray
    phones: list[tuple[str, ...]]
    speech: np.ndarray  # per frame: loud enough to be speech (for the flat start)


class _Estimator:
    """Mixture parameters of every pdf, re-estimated from frame labels."""

    def __init__(self, pdfs: int, dim: int, floor: np.ndarray):
        self.floor = floor
        self.weights = [np.ones(1) for _ in range(pdfs)]
        self.means = [np.zeros((1, dim)) for _ in range(pdfs)]
        self.vars = [np.ones((1, dim)) for _ in range(pdfs)]
        self.seen = np.zeros(pdfs, bool)

    def update(self, frames: np.ndarray, labels: np.ndarray, steps: int) -> None:
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(len(self.means) + 1))
        for j in range(len(self.means)):
            x = frames[order[bounds[j] : bounds[j + 1]]].astype(np.float64)
            if len(x) == 0:
                continue
            if not self.seen[j]:  # first data for this pdf: one Gaussian from its frames
                self.weights[j], self.means[j] = np.ones(1), x.mean(0, keepdims=True)
                self.vars[j] = np.maximum(x.var(0, keepdims=True), self.floor)
                self.seen[j] = True
            for _ in range(steps):
                self._em(j, x)

    def _em(self, j: int, x: np.ndarray) -> None:
        w, mu, var = self.weights[j], self.means[j], self.vars[j]
        resp = _component_loglik(x, w, mu, var)
        resp = np.exp(resp - logsumexp(resp, axis=1, keepdims=True))
        occ = resp.sum(0)
        keep = occ > 1e-3 * len(x) + 1.0  # drop components that lost their frames...
        keep[np.argmax(occ)] = True  # ...but never the last one
        resp, occ = resp[:, keep], occ[keep]
        mu = (resp.T @ x) / occ[:, None]
        var = (resp.T @ (x * x)) / occ[:, None] - mu**2
        self.weights[j], self.means[j], self.vars[j] = occ / occ.sum(), mu, np.maximum(var, self.floor)

    def split(self, counts: np.ndarray, max_gaussians: int, min_frames: int) -> None:
        """Double the components of each pdf its data can support, heaviest first."""
        for j in range(len(self.means)):
            m = len(self.weights[j])
            target = min(2 * m, max_gaussians, max(m, int(counts[j] // min_frames)))
            heavy = np.argsort(-self.weights[j])[: target - m]
            if len(heavy) == 0:
                continue
            offset = 0.2 * np.sqrt(self.vars[j][heavy])
            self.means[j] = np.vstack([self.means[j], self.means[j][heavy] + offset])
            self.means[j][heavy] -= offset
            self.vars[j] = np.vstack([self.vars[j], self.vars[j][heavy]])
            self.weights[j] = np.append(self.weights[j], self.weights[j][heavy] / 2)
            self.weights[j][heavy] /= 2

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = max(len(w) for w in self.weights)
        dim = self.means[0].shape[1]
        log_w = np.full((len(self.weights), m), -np.inf)
        means = np.zeros((len(self.weights), m, dim))
        variances = np.ones((len(self.weights), m, dim))
        for j, (w, mu, var) in enumerate(zip(self.weights, self.means, self.vars, strict=True)):
            log_w[j, : len(w)], means[j, : len(w)], variances[j, : len(w)] = np.log(w), mu, var
        return log_w, means, variances


def _component_loglik(x, w, mu, var) -> np.ndarray:
    inv = 1.0 / var
    const = np.log(w) - 0.5 * (x.shape[1] * LOG_2PI + np.log(var).sum(1) + (mu**2 * inv).sum(1))
    return (x * x) @ (-0.5 * inv).T + x @ (mu * inv).T + const


def _transitions(labels: list[np.ndarray], pdfs: int) -> np.ndarray:
    """log P(stay), log P(leave) per pdf from how long the alignment stays in each state."""
    frames = np.ones(pdfs)  # one pseudo-count each way keeps unseen states usable
    leaves = np.ones(pdfs)
    for lab in labels:
        frames += np.bincount(lab, minlength=pdfs)
        change = np.append(lab[1:] != lab[:-1], True)
        leaves += np.bincount(lab[change], minlength=pdfs)
    stay = np.clip(1 - leaves / (frames + 1), 0.05, 0.95)
    return np.log(np.stack([stay, 1 - stay], axis=1))


def _flat_start(item: _Item, phone_index: dict[str, int], states: int) -> np.ndarray:
    """Labels spreading the speech frames evenly over the phone states, silence around them."""
    seq = [phone_index[p] * states + k for word in item.phones for p in word for k in range(states)]
    frames = len(item.feats)
    loud = np.flatnonzero(item.speech)
    first, last = (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, frames)
    if last - first < len(seq):
        first, last = 0, frames
    labels = np.zeros(frames, np.int64)
    labels[:first] = np.arange(first) * states // max(first, 1)
    labels[last:] = np.arange(frames - last) * states // max(frames - last, 1)
    span = np.arange(last - first) * len(seq) // (last - first)
    labels[first:last] = np.asarray(seq)[span]
    return labels


def _rare_phones(items: list[_Item], min_examples: int) -> dict[str, str]:
    """Phones too rare to train, mapped to their base phone where that one is common."""
    counts = Counter(p for item in items for word in item.phones for p in word)
    return {p: base_phone(p) for p, n in counts.items()
            if n < min_examples and counts.get(base_phone(p), 0) >= min_examples}


def train_model(lang: str, voice: str, items: list[_Item], s: GmmSettings) -> tuple[GmmModel, int]:
    """The trained model, and how many items the last pass could not align."""
    shared = _rare_phones(items, s.min_phone_examples)
    items = [replace(item, phones=[tuple(shared.get(p, p) for p in word) for word in item.phones])
             for item in items]
    phones = [SILENCE] + sorted({p for item in items for word in item.phones for p in word})
    index = {p: i for i, p in enumerate(phones)}
    pdfs = len(phones) * s.states_per_phone
    frames = np.concatenate([item.feats for item in items])
    estimator = _Estimator(pdfs, frames.shape[1], s.variance_floor * frames.var(0))
    labels = [_flat_start(item, index, s.states_per_phone) for item in items]
    model = None
    failed = 0
    for step in range(s.passes + 1):
        if step:  # pass 0 estimates from the flat start
            aligned = [_try_align(model, item, s) for item in items]
            failed = sum(a is None for a in aligned)
            labels = [a.path_pdfs if a is not None else None for a in aligned]
        usable = [(item.feats, lab) for item, lab in zip(items, labels, strict=True) if lab is not None]
        feats = np.concatenate([f for f, _ in usable])
        flat = np.concatenate([lab for _, lab in usable])
        estimator.update(feats, flat, s.em_steps)
        if step in s.split_at:
            estimator.split(np.bincount(flat, minlength=pdfs), s.max_gaussians, s.min_frames_per_gaussian)
            estimator.update(feats, flat, 1)
        log_w, means, variances = estimator.arrays()
        model = GmmModel(lang, voice, phones, s.states_per_phone, log_w, means, variances,
                         _transitions([lab for _, lab in usable], pdfs), shared)
    gaps = [_mismatch(model, item.feats, a.path_pdfs)
            for item in items if (a := _try_align(model, item, s)) is not None]
    if gaps:
        median = float(np.median(gaps))
        spread = float(np.median(np.abs(np.asarray(gaps) - median))) or 1.0
        model.mismatch_limit = median + s.mismatch_mads * spread
    return model, failed


def _try_align(model: GmmModel, item: _Item, s: GmmSettings) -> _Alignment | None:
    try:
        return _align_features(model, item.feats, item.phones, s)
    except AlignFailure:
        return None


# The backend.


class GmmBackend(Backend):
    name = "gmm"

    def __init__(self, settings: GmmSettings, features: FeatureSettings, voices: dict[str, str]):
        self.settings, self.features, self.voices = settings, features, voices
        self._phonemizers: dict[str, Phonemizer] = {}

    @classmethod
    def from_settings(cls, settings) -> GmmBackend:
        return cls(settings.gmm, settings.features, settings.voices)

    def phonemizer(self, voice: str) -> Phonemizer:
        if voice not in self._phonemizers:
            self._phonemizers[voice] = Phonemizer(voice)
        return self._phonemizers[voice]

    @staticmethod
    def _check_pronounced(voice: str, words: list[str], phones: list[tuple[str, ...]]) -> None:
        silent = [w for w, ph in zip(words, phones, strict=True) if not ph]
        if silent:
            raise AlignFailure("no_pronunciation", f"espeak-ng ({voice}) has no pronunciation "
                                                   f"for {', '.join(map(repr, silent))}")

    def _levels(self, clip: Clip) -> np.ndarray:
        """Each frame's level in dB; AlignFailure when they vary too little to hold speech."""
        level = frame_levels_db(clip.samples, clip.rate, self.features.frame_shift_ms)
        spread = float(np.percentile(level, 95) - np.percentile(level, 10)) if len(level) else 0.0
        if spread < self.settings.min_speech_range_db:
            raise AlignFailure("no_speech", f"the clip's loud and quiet frames differ by {spread:.1f} dB, "
                                            f"less than speech's {self.settings.min_speech_range_db} dB")
        return level

    def train(self, lang: str, clips: list[Clip]) -> tuple[GmmModel, TrainReport]:
        phonemizer = self.phonemizer(self.voices.get(lang, lang))
        try:
            pronounced = phonemizer.phones([c.words for c in clips])
        except PronounceError as e:
            raise AlignFailure("no_voice", f"no {lang} pronunciations: {e}") from None
        report, items = TrainReport(), []
        for clip, phones in zip(clips, pronounced, strict=True):
            try:
                level = self._levels(clip)
                self._check_pronounced(phonemizer.voice, clip.words, phones)
            except AlignFailure as e:
                report.skipped[e.reason] = report.skipped.get(e.reason, 0) + 1
                continue
            quiet, loud = np.percentile(level, [10, 99])
            speech = level > quiet + self.settings.speech_level * (loud - quiet)
            items.append(_Item(mfcc(clip.samples, clip.rate, self.features), phones, speech))
            report.clips += 1
            report.audio_s += clip.duration_s
        if not items:
            raise AlignFailure("no_training_data", f"no {lang} clip in the training sample could be used "
                                                   f"(left out: {report.skipped})")
        model, failed = train_model(lang, phonemizer.voice, items, self.settings)
        if failed:
            report.skipped["alignment_failed"] = failed
        return model, report

    def align(self, model: GmmModel, clips: list[Clip]) -> list[Aligned | AlignFailure]:
        pronounced = self.phonemizer(model.voice).phones([c.words for c in clips])
        return [self._align_one(model, clip, phones) for clip, phones in zip(clips, pronounced, strict=True)]

    def _align_one(self, model: GmmModel, clip: Clip, phones: list[tuple[str, ...]]) -> Aligned | AlignFailure:
        try:
            self._levels(clip)
            self._check_pronounced(model.voice, clip.words, phones)
            feats = mfcc(clip.samples, clip.rate, self.features)
            found = _align_features(model, feats, phones, self.settings)
            gap = _mismatch(model, feats, found.path_pdfs)
            if gap > model.mismatch_limit:
                raise AlignFailure("transcript_mismatch", f"the audio fits the transcript {gap:.1f} nats/frame "
                                                          f"worse than the best phones (limit {model.mismatch_limit:.1f})")
        except AlignFailure as e:
            return e
        shift = self.features.frame_shift_ms / 1000
        end = clip.duration_s
        words = [(w, round(min(a * shift, end), 4), round(min(b * shift, end), 4))
                 for w, (a, b) in zip(clip.words, found.word_frames, strict=True)]
        return Aligned(words, found.retried)

    def close(self) -> None:
        for p in self._phonemizers.values():
            p.close()
        self._phonemizers.clear()

