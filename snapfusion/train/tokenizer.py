"""Learn a CLIP-format byte-level BPE tokenizer from the synthetic world's captions.

The result is a Hugging Face tokenizer folder in the layout of Stable Diffusion's
``tokenizer/`` (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``,
``special_tokens_map.json``) that :class:`snapfusion.tokenizer.CLIPTokenizer` and
transformers' ``CLIPTokenizer`` load.

Vocabulary layout (as OpenAI CLIP's): ids 0..255 the byte symbols of the GPT-2
byte-to-unicode table in its value order, 256..511 the same symbols with ``</w>``
appended, then one token per merge (in merge order; a merge whose result already
exists adds no token), then ``<|startoftext|>`` and ``<|endoftext|>``. Padding uses
``<|endoftext|>`` (the SD-1.x convention).

Learning: captions are cleaned and split into words exactly as the tokenizer will
split them at inference time (a merge-free tokenizer of the same layout does the
pre-tokenization), each word becomes its byte symbols with ``</w>`` on the last one,
and the most frequent adjacent pair (ties broken by the smaller pair) is merged
repeatedly until ``max_merges`` merges exist or no pair occurs ``min_frequency``
times. This module does not import torch.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["learn_bpe", "write_tokenizer", "build_world_tokenizer", "BOS", "EOS"]

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def _base_symbols() -> list[str]:
    from snapfusion.tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def _base_tokenizer(model_max_length: int = 77):  # noqa: ANN202 - returns CLIPTokenizer
    from snapfusion.tokenizer import CLIPTokenizer

    syms = _base_symbols()
    tokens = syms + [s + "</w>" for s in syms] + [BOS, EOS]
    return CLIPTokenizer({t: i for i, t in enumerate(tokens)}, [], model_max_length=model_max_length)


def _words(texts: Iterable[str]) -> Counter[tuple[str, ...]]:
    """Word symbol sequences (byte symbols, ``</w>`` on the last) with their counts."""
    base = _base_tokenizer()
    counts: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"captions must be str, got {type(text).__name__}")
        word: list[str] = []
        for sym in base.tokenize(text):
            if sym in (BOS, EOS):
                continue
            word.append(sym)
            if sym.endswith("</w>"):
                counts[tuple(word)] += 1
                word = []
        if word:  # cannot happen with a well-formed split; keep it anyway
            counts[tuple(word)] += 1
    return counts


def learn_bpe(texts: Iterable[str], max_merges: int = 2000, min_frequency: int = 2) -> list[tuple[str, str]]:
    """Learn BPE merges on a corpus.

    Args:
        texts: Caption corpus.
        max_merges: Upper bound on the number of merges (>= 0).
        min_frequency: Stop when the most frequent pair occurs fewer times (>= 1).

    Returns:
        Merges ``(left, right)`` in rank order.

    Raises:
        TypeError: A caption is not a ``str``.
        ValueError: Bad limits or an empty corpus.
    """
    if isinstance(max_merges, bool) or not isinstance(max_merges, int) or not 0 <= max_merges <= 1_000_000:
        raise ValueError(f"max_merges must be an int in [0, 1e6], got {max_merges!r}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be a positive int, got {min_frequency!r}")
    words = _words(texts)
    if not words:
        raise ValueError("the caption corpus holds no words")
    vocab: dict[tuple[str, ...], int] = dict(words)
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in vocab.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best_n = max(pairs.values())
        if best_n < min_frequency:
            break
        best = min(p for p, n in pairs.items() if n == best_n)
        merges.append(best)
        joined = best[0] + best[1]
        new_vocab: dict[tuple[str, ...], int] = {}
        for word, n in vocab.items():
            if len(word) < 2:
                new_vocab[word] = new_vocab.get(word, 0) + n
                continue
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                    out.append(joined)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            key = tuple(out)
            new_vocab[key] = new_vocab.get(key, 0) + n
        vocab = new_vocab
    return merges


def write_tokenizer(folder: str | os.PathLike[str], merges: Sequence[tuple[str, str]],
                    model_max_length: int = 77) -> int:
    """Write a CLIP-format tokenizer folder.

    Args:
        folder: Output folder (created).
        merges: BPE merges in rank order.
        model_max_length: Padded sequence length the pipeline uses (2..77 for the
            text encoders of this project).

    Returns:
        The vocabulary size.
    """
    if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or \
            not 2 <= model_max_length <= 4096:
        raise ValueError(f"model_max_length must be an int in [2, 4096], got {model_max_length!r}")
    syms = _base_symbols()
    tokens = syms + [s + "</w>" for s in syms]
    seen = set(tokens)
    for a, b in merges:
        if not (isinstance(a, str) and isinstance(b, str) and a and b) or any(c.isspace() for c in a + b):
            raise ValueError(f"bad merge {(a, b)!r}")
        t = a + b
        if t not in seen:
            seen.add(t)
            tokens.append(t)
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                    encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    config = dict(special, model_max_length=model_max_length, do_lower_case=True, errors="replace",
                  add_prefix_space=False, clean_up_tokenization_spaces=True, tokenizer_class="CLIPTokenizer")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return len(vocab)


def world_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` captions of the world: training captions plus fully specified evaluation and
    held-out captions (so that every word the evaluation uses is seen)."""
    from snapfusion.data import eval_prompts, make_rng, sample_scene
    from snapfusion.data.captions import describe

    gen = make_rng(seed, "train")
    texts = [describe(sample_scene(gen, "train"), gen) for _ in range(n)]
    texts += eval_prompts(max(1, n // 8), seed=seed, split="eval")[0]
    texts += eval_prompts(max(1, n // 8), seed=seed, split="heldout")[0]
    return texts


def build_world_tokenizer(folder: str | os.PathLike[str], n_captions: int = 20000, seed: int = 0,
                          max_merges: int = 2000, min_frequency: int = 2,
                          model_max_length: int = 32, texts: Sequence[str] | None = None) -> dict[str, int]:
    """Learn the world tokenizer and write it to ``folder``.

    Args:
        folder: Output tokenizer folder.
        n_captions: Corpus size when ``texts`` is not given.
        seed: Corpus seed.
        max_merges: Merge limit.
        min_frequency: Minimum pair count of a merge.
        model_max_length: Padded length (the text encoder's ``max_position_embeddings``).
        texts: Explicit corpus (overrides ``n_captions``/``seed``).

    Returns:
        ``{"vocab_size": V, "merges": M, "max_tokens": longest tokenized caption incl. bos/eos}``.

    Raises:
        ValueError: a corpus caption does not fit ``model_max_length`` tokens.
    """
    corpus = list(texts) if texts is not None else world_corpus(n_captions, seed)
    merges = learn_bpe(corpus, max_merges=max_merges, min_frequency=min_frequency)
    vocab_size = write_tokenizer(folder, merges, model_max_length=model_max_length)
    from snapfusion.tokenizer import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(folder)
    longest = max(len(tok.encode(t)) for t in corpus) + 2
    if longest > model_max_length:
        raise ValueError(f"a caption takes {longest} tokens, more than model_max_length={model_max_length}")
    return {"vocab_size": vocab_size, "merges": len(merges), "max_tokens": longest}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m snapfusion.train tokenizer --out DIR [--config cfg.json]``."""
    p = argparse.ArgumentParser(prog="python -m snapfusion.train tokenizer", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output tokenizer folder")
    p.add_argument("--config", help="JSON with n_captions, seed, max_merges, min_frequency, model_max_length")
    args = p.parse_args(argv)
    cfg = json.loads(Path(args.config).read_text()) if args.config else {}
    allowed = {"n_captions", "seed", "max_merges", "min_frequency", "model_max_length"}
    bad = set(cfg) - allowed
    if bad:
        raise ValueError(f"unknown tokenizer config keys: {sorted(bad)}")
    info = build_world_tokenizer(args.out, **cfg)
    print(json.dumps(info))
    return 0
