"""Read/write policies of the simultaneous driver and `--sweep` parsing.

A policy only decides; the family's agent (agent.py) owns every model state and asks its policy
each time an encoder block has been read; everything left is written once the source ends. Which
policies a family runs is in its registry entry (models/registry.py), its default first.

| policy | writes when | latency knob |
|---|---|---|
| `waitk` | token u once k + u blocks are read (Ma et al. 2019); a chunk writer (EASiST's fixed-policy ablation): a chunk, until <|end-of-write|>, every k blocks | `k` (blocks) |
| `waitk`, one k per language | each language's token u once its own k + u blocks are read, in one joint decoding (asynchronously trained models) | `--k de=3,es=5` |
| `policy-head` | the policy head's p(write) after a block exceeds tau (EASiST) | `tau` |
| `edatt` | the candidate token's cross-attention on the last `frames` encoder frames sums below alpha (Papi et al. 2023a) | `alpha` |
| `alignatt` | the candidate token's most attended frame is not among the last `f` frames (Papi et al. 2023b) | `f` (encoder frames) |
| `transducer` | the transducer emits a non-blank symbol (JSTAR) | none |
| `offline` | after the whole source, decoded offline (the comparison point) | none |

The attention policies read the cross-attention of the last decoder layer, averaged over heads,
at the candidate token (`CrossAttention`), and apply to encoder-decoder agents only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from simulforge.models import registry


class PolicyError(ValueError):
    """A policy or sweep that the model family cannot run, or a malformed `--sweep`."""


@dataclass(frozen=True)
class WaitK:
    name: ClassVar[str] = "waitk"
    param: ClassVar[str | None] = "k"
    k: int

    def ready(self, blocks: int, written: int, finished: bool) -> bool:
        """May the `written`-th output (0-based) be written after `blocks` blocks?"""
        return finished or blocks >= self.k + written


@dataclass(frozen=True)
class WaitKPerLanguage(Mapping):
    """Wait-k with each target language at its own k, decoded jointly: a {lang: WaitK} mapping, which a
    joint agent (models/waitk.py) reads per language."""

    name: ClassVar[str] = "waitk"
    param: ClassVar[str | None] = "k"
    ks: tuple[tuple[str, int], ...]  # (lang, k) pairs: hashable, in the evaluated languages' order

    @property
    def k(self) -> dict[str, int]:
        return dict(self.ks)

    def __getitem__(self, lang: str) -> WaitK:
        return WaitK(self.k[lang])

    def __iter__(self) -> Iterator[str]:
        return iter(self.k)

    def __len__(self) -> int:
        return len(self.ks)


@dataclass(frozen=True)
class PolicyHead:
    name: ClassVar[str] = "policy-head"
    param: ClassVar[str | None] = "tau"
    tau: float

    def write(self, p_write: float, finished: bool) -> bool:
        return finished or p_write > self.tau


@dataclass(frozen=True)
class EDAtt:
    name: ClassVar[str] = "edatt"
    param: ClassVar[str | None] = "alpha"
    alpha: float
    frames: int = 2  # lambda: the most recent encoder frames (40 ms each) whose attention is summed

    def accept(self, attention: Tensor, finished: bool) -> bool:
        """Emit the candidate token unless it leans on the newest audio (it may still change)."""
        return finished or float(attention[-self.frames:].sum()) < self.alpha


@dataclass(frozen=True)
class AlignAtt:
    name: ClassVar[str] = "alignatt"
    param: ClassVar[str | None] = "f"
    f: int

    def accept(self, attention: Tensor, finished: bool) -> bool:
        """Emit the candidate token unless its aligned frame is among the last f frames."""
        return finished or int(attention.argmax()) < attention.shape[0] - self.f


@dataclass(frozen=True)
class Transducer:
    name: ClassVar[str] = "transducer"
    param: ClassVar[str | None] = None


@dataclass(frozen=True)
class Offline:
    name: ClassVar[str] = "offline"
    param: ClassVar[str | None] = None


Policy = WaitK | WaitKPerLanguage | PolicyHead | EDAtt | AlignAtt | Transducer | Offline
POLICIES: dict[str, type] = {p.name: p for p in (WaitK, PolicyHead, EDAtt, AlignAtt, Transducer, Offline)}
# Without --sweep: k=3 is what the tiny configs train with; EDAtt's alpha=0.4 and AlignAtt's f=4 sit in
# the middle of the papers' sweeps; EASiST's tau is the run's own `policy_threshold`.
DEFAULTS = {"waitk": 3, "edatt": 0.4, "alignatt": 4}


def label(policy: Policy) -> str:
    """A setting's name, also its folder: "waitk_k=3", "waitk_de=3,es=5", "policy-head_tau=0.5", "offline"."""
    if policy.param is None:
        return policy.name
    if isinstance(policy, WaitKPerLanguage):
        return f"{policy.name}_" + ",".join(f"{lang}={k}" for lang, k in policy.ks)
    return f"{policy.name}_{policy.param}={getattr(policy, policy.param):g}"


def _make(name: str, value: float) -> Policy:
    if name == "waitk":
        if value != int(value) or value < 1:
            raise PolicyError(f"--sweep k: a whole number of blocks >= 1, got {value:g}")
        return WaitK(int(value))
    if name == "alignatt":
        if value != int(value) or value < 1:
            raise PolicyError(f"--sweep f: a whole number of encoder frames >= 1, got {value:g}")
        return AlignAtt(int(value))
    if name == "edatt":
        if not 0 < value <= 1:
            raise PolicyError(f"--sweep alpha: an attention mass in (0, 1], got {value:g}")
        return EDAtt(value)
    if not 0 <= value <= 1:
        raise PolicyError(f"--sweep tau: a probability in [0, 1], got {value:g}")
    return PolicyHead(value)


def parse(family: str, policy: str | None, sweep: str | None, model_cfg) -> list[Policy]:
    """The settings to evaluate: `policy` (default: the family's first) at each `sweep` value.

    `sweep` is "<param>=v1,v2,...", e.g. "k=1,3,5" or "tau=0.3,0.5,0.7"; `model_cfg` supplies
    the trained threshold (`policy_threshold`) when no tau is given.
    """
    allowed = registry.get(family).policies
    name = policy or allowed[0]
    if name not in allowed:
        raise PolicyError(f"--policy {name}: the {family} family runs {', '.join(allowed)}")
    cls = POLICIES[name]
    if sweep is None:
        if cls.param is None:
            return [cls()]
        return [_make(name, model_cfg.policy_threshold if name == "policy-head" else DEFAULTS[name])]
    if cls.param is None:
        raise PolicyError(f"--sweep: the {name} policy has no latency knob to sweep")
    key, sep, values = sweep.partition("=")
    if not sep or key.strip() != cls.param:
        raise PolicyError(f"--sweep {sweep}: the {name} policy sweeps {cls.param}, e.g. {cls.param}=1,2,3")
    try:
        numbers = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise PolicyError(f"--sweep {sweep}: values must be numbers separated by commas") from None
    if not numbers:
        raise PolicyError(f"--sweep {sweep}: no values")
    return list(dict.fromkeys(_make(name, v) for v in numbers))


_LANG = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def parse_per_language(spec: str) -> dict[str, int]:
    """`--k de=3,es=5` -> {"de": 3, "es": 5}: each language's k, a whole number of blocks >= 1."""
    ks: dict[str, int] = {}
    for item in spec.split(","):
        lang, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not _LANG.fullmatch(lang):
            raise PolicyError(f"--k {spec}: expected LANG=K pairs separated by commas (e.g. de=3,es=5), "
                              f"got {item.strip()!r}")
        if not re.fullmatch(r"[0-9]+", value) or int(value) < 1:
            raise PolicyError(f"--k {spec}: {lang}'s k must be a whole number of blocks >= 1, got {value!r}")
        if lang in ks:
            raise PolicyError(f"--k {spec}: {lang} is given more than once")
        ks[lang] = int(value)
    return ks


def per_language(family: str, policy: str | None, ks: dict[str, int], languages: list[str],
                 own: list[str]) -> WaitKPerLanguage:
    """The wait-k setting with each evaluated language at its own k, checked against the family (it must
    run wait-k and decode its languages jointly) and the languages: those of the run (`own`), evaluated
    (`languages`), each given exactly one k."""
    entry = registry.get(family)
    if (policy or "waitk") != "waitk":
        raise PolicyError(f"--k: a k per language is the waitk policy's, not {policy}'s")
    if "waitk" not in entry.policies:
        raise PolicyError(f"--k: the {family} family runs {', '.join(entry.policies)}, not waitk")
    if not entry.joint:
        raise PolicyError(f"--k: the {family} family decodes each language alone; evaluate one language at a "
                          f"time (--lang L --k K)")
    unknown = [lang for lang in ks if lang not in own]
    if unknown:
        raise PolicyError(f"--k: the run does not translate into {', '.join(unknown)}; it has {', '.join(own)}")
    extra = [lang for lang in ks if lang not in languages]
    if extra:
        raise PolicyError(f"--k: {', '.join(extra)} is not evaluated (--lang {','.join(languages)})")
    missing = [lang for lang in languages if lang not in ks]
    if missing:
        raise PolicyError(f"--k: no k for {', '.join(missing)}; give every evaluated language its k "
                          f"({', '.join(languages)}), or choose the languages with --lang")
    return WaitKPerLanguage(tuple((lang, ks[lang]) for lang in languages))


class CrossAttention:
    """Records one decoder layer's cross-attention at the newest query, averaged over heads.

    A forward hook on the layer's cross-attention recomputes the weights from its query input and
    the cached memory keys (the model's fused attention does not return them); after each decoder
    step, `weights` holds a (frames,) distribution over the encoder frames read so far.
    """

    def __init__(self, attention: nn.Module):
        self.weights: Tensor | None = None
        self._handle = attention.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module: nn.Module, args, kwargs, output) -> None:
        x, keys = args[0][:, -1:], kwargs["kv"][0]  # (B, 1, D), (B, H, S, D/H)
        B, _, D = x.shape
        heads = module.n_heads
        q = module.q(x).view(B, 1, heads, D // heads).transpose(1, 2)
        scores = q @ keys.transpose(-1, -2) / math.sqrt(D // heads)
        self.weights = torch.softmax(scores.float(), dim=-1).mean(dim=1)[0, 0]

    def close(self) -> None:
        self._handle.remove()
