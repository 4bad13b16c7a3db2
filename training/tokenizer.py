"""Tokenizers: sentencepiece trained on the dataset's text (or a given one), or an LLM's own.

Both kinds expose the same small interface (encode, decode, piece_id, vocab_size, pad/bos/eos, and
bos_prefix: the ids the tokenizer itself puts before a text, which a decoder-only LM's prompt starts with).
Special tokens (language tags `<2de>`, `<|end-of-read|>`, `<|end-of-write|>`, `<SELF>`,
`<OTHER>`) must each be one piece: a trained tokenizer gets them as user-defined symbols; a
given one is checked and refused, before training, when it lacks any (an LLM tokenizer may add
them instead, with `add_missing`).

Ids of a trained sentencepiece model: 0 <pad>, 1 <unk>, 2 <s>, 3 </s>, then the special tokens.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from .config import ConfigError, TokenizerConfig


def lang_tag(lang: str) -> str:
    return f"<2{lang}>"


class SentencePieceTokenizer:
    def __init__(self, model_proto: bytes, source: str):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.proto, self.source = model_proto, source
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id(),
                                                              self.sp.unk_id())
        self.bos_prefix: list[int] = []  # sentencepiece adds no <s> unless asked to (encode(add_bos=True))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([i for i in ids if i >= 0])

    def piece_id(self, piece: str) -> int | None:
        """The id of a special token, or None when it is not one piece of the vocabulary."""
        i = self.sp.piece_to_id(piece)
        if i == self.unk_id or self.sp.id_to_piece(i) != piece or i not in self.sp.encode(f"a{piece}b"):
            return None
        return i

    def save(self, path: Path) -> None:
        path.write_bytes(self.proto)


class HFTokenizer:
    """A Hugging Face tokenizer from a local folder (an LLM's own)."""

    def __init__(self, path: str, add_tokens: Iterable[str] = ()):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        missing = [t for t in add_tokens if self._single(t) is None]
        if missing:
            self.tok.add_special_tokens({"additional_special_tokens": missing})
        self.source = path
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.bos_id, self.eos_id, self.unk_id = self.tok.bos_token_id, self.tok.eos_token_id, self.tok.unk_token_id
        # What the tokenizer itself puts before a text (Llama-3: <|begin_of_text|>; none without add_bos).
        plain, full = self.encode("a"), self.tok.encode("a", add_special_tokens=True)
        self.bos_prefix = full[: len(full) - len(plain)] if full[len(full) - len(plain):] == plain else []

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i >= 0])

    def _single(self, piece: str) -> int | None:
        ids = self.tok.encode(piece, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    def piece_id(self, piece: str) -> int | None:
        return self._single(piece)

    def save(self, path: Path) -> None:
        self.tok.save_pretrained(str(path))


Tokenizer = SentencePieceTokenizer | HFTokenizer


def prompt_ids(tok: Tokenizer, template: str, lang: str, chat: bool = False) -> list[int]:
    """A decoder-only LM's prompt for `lang`, as training and decoding both feed it: the template formatted
    with tag (<2de>) and lang, with `chat` as the user turn of the LM tokenizer's chat template (an Instruct
    LM's format; the assistant turn opened), after the tokenizer's own BOS prefix (once)."""
    text = template.format(tag=lang_tag(lang), lang=lang)
    if not chat:
        return list(tok.bos_prefix) + tok.encode(text)
    if not isinstance(tok, HFTokenizer) or not getattr(tok.tok, "chat_template", None):
        raise ConfigError(f"chat_template: the tokenizer {tok.source} has no chat template")
    ids = tok.encode(tok.tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=False))
    return ids if ids[: len(tok.bos_prefix)] == tok.bos_prefix else list(tok.bos_prefix) + ids


def target_chunks(chunks: list[str]) -> list[str]:
    """Target chunks as they are encoded one by one: each non-empty chunk after the first carries the
    space that separates it from the previous one, so the decoded stream of writes reads as the joined
    chunks (a byte-level BPE encodes "Student" and " Student" differently; sentencepiece alike)."""
    out, started = [], False
    for chunk in chunks:
        text = " ".join(chunk.split())
        out.append((" " + text if started else text) if text else "")
        started = started or bool(text)
    return out


def train_sentencepiece(texts: Iterable[str], specials: list[str], vocab_size: int, model_type: str,
                        max_sentences: int) -> SentencePieceTokenizer:
    """A sentencepiece model trained on `texts`, every special token one piece."""
    import sentencepiece as spm

    sentences = [t for t in (" ".join(s.split()) for s in texts) if t]
    if not sentences:
        raise ConfigError("no text to train the tokenizer on (are the text columns empty?)")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences[:max_sentences]), model_writer=buf, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, user_defined_symbols=list(specials),
        input_sentence_size=max_sentences if max_sentences > 100 else 0, shuffle_input_sentence=True, minloglevel=2,
    )
    return SentencePieceTokenizer(buf.getvalue(), "trained")


def load_sentencepiece(path: str | Path) -> SentencePieceTokenizer:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"tokenizer.path: sentencepiece model {path} does not exist")
    return SentencePieceTokenizer(path.read_bytes(), str(path))


def check_specials(tok: Tokenizer, specials: list[str]) -> dict[str, int]:
    """{token: id} for every special token; a clear error naming the missing ones."""
    ids = {s: tok.piece_id(s) for s in specials}
    missing = [s for s, i in ids.items() if i is None]
    if missing:
        raise ConfigError(f"tokenizer {tok.source} lacks the special token(s) this model needs: {', '.join(missing)} "
                          "(each must be a single piece of the vocabulary)")
    return ids


def build_tokenizer(cfg: TokenizerConfig, specials: list[str], texts: Iterable[str] | None, saved: Path
                    ) -> Tokenizer:
    """The run's tokenizer: reused from `saved` (a resumed run), given, or trained on `texts`."""
    if cfg.kind not in ("sentencepiece", "hf"):
        raise ConfigError(f"tokenizer.kind must be sentencepiece or hf, got {cfg.kind!r}")
    if cfg.kind == "hf":
        if not cfg.path or not Path(cfg.path).is_dir():
            raise ConfigError(f"tokenizer.path: local tokenizer folder {cfg.path} does not exist")
        hf_saved = saved.with_name("tokenizer_hf")
        tok = HFTokenizer(str(hf_saved) if hf_saved.is_dir() else cfg.path, specials if cfg.add_missing else ())
        if not hf_saved.is_dir():
            tok.save(hf_saved)  # with any added special tokens, for resuming and evaluation
    elif saved.is_file():
        tok = SentencePieceTokenizer(saved.read_bytes(), str(saved))
    elif cfg.path:
        tok = load_sentencepiece(cfg.path)
    else:
        tok = train_sentencepiece(texts() if callable(texts) else texts, specials, cfg.vocab_size, cfg.model_type,
                                  cfg.max_sentences)
    check_specials(tok, specials)
    if isinstance(tok, SentencePieceTokenizer) and not saved.is_file():
        saved.parent.mkdir(parents=True, exist_ok=True)
        tok.save(saved)
    return tok


def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer a finished run used (for evaluation)."""
    if path.with_name("tokenizer_hf").is_dir():
        return HFTokenizer(str(path.with_name("tokenizer_hf")))
    return SentencePieceTokenizer(path.read_bytes(), str(path))
