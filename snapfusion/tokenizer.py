"""CLIP byte-level BPE tokenizer for Stable Diffusion text encoders.

Pure-Python re-implementation of the tokenizer that Stable Diffusion v1.x/v2.x
pipelines use (Hugging Face ``CLIPTokenizer``, the "slow" Python tokenizer of
transformers 4.x, which itself follows OpenAI's ``simple_tokenizer.py``). It
reads the Hugging Face tokenizer folder layout (``vocab.json``, ``merges.txt``,
``tokenizer_config.json``, ``special_tokens_map.json``) and produces the same
token ids, bit for bit, for any input string.

Processing of one prompt:

1. The raw text is split on the literal special tokens (bos, eos, unk, pad and
   any additional special tokens, case-sensitive, longest first). Each special
   token becomes its own id; with an SD 2.x tokenizer (pad token ``!``) every
   ``!`` is therefore the pad id.
2. Each remaining piece is cleaned. With ftfy: ``ftfy.fix_text``, whitespace
   runs collapsed to one space, stripped, lower-cased. Without ftfy: the BERT
   basic cleanup (control characters dropped, whitespace unified, spaces put
   around CJK ideographs, NFC, split on whitespace, each word lower-cased; no
   accent stripping, no punctuation splitting).
3. The cleaned text is split into words with the CLIP pattern (``'s``, ``'t``,
   ..., letter runs, single digits, runs of other non-space characters; a
   literal ``<|startoftext|>``/``<|endoftext|>`` in any case is a word of its
   own mapped to the special token).
4. Each word is UTF-8 encoded, mapped through the GPT-2 byte-to-unicode table,
   given the end-of-word suffix ``</w>`` on its last symbol and merged with the
   BPE merge ranks. Results are cached per word.

Example:
    >>> tok = CLIPTokenizer.from_pretrained("path/to/tokenizer")
    >>> tok("a photo of a cat").shape
    (1, 77)
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import regex

from ._files import read_json, read_text_file

__all__ = ["CLIPTokenizer", "SpecialToken", "basic_clean", "bytes_to_unicode", "CLIP_MAX_MERGES"]

#: CLIP reads at most this many merges from ``merges.txt`` (49152 BPE tokens of
#: OpenAI's vocabulary minus 256 bytes minus the two special tokens).
CLIP_MAX_MERGES = 49152 - 256 - 2

#: Word pattern of CLIP (compiled case-insensitively, as in the reference).
_WORD_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
_WORD_RE = regex.compile(_WORD_PATTERN, regex.IGNORECASE)
_WHITESPACE_RE = regex.compile(r"\s+")


def _ascii_word_re() -> re.Pattern[str]:
    r"""The word pattern for lower-case ASCII text, for the faster stdlib ``re``.

    The ASCII members of ``\s``, ``\p{L}`` and ``\p{N}`` are read from the
    ``regex`` module itself, so both patterns split any ASCII string alike.
    Cleaned text is lower-case, where case-insensitive matching changes nothing
    for ASCII, so the flag is dropped (it makes ``re`` markedly slower).
    """

    def members(cls: str) -> str:
        chars = [chr(c) for c in range(128) if regex.fullmatch(cls, chr(c), regex.IGNORECASE)]
        return "".join(re.escape(ch) for ch in chars)

    space, letter, number = members(r"\s"), members(r"\p{L}"), members(r"\p{N}")
    pattern = (
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
        rf"|[{letter}]+|[{number}]|[^{space}{letter}{number}]+"
    )
    return re.compile(pattern, re.ASCII)


_ASCII_WORD_RE = _ascii_word_re()
_chain = chain.from_iterable

# Literal special words recognised by the word pattern itself; their BPE result
# is the token unchanged (whatever the configured bos/eos strings are).
_PATTERN_SPECIALS = ("<|startoftext|>", "<|endoftext|>")

# ASCII control characters that ftfy's ``remove_control_chars`` deletes.
_FTFY_ASCII_CONTROL = {c: None for c in [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F]}
# ASCII characters the BERT basic cleanup deletes (category Cc except \t \n \r).
_BASIC_ASCII_CONTROL = {c: None for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]}

_MAX_FILE_BYTES = 256 * 1024 * 1024
_MAX_MODEL_LENGTH = 1_000_000
_CACHE_LIMIT = 500_000

_VOCAB_FILE = "vocab.json"
_MERGES_FILE = "merges.txt"
_CONFIG_FILE = "tokenizer_config.json"
_SPECIAL_MAP_FILE = "special_tokens_map.json"
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass(frozen=True)
class SpecialToken:
    """A special token with the whitespace handling of its neighbours.

    Text next to a literal special token is stripped of whitespace before it is
    cleaned: the text on its left when ``lstrip``, on its right when ``rstrip``.
    (A special token given as a plain ``str`` for ``pad_token`` or
    ``additional_special_tokens`` strips both sides, as in the reference; the
    bos/eos/unk tokens given as ``str`` strip neither.) This only matters in
    ftfy mode, where the repair of some byte sequences depends on an adjacent
    space.

    Attributes:
        content: The token text.
        lstrip: Strip whitespace from the text on the left.
        rstrip: Strip whitespace from the text on the right.
    """

    content: str
    lstrip: bool = False
    rstrip: bool = False


class _PlainToken(str):
    """Special-token text read as a plain string from ``special_tokens_map.json``:
    it strips both neighbours whatever its role (the reference only converts
    bos/eos/unk strings passed to its constructor)."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte-to-unicode table.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to
    themselves; the 68 remaining bytes (controls, space, ...) map, in byte order,
    to the code points 256, 257, ...

    Returns:
        Mapping byte value (0..255) -> one-character string.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_ENCODER = bytes_to_unicode()
_BYTE_DECODER = {v: k for k, v in _BYTE_ENCODER.items()}


def _is_cjk_ideograph(cp: int) -> bool:
    """Whether a code point lies in the CJK ideograph blocks the BERT cleanup spaces out."""
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def basic_clean(text: str) -> str:
    """Text cleanup used when ftfy is not installed (BERT basic tokenizer, CLIP settings).

    Drops NUL, U+FFFD and every category-C character except tab/newline/CR, turns
    tab/newline/CR and Zs characters into spaces, surrounds CJK ideographs with
    spaces, applies NFC, splits on whitespace and lower-cases each word (no
    accent stripping, no punctuation splitting).

    Args:
        text: Raw text.

    Returns:
        The words joined by single spaces.
    """
    if text.isascii():
        return " ".join(text.translate(_BASIC_ASCII_CONTROL).lower().split())
    out = []
    category = unicodedata.category
    for ch in text:
        if ch in " \t\n\r":
            out.append(" ")
            continue
        cat = category(ch)
        if ch == "\x00" or ch == "\ufffd" or cat[0] == "C":
            continue
        if cat == "Zs":
            out.append(" ")
        elif _is_cjk_ideograph(ord(ch)):
            out.append(" " + ch + " ")
        else:
            out.append(ch)
    words = unicodedata.normalize("NFC", "".join(out)).split()
    return " ".join(word.lower() for word in words)


def _make_ftfy_clean(fix_text: Callable[[str], str]) -> Callable[[str], str]:
    """Build the ftfy cleanup: ``fix_text``, whitespace runs -> one space, strip, lower.

    Plain ASCII without ``&`` (HTML entities) or ESC (terminal escapes) is left
    unchanged by ``fix_text`` apart from deleting ASCII control characters and
    normalising line breaks (which the whitespace collapse makes irrelevant), so
    such text skips the (slow) ftfy call.
    """
    sub = _WHITESPACE_RE.sub

    def clean(text: str) -> str:
        if text.isascii() and "&" not in text and "\x1b" not in text:
            if not text.isprintable():
                text = text.translate(_FTFY_ASCII_CONTROL)
            # Left: printable ASCII and \t \n \x0c \r, where str.split()
            # and the ``\s+`` collapse (plus strip) agree.
            return " ".join(text.split()).lower()
        return sub(" ", fix_text(text)).strip().lower()

    return clean


def _read_text(path: Path) -> str:
    """Read a UTF-8 tokenizer file, with errors that name it."""
    return read_text_file(path, "tokenizer file", _MAX_FILE_BYTES)


def _reject_duplicate_keys(path: Path) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"{path}: duplicate key {key!r}")
            out[key] = value
        return out

    return hook


def _read_json(path: Path) -> Any:
    return read_json(path, "tokenizer file", _MAX_FILE_BYTES, _reject_duplicate_keys(path))[1]


def _load_vocab(path: Path) -> dict[str, int]:
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON object mapping token -> id")
    seen: dict[int, str] = {}
    for token, idx in data.items():
        if type(idx) is not int or idx < 0:
            raise ValueError(f"{path}: id of token {token!r} must be a non-negative integer, got {idx!r}")
        if idx in seen:
            raise ValueError(f"{path}: duplicate id {idx} (tokens {seen[idx]!r} and {token!r})")
        seen[idx] = token
    return data


def _load_merges(path: Path) -> list[tuple[str, str]]:
    """Parse ``merges.txt``: the first line (``#version: ...``) is skipped, then one ``a b`` per line."""
    lines = _read_text(path).strip().split("\n")[1 : CLIP_MAX_MERGES + 1]
    merges: list[tuple[str, str]] = []
    for lineno, line in enumerate(lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}: line {lineno} must hold exactly two symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _token_spec(value: Any, source: Path, key: str, from_map: bool) -> str | SpecialToken:
    """Special token of a config entry: a string, or an object with content/lstrip/rstrip."""
    if isinstance(value, dict):
        content = value.get("content")
        lstrip, rstrip = value.get("lstrip", False), value.get("rstrip", False)
        if not isinstance(content, str) or not content:
            raise ValueError(f"{source}: {key} must have a non-empty string 'content'")
        if not isinstance(lstrip, bool) or not isinstance(rstrip, bool):
            raise ValueError(f"{source}: {key}: lstrip/rstrip must be booleans")
        return SpecialToken(content, lstrip=lstrip, rstrip=rstrip)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{source}: {key} must be a non-empty string or an object with 'content'")
    return _PlainToken(value) if from_map else value


class CLIPTokenizer:
    """CLIP byte-level BPE tokenizer, identical to transformers' slow ``CLIPTokenizer``.

    Attributes:
        encoder: Token string -> id.
        bos_token, eos_token, unk_token, pad_token: Special token strings.
        model_max_length: Default sequence length of ``__call__`` (77 for SD).
        do_lower_case: Value read from the configuration; CLIP text cleaning
            lower-cases in every case, as the reference tokenizer does.
        use_ftfy: Whether ftfy cleans the text (else the BERT basic cleanup).
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        bos_token: str | SpecialToken = "<|startoftext|>",
        eos_token: str | SpecialToken = "<|endoftext|>",
        unk_token: str | SpecialToken = "<|endoftext|>",
        pad_token: str | SpecialToken = "<|endoftext|>",
        additional_special_tokens: Iterable[str | SpecialToken] = (),
        model_max_length: int = 77,
        do_lower_case: bool = True,
        use_ftfy: bool | None = None,
    ) -> None:
        """Build a tokenizer from an in-memory vocabulary and merge list.

        Args:
            vocab: Token string -> id (ids unique, non-negative).
            merges: BPE merges ``(left, right)`` in rank order (rank = index).
                A pair listed twice keeps its last rank, as in the reference.
            bos_token, eos_token, unk_token, pad_token: Special tokens (each
                must be in ``vocab``); see :class:`SpecialToken` for how a
                plain ``str`` is treated. SD 1.x pads with ``<|endoftext|>``,
                SD 2.x with ``!``.
            additional_special_tokens: More tokens that are never split.
            model_max_length: Default padded length (>= 2).
            do_lower_case: Stored only (CLIP always lower-cases).
            use_ftfy: True to clean text with ftfy (must be installed), False
                for the BERT basic cleanup, None to use ftfy when importable.

        Raises:
            TypeError: Wrongly typed arguments.
            ValueError: Special tokens missing from the vocabulary, bad lengths,
                duplicate ids.
            ImportError: ``use_ftfy=True`` without ftfy installed.
        """
        if not isinstance(vocab, dict):
            raise TypeError(f"vocab must be a dict token -> id, got {type(vocab).__name__}")
        ids_seen: set[int] = set()
        for token, idx in vocab.items():
            if not isinstance(token, str) or type(idx) is not int or idx < 0:
                raise TypeError(f"vocab entries must be str -> non-negative int, got {token!r}: {idx!r}")
            if idx in ids_seen:
                raise ValueError(f"vocab: duplicate id {idx}")
            ids_seen.add(idx)
        if type(model_max_length) is not int or not 2 <= model_max_length <= _MAX_MODEL_LENGTH:
            raise ValueError(f"model_max_length must be an int in [2, {_MAX_MODEL_LENGTH}], got {model_max_length!r}")
        if use_ftfy is not None and not isinstance(use_ftfy, bool):
            raise TypeError(f"use_ftfy must be a bool or None, got {use_ftfy!r}")

        self.encoder: dict[str, int] = dict(vocab)
        self.decoder: dict[int, str] = {v: k for k, v in self.encoder.items()}
        ranks: dict[tuple[str, str], int] = {}
        for rank, pair in enumerate(merges):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
                raise TypeError(f"merge {rank} must be a pair of strings, got {pair!r}")
            ranks[(pair[0], pair[1])] = rank
        self.bpe_ranks = ranks
        self._rank_inf = max(ranks.values(), default=0) + 1

        # Neighbour stripping per special-token text: bos/eos/unk given as str
        # strip nothing, pad/additional given as str strip both sides, and a
        # SpecialToken's own flags win over plain strings of the same text.
        named = [
            ("bos_token", bos_token, False),
            ("eos_token", eos_token, False),
            ("unk_token", unk_token, False),
            ("pad_token", pad_token, True),
            *(("additional_special_tokens", t, True) for t in additional_special_tokens),
        ]
        contents: list[str] = []
        strip_plain: dict[str, tuple[bool, bool]] = {}
        strip_flags: dict[str, tuple[bool, bool]] = {}
        for name, tok, plain_strips in named:
            if isinstance(tok, SpecialToken):
                text, flags = tok.content, (tok.lstrip, tok.rstrip)
            elif isinstance(tok, str):
                text, flags = str(tok), None
                plain_strips = plain_strips or isinstance(tok, _PlainToken)
            else:
                raise TypeError(f"{name} must be a str or SpecialToken, got {type(tok).__name__}")
            if not isinstance(text, str) or not text:
                raise TypeError(f"{name} must be a non-empty string, got {text!r}")
            if text not in self.encoder:
                raise ValueError(f"{name} {text!r} is not in the vocabulary")
            contents.append(text)
            if flags is None and not plain_strips:
                flags = (False, False)
            if flags is None:
                strip_plain.setdefault(text, (True, True))
            else:
                strip_flags[text] = flags
        self._strip = {**strip_plain, **strip_flags}
        bos_token, eos_token, unk_token, pad_token = contents[:4]
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = contents[:4]
        self.additional_special_tokens = contents[4:]
        self.bos_token_id = self.encoder[bos_token]
        self.eos_token_id = self.encoder[eos_token]
        self.unk_token_id = self.encoder[unk_token]
        self.pad_token_id = self.encoder[pad_token]
        self.model_max_length = model_max_length
        self.do_lower_case = bool(do_lower_case)

        if use_ftfy is None or use_ftfy:
            try:
                import ftfy
            except ImportError:
                if use_ftfy:
                    raise ImportError("use_ftfy=True but the ftfy package is not installed") from None
                ftfy = None
            use_ftfy = ftfy is not None
        self.use_ftfy: bool = use_ftfy
        self._clean: Callable[[str], str] = _make_ftfy_clean(ftfy.fix_text) if use_ftfy else basic_clean

        # Literal special tokens in the raw text are split off before cleaning.
        no_split = sorted(set(contents), key=len, reverse=True)
        self._special_ids = {tok: self.encoder[tok] for tok in no_split}
        self._special_split = re.compile("(" + "|".join(re.escape(t) for t in no_split) + ")").split

        self._bpe_cache: dict[str, tuple[str, ...]] = {s: (s,) for s in _PATTERN_SPECIALS}
        self._ids_cache: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], **overrides: Any) -> CLIPTokenizer:
        """Load a Hugging Face tokenizer folder.

        Reads ``vocab.json`` and ``merges.txt`` (required) and the optional
        ``tokenizer_config.json`` and ``special_tokens_map.json``; values of the
        latter override the former, keyword arguments override both.

        Args:
            directory: Folder such as ``<sd-model>/tokenizer``.
            **overrides: Any keyword argument of the constructor (e.g.
                ``pad_token="!"``, ``use_ftfy=False``).

        Returns:
            The tokenizer.

        Raises:
            OSError: The folder or a required file does not exist.
            ValueError: A file is malformed (the message names it).
            TypeError: Unknown keyword arguments.
        """
        allowed = {*_SPECIAL_KEYS, "additional_special_tokens", "model_max_length", "do_lower_case", "use_ftfy"}
        unknown = set(overrides) - allowed
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a path, got {type(directory).__name__}")
        root = Path(directory)
        if not root.exists():
            raise FileNotFoundError(f"tokenizer directory not found: {root}")
        if not root.is_dir():
            raise NotADirectoryError(f"not a tokenizer directory: {root}")

        vocab_path = root / _VOCAB_FILE
        merges_path = root / _MERGES_FILE
        vocab = _load_vocab(vocab_path)
        merges = _load_merges(merges_path)

        kwargs: dict[str, Any] = {}
        for name in (_CONFIG_FILE, _SPECIAL_MAP_FILE):
            path = root / name
            if not path.exists():
                continue
            config = _read_json(path)
            if not isinstance(config, dict):
                raise ValueError(f"{path}: expected a JSON object")
            from_map = name == _SPECIAL_MAP_FILE
            for key in _SPECIAL_KEYS:
                if config.get(key) is not None:
                    kwargs[key] = _token_spec(config[key], path, key, from_map)
            if config.get("additional_special_tokens") is not None:
                values = config["additional_special_tokens"]
                if not isinstance(values, list):
                    raise ValueError(f"{path}: additional_special_tokens must be a list")
                kwargs["additional_special_tokens"] = [
                    _token_spec(v, path, "additional_special_tokens", from_map) for v in values
                ]
            if "model_max_length" in config:
                value = config["model_max_length"]
                if type(value) is not int or not 2 <= value <= _MAX_MODEL_LENGTH:
                    raise ValueError(
                        f"{path}: model_max_length must be an int in [2, {_MAX_MODEL_LENGTH}], got {value!r}"
                    )
                kwargs["model_max_length"] = value
            if "do_lower_case" in config:
                if not isinstance(config["do_lower_case"], bool):
                    raise ValueError(f"{path}: do_lower_case must be a boolean")
                kwargs["do_lower_case"] = config["do_lower_case"]
        kwargs.update(overrides)
        try:
            return cls(vocab, merges, **kwargs)
        except ValueError as err:
            raise ValueError(f"{root}: {err}") from None

    # --------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        """Number of entries of the vocabulary."""
        return len(self.encoder)

    def __len__(self) -> int:
        return len(self.encoder)

    def __repr__(self) -> str:
        return (
            f"CLIPTokenizer(vocab_size={self.vocab_size}, merges={len(self.bpe_ranks)}, "
            f"pad_token={self.pad_token!r}, model_max_length={self.model_max_length}, use_ftfy={self.use_ftfy})"
        )

    # ---------------------------------------------------------------------- BPE
    def bpe(self, word: str) -> tuple[str, ...]:
        """Apply the BPE merges to one byte-encoded word.

        Args:
            word: Word already mapped through :func:`bytes_to_unicode`.

        Returns:
            The BPE symbols; the last carries the ``</w>`` suffix.
        """
        cached = self._bpe_cache.get(word)
        if cached is not None:
            return cached
        if not word:
            raise ValueError("bpe() needs a non-empty word")
        symbols = list(word[:-1])
        symbols.append(word[-1] + "</w>")
        ranks = self.bpe_ranks
        inf = self._rank_inf
        while len(symbols) > 1:
            best = inf
            pair = None
            prev = symbols[0]
            for cur in symbols[1:]:
                r = ranks.get((prev, cur), inf)
                if r < best:
                    best, pair = r, (prev, cur)
                prev = cur
            if pair is None:
                break
            first, second = pair
            merged = first + second
            out: list[str] = []
            i, n = 0, len(symbols)
            while i < n:
                if i < n - 1 and symbols[i] == first and symbols[i + 1] == second:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            symbols = out
        result = tuple(symbols)
        if len(self._bpe_cache) >= _CACHE_LIMIT:
            self._bpe_cache = {s: (s,) for s in _PATTERN_SPECIALS}
        self._bpe_cache[word] = result
        return result

    def _word_tokens(self, word: str) -> tuple[str, ...]:
        return self.bpe("".join([_BYTE_ENCODER[b] for b in word.encode("utf-8")]))

    def _word_ids(self, word: str) -> tuple[int, ...]:
        get, unk = self.encoder.get, self.unk_token_id
        ids = tuple([get(t, unk) for t in self._word_tokens(word)])
        if len(self._ids_cache) >= _CACHE_LIMIT:
            self._ids_cache.clear()
        self._ids_cache[word] = ids
        return ids

    # ------------------------------------------------------------- tokenization
    def _segments(self, text: str) -> list[str]:
        """Split on literal special tokens: ``[text, special, text, ..., text]``.

        Odd positions hold special tokens; the text pieces are stripped next to
        special tokens according to their lstrip/rstrip handling.
        """
        parts = self._special_split(text)
        if len(parts) > 1:
            strip = self._strip
            for k in range(1, len(parts), 2):
                strip_left, strip_right = strip[parts[k]]
                if strip_left:
                    parts[k - 1] = parts[k - 1].rstrip()
                if strip_right:
                    parts[k + 1] = parts[k + 1].lstrip()
        return parts

    def clean_text(self, text: str) -> str:
        """Cleaned, lower-cased text as the word splitter sees it (no special-token handling).

        Args:
            text: Raw text.

        Returns:
            ``whitespace_collapse(ftfy.fix_text(text)).lower()`` in ftfy mode,
            :func:`basic_clean` otherwise.
        """
        return self._clean(self._check_prompt(text))

    def _words(self, piece: str) -> list[str]:
        """Words of a piece of text without special tokens: cleaned, then split."""
        text = self._clean(piece)
        if text.isascii():
            return _ASCII_WORD_RE.findall(text)
        return _WORD_RE.findall(text)

    def _piece_ids(self, piece: str) -> list[int]:
        """Token ids of a piece of text without special tokens."""
        words = self._words(piece)
        found = list(map(self._ids_cache.get, words))
        if None in found:
            found = [r if r is not None else self._word_ids(w) for w, r in zip(words, found)]
        return list(_chain(found))

    def _text_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without bos/eos."""
        parts = self._segments(text)
        if len(parts) == 1:
            return self._piece_ids(text)
        ids: list[int] = []
        for k, part in enumerate(parts):
            if k & 1:
                ids.append(self._special_ids[part])
            elif part:
                ids += self._piece_ids(part)
        return ids

    @staticmethod
    def _check_prompt(prompt: Any) -> str:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        return prompt

    def tokenize(self, prompt: str) -> list[str]:
        """BPE token strings of a prompt (no bos/eos), like ``tokenizer.tokenize``.

        Args:
            prompt: Input text.

        Returns:
            Token strings (``</w>`` marks word ends; special tokens verbatim).
        """
        text = self._check_prompt(prompt)
        tokens: list[str] = []
        parts = self._segments(text)
        for k, part in enumerate(parts):
            if k & 1:
                tokens.append(part)
            elif part:
                for word in self._words(part):
                    tokens.extend(self._word_tokens(word))
        return tokens

    def encode(self, prompt: str) -> list[int]:
        """Untruncated ids ``[bos, tokens..., eos]``, like ``tokenizer(prompt).input_ids``.

        Args:
            prompt: Input text.

        Returns:
            List of ids, length = number of tokens + 2.
        """
        ids = [self.bos_token_id]
        ids += self._text_ids(self._check_prompt(prompt))
        ids.append(self.eos_token_id)
        return ids

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Token strings of ids.

        Raises:
            ValueError: An id outside the vocabulary.
        """
        out = []
        for i in ids:
            tok = self.decoder.get(int(i))
            if tok is None:
                raise ValueError(f"token id {i} is not in the vocabulary")
            out.append(tok)
        return out

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """Ids of token strings (unknown tokens give the unk id)."""
        return [self.encoder.get(t, self.unk_token_id) for t in tokens]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ids: symbols mapped back to bytes, decoded as UTF-8 (invalid
        sequences replaced), ``</w>`` turned into a space, stripped.

        Args:
            ids: Token ids (e.g. one row of ``__call__``'s output).
            skip_special_tokens: Drop bos/eos/unk/pad and additional special tokens.

        Returns:
            The decoded text.
        """
        ids = [int(i) for i in ids]
        tokens = self.convert_ids_to_tokens(ids)
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in self._special_ids]
        raw = bytearray()
        for ch in "".join(tokens):
            b = _BYTE_DECODER.get(ch)
            if b is None:
                raw += ch.encode("utf-8")
            else:
                raw.append(b)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(
        self,
        prompts: str | Sequence[str],
        padding: bool | str = "max_length",
        max_length: int | None = None,
        truncation: bool = True,
    ) -> np.ndarray:
        """Batch ids, as transformers' ``tokenizer(prompts, padding=..., max_length=...,
        truncation=..., return_tensors='np').input_ids``.

        Each row is ``[bos, tokens..., eos]``; with truncation the tokens are cut
        to ``max_length - 2``; rows are right-padded with the pad id.

        Args:
            prompts: One prompt or a list/tuple of prompts (B of them).
            padding: ``"max_length"`` pads every row to ``max_length``;
                ``"longest"``/``True`` to the longest row; ``False``/
                ``"do_not_pad"`` does not pad.
            max_length: Length limit; None means ``model_max_length`` (77).
            truncation: Cut rows longer than ``max_length``.

        Returns:
            int64 array ``[B, L]`` (``L`` = ``max_length`` with max-length padding).

        Raises:
            TypeError: Prompts not str / list of str, bad argument types.
            ValueError: ``max_length < 2``, unknown padding, or rows of unequal
                length that cannot form an array.
        """
        if isinstance(prompts, str):
            batch: Sequence[str] = (prompts,)
        elif isinstance(prompts, (list, tuple)):
            batch = prompts
            for p in batch:
                if not isinstance(p, str):
                    raise TypeError(f"prompts must be str or a list of str, got an element of type {type(p).__name__}")
        else:
            raise TypeError(f"prompts must be str or a list of str, got {type(prompts).__name__}")
        if max_length is None:
            max_length = self.model_max_length
        elif type(max_length) is not int:
            raise TypeError(f"max_length must be an int or None, got {type(max_length).__name__}")
        elif not 2 <= max_length <= _MAX_MODEL_LENGTH:
            raise ValueError(f"max_length must be in [2, {_MAX_MODEL_LENGTH}], got {max_length}")
        if truncation is not True and truncation is not False:
            raise TypeError(f"truncation must be a bool, got {truncation!r}")
        if padding == "max_length" and padding is not True:
            mode = 1
        elif padding is True or padding == "longest":
            mode = 2
        elif padding is False or padding == "do_not_pad":
            mode = 0
        else:
            raise ValueError(f"padding must be 'max_length', 'longest', 'do_not_pad', True or False, got {padding!r}")

        bos, eos = self.bos_token_id, self.eos_token_id
        keep = max_length - 2
        rows: list[list[int]] = []
        for p in batch:
            ids = self._text_ids(p)
            if truncation and len(ids) > keep:
                del ids[keep:]
            rows.append(ids)
        longest = max([len(r) for r in rows], default=0) + 2
        target = max_length if mode == 1 else longest if mode == 2 else 0
        width = max(target, longest)
        if width > target and any(len(r) + 2 != width for r in rows):
            raise ValueError(
                "rows of different lengths cannot form an array; use truncation=True or padding='longest'"
            )
        out = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        out[:, 0] = bos
        for i, r in enumerate(rows):
            n = len(r) + 1
            out[i, 1:n] = r
            out[i, n] = eos
        return out
