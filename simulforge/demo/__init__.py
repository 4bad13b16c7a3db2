"""Demo data: synthetic speech with true word timings, in real corpus layouts."""

__all__ = ["build_demo_corpora", "synthesize", "text_words"]


def __getattr__(name: str):
    # Lazy, so importing simulforge.demo.espeak does not pull in numpy/scipy.
    if name == "build_demo_corpora":
        from simulforge.demo.corpora import build_demo_corpora

        return build_demo_corpora
    if name in ("synthesize", "text_words"):
        from simulforge.demo import espeak

        return getattr(espeak, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
