"""From word timings to what a streaming SimulST model trains on, and files to inspect them.

- Chunk end times: a source chunk ends where its last spoken word ends (clip-relative); word
  times up to one aligner frame past the clip's end are first clamped to it (`clamp_to_clip`).
- `speech_seg_size`, as EASiST's data has it: per chunk, the cumulative number of samples
  the streaming encoder has read when the chunk's translation is written, i.e. the chunk's
  end rounded up to the next encoder block boundary (the clip's end at most). Two chunks
  ending in the same block share a boundary: both are written after that block.
- Policy labels, one per block read: 0 (read) at the end of a block after which the model
  keeps reading, 1 (write) at the end of the last block of a chunk (EASiST §3.3).
- A Praat TextGrid (words, and chunks per latency level) and a CTM per clip.

Words are the whitespace tokens of the text with their edge punctuation stripped, the same
rule the demo corpora's true word times follow; a token of punctuation alone is no word.
"""

from __future__ import annotations

import math
import os
import re
import tempfile

from .records import StageError

_EDGE = re.compile(r"^[^\w]+|[^\w]+$")

Word = tuple[str, float, float]


def token_word(token: str) -> str:
    """The word a whitespace token speaks ('' for punctuation alone)."""
    return _EDGE.sub("", token)


def spoken_words(text: str) -> list[str]:
    return [w for w in map(token_word, text.split()) if w]


def chunk_end_times(words: list[Word], source_chunks: list[str]) -> list[float]:
    """End of each chunk's last word; the chunks' words must be `words`, in order."""
    ends, k = [], 0
    for i, chunk in enumerate(source_chunks):
        spoken = spoken_words(chunk)
        if not spoken:
            raise StageError("silent_chunk", f"chunk {i} ({chunk!r}) has no spoken word to end it")
        if [w for w, _, _ in words[k : k + len(spoken)]] != spoken:
            raise StageError("chunks_do_not_match_words",
                             f"chunk {i} ({chunk!r}) does not continue the aligned words at word {k}")
        k += len(spoken)
        ends.append(words[k - 1][2])
    if k != len(words):
        raise StageError("chunks_do_not_match_words", f"the chunks cover {k} of the {len(words)} words")
    return ends


def clamp_to_clip(words: list[Word], duration_s: float, frame_s: float) -> tuple[list[Word], list[str]]:
    """Word times up to one analysis frame past the clip's end, set to the clip's end, and the fix.

    An aligner works on a frame grid: its last frame may reach past the last sample (a clip is
    rarely a whole number of frames) and its times are rounded, so speech that runs to the end
    of a tightly cut clip can end up to `frame_s` beyond it. Anything later is really outside
    and is left for `check_chunk_times` to refuse.
    """
    def over(t: float) -> bool:
        return duration_s < t <= duration_s + frame_s

    moved = [t for _, s, e in words for t in (s, e) if over(t)]
    if not moved:
        return words, []
    clamped = [(w, duration_s if over(s) else s, duration_s if over(e) else e) for w, s, e in words]
    if moved == [words[-1][2]]:
        return clamped, [f"last word end clamped {moved[0]:.6g}->{duration_s:.6g} s"]
    return clamped, [f"{len(moved)} word times clamped {max(moved):.6g}->{duration_s:.6g} s (the clip's end)"]


def check_chunk_times(ends: list[float], duration_s: float) -> None:
    """Chunk ends must increase, lie inside the clip, and the last must end by the clip's end."""
    for i, end in enumerate(ends):
        if not 0 < end <= duration_s:
            raise StageError("chunk_outside_clip", f"chunk {i} ends at {end:.3f} s, outside the "
                                                   f"{duration_s:.3f} s clip")
        if i and end <= ends[i - 1]:
            raise StageError("chunk_times_not_increasing",
                             f"chunk {i} ends at {end:.3f} s, not after chunk {i - 1} ({ends[i - 1]:.3f} s)")


def speech_seg_sizes(ends: list[float], num_samples: int, rate: int, block: int) -> list[int]:
    """Per chunk, the samples read before writing it: its end rounded up to a block boundary."""
    return [min(math.ceil(round(end * rate) / block) * block, num_samples) for end in ends]


def policy_labels(seg_sizes: list[int], block: int) -> list[int]:
    """One label per block read: 1 where a chunk's last block ends (write), else 0 (read)."""
    if not seg_sizes:
        return []
    labels = [0] * math.ceil(seg_sizes[-1] / block)
    for size in seg_sizes:
        labels[math.ceil(size / block) - 1] = 1
    return labels


def ctm_text(utt_id: str, words: list[Word]) -> str:
    """NIST CTM lines: `<utterance> 1 <start> <duration> <word>`."""
    return "".join(f"{utt_id} 1 {s:.3f} {e - s:.3f} {w}\n" for w, s, e in words)


def textgrid_text(words: list[Word], duration_s: float, chunks: dict[str, tuple[list[str], list[float]]]) -> str:
    """A long-format TextGrid: a `words` tier and, per level, a `chunks/<level>` tier.

    `chunks` maps a level to its source chunks and their end times; chunk i spans from the
    end of chunk i-1 (or the clip's start) to its own end.
    """
    from praatio import textgrid

    tg = textgrid.Textgrid()
    tg.addTier(textgrid.IntervalTier("words", [(s, e, w) for w, s, e in words if e > s], 0, duration_s))
    for level, (texts, ends) in chunks.items():
        starts = [0.0, *ends[:-1]]
        tg.addTier(textgrid.IntervalTier(f"chunks/{level}", list(zip(starts, ends, texts, strict=True)),
                                         0, duration_s))
    # praatio writes TextGrids to files only.
    fd, path = tempfile.mkstemp(suffix=".TextGrid")
    os.close(fd)
    try:
        tg.save(path, format="long_textgrid", includeBlankSpaces=True)
        with open(path, encoding="utf-8") as f:
            return f.read()
    finally:
        os.remove(path)
