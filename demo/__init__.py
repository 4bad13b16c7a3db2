"""Demo data: synthetic speech with true word timings, in real corpus layouts.

espeak.py (with espeak_engine.py) synthesizes speech and its true word times; script.py holds
the sentences and the speakers; mustc.py, covost.py and fleurs.py plan and write one corpus
each; corpora.py plans what they share and builds them all.
"""

__all__ = ["build_demo_corpora", "synthesize", "text_words"]


def __getattr__(name: str):
    # Lazy, so reading the package's data (sentences.tsv) does not load numpy and scipy.
    if name == "build_demo_corpora":
        from .corpora import build_demo_corpora

        return build_demo_corpora
    if name in ("synthesize", "text_words"):
        from . import espeak

        return getattr(espeak, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
