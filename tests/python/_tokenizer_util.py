"""Deterministic prompt generator for the tokenizer tests."""

from __future__ import annotations

import random

WORDS = (
    "a photo of an astronaut riding horse on the moon portrait old man oil painting cat dog "
    "masterpiece best quality ultra detailed highly intricate cinematic lighting 8k uhd trending "
    "artstation by greg rutkowski and alphonse mucha landscape sunset mountains lake forest city "
    "cyberpunk neon futuristic steampunk robot dragon castle beautiful girl boy studio ghibli"
).split()
CASED = ["McDonald", "iPhone", "NASA", "DSLR", "CamelCase", "HDR", "UHD", "VanGogh", "LoRA", "SDXL"]
PUNCT = [",", ".", "!", "?", ";", ":", "(", ")", "[", "]", "{", "}", "<", ">", "/", "\\", "|", "-", "_",
         "+", "=", "*", "^", "%", "$", "#", "@", "~", "`", '"', "'", "...", "!!!", "?!", "((", "))", "::", "--"]
NUMBERS = ["3.14", "1,000", "2024", "1e-5", "8k", "4K", "1920x1080", "007", "-42", "100%", "v1.5",
           "½", "²", "₂", "Ⅻ", "١٢٣", "१२", "0.5", "(word:1.3)", "[word:0.8]"]
APOSTROPHES = ["cat's", "don't", "we're", "they've", "I'm", "we'll", "he'd", "IT'S", "WE'LL", "rock 'n' roll",
               "O'Neil", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "''", "'"]
ACCENTS = ["café", "naïve", "résumé", "Zürich", "cafe\u0301", "Dvořák", "straße", "İstanbul", "Ångström",
           "crème brûlée", "São Paulo", "señor", "Æsir", "œuvre", "ΟΔΟΣ", "Σίσυφος", "кошка", "γάτα"]
CJK = ["猫", "東京タワー", "一只猫的照片", "한국어", "서울의 밤", "ひらがな", "カタカナ", "𠀀", "桜の木", "北京 beijing", "漢字"]
EMOJI = ["🐱", "👨\u200d👩\u200d👧", "🇯🇵", "❤️", "🔥🔥", "😀😃", "🛋️", "✨", "\U0001FAE0"]
SPACES = ["  ", "   ", "\t", "\n", "\r\n", "\n\n", "\u3000", "\xa0", "\u2003", " \t \n "]
HTML = ["&amp;", "&lt;", "&gt;", "&#39;", "&quot;", "&nbsp;", "&eacute;", "&#x2019;", "cats &amp; dogs"]
CURLY = ["“", "”", "‘", "’", "don’t", "“smart”", "it’s"]
SPECIAL = ["<|startoftext|>", "<|endoftext|>", "<|EndOfText|>", "<|STARTOFTEXT|>", "<|endoftext|><|endoftext|>"]
ODD = ["\x00", "\x07", "\x1b[31m", "\xad", "\u200b", "\ufeff", "cafÃ©", "â€™", "ﬁ", "ｆｕｌｌ", "™", "°C", "→"]

GROUPS = (WORDS, CASED, PUNCT, NUMBERS, APOSTROPHES, ACCENTS, CJK, EMOJI, SPACES, HTML, CURLY, SPECIAL, ODD)
#: Relative frequency of each group in the random prompts (words dominate).
WEIGHTS = (60, 6, 12, 6, 6, 5, 3, 3, 4, 0.5, 0.5, 0.5, 0.5)


def make_prompts(n_random: int = 600, seed: int = 20240) -> list[str]:
    """Curated prompts plus ``n_random`` random mixtures, always the same list.

    Args:
        n_random: Number of random prompts.
        seed: Seed of the generator.

    Returns:
        Prompts: every item of every group alone, fixed edge cases (empty,
        whitespace only, > 77 tokens), then random mixtures of 0..30 items.
    """
    prompts: list[str] = ["", " ", "\t\n", "a", "A", "a photo of a cat"]
    for group in GROUPS:
        prompts.extend(group)
    prompts += [
        " ".join(["cat"] * 74), " ".join(["cat"] * 75), " ".join(["cat"] * 76), " ".join(["cat"] * 200),
        ", ".join(WORDS), "!" * 100, "猫" * 100, "🐱" * 60, " ".join(NUMBERS * 3),
        "a<|endoftext|>b", "!!<|endoftext|>!!", "x <|startoftext|> y",
        "cat ! Ã ", "Ã <|endoftext|>", "Ã !", "x Ã ! Ã y",
    ]
    rng = random.Random(seed)
    for _ in range(n_random):
        parts = []
        for _ in range(rng.randint(0, 30)):
            group = rng.choices(GROUPS, weights=WEIGHTS)[0]
            parts.append(rng.choice(group))
        sep = rng.choice([" ", " ", " ", ", ", "", "\n"])
        prompts.append(sep.join(parts))
    return prompts
