"""A seeded procedural English sentence generator: a small grammar over our own word lists."""

import random

_NAMES = "Ada Ben Clara Dev Elena Finn Grace Hugo Iris Jonah Kira Leo Maya Nico Olive Pablo Quinn Rosa Sami Tara Umar Vera Wes Yara Zane".split()
_NOUNS = ("river garden lantern window teacher engine bridge village market doctor letter harbor forest "
          "kitchen pilot melody candle mountain station painter island tower blanket compass violin rocket "
          "museum orchard farmer ladder meadow notebook sailor theatre wagon whistle").split()
_ADJECTIVES = ("quiet bright ancient gentle narrow golden tired curious heavy silver distant patient "
               "crowded hollow eager frozen humble rusty clever sudden").split()
_VERBS_T = ("repaired painted followed carried noticed opened visited described borrowed measured "
            "watched cleaned counted explored remembered").split()
_VERBS_I = "waited laughed slept wandered listened shivered paused arrived vanished smiled".split()
_ADVERBS = "slowly quietly carefully suddenly happily barely softly early later again".split()
_PLACES = ("near the station", "behind the old mill", "across the valley", "under the bridge",
           "beside the harbor", "inside the museum", "at the edge of town", "on the hill")
_TIMES = ("this morning", "after dinner", "last winter", "before sunrise", "on Sunday", "at midnight",
          "every spring", "in the afternoon")
_NUMBERS = "two three four five seven nine eleven twelve twenty forty".split()


def _noun_phrase(rng: random.Random) -> str:
  r = rng.random()
  if r < 0.25:
    return rng.choice(_NAMES)
  words = [rng.choice(("the", "a", "my", "our", "that", rng.choice(_NUMBERS)))]
  if rng.random() < 0.6:
    words.append(rng.choice(_ADJECTIVES))
  noun = rng.choice(_NOUNS)
  words.append(noun + "s" if words[0] in _NUMBERS else noun)
  if words[0] == "a" and words[1][0] in "aeiou":
    words[0] = "an"
  return " ".join(words)


def _clause(rng: random.Random) -> str:
  subject = _noun_phrase(rng)
  if rng.random() < 0.6:
    parts = [subject, rng.choice(_VERBS_T), _noun_phrase(rng)]
  else:
    parts = [subject, rng.choice(_VERBS_I)]
  if rng.random() < 0.4:
    parts.append(rng.choice(_ADVERBS))
  if rng.random() < 0.4:
    parts.append(rng.choice(_PLACES))
  if rng.random() < 0.3:
    parts.append(rng.choice(_TIMES))
  return " ".join(parts)


def sentence(rng: random.Random, max_clauses: int = 3) -> str:
  """One sentence of 1..max_clauses clauses (about 2 to 30 words)."""
  if rng.random() < 0.15:
    return rng.choice(("Yes", "No", "Hello", "Thank you", "Good morning", "Of course", "Wait")) + "."
  clauses = [_clause(rng) for _ in range(rng.randint(1, max_clauses))]
  text = clauses[0]
  for c in clauses[1:]:
    text += rng.choice((", and ", ", but ", " while ", " because ", ", so ")) + c
  text = text[0].upper() + text[1:]
  return text + ("?" if rng.random() < 0.1 else ".")


def unique_sentences(n: int, seed: int) -> list[str]:
  """`n` distinct sentences, a pure function of (n, seed)."""
  rng, seen, out = random.Random(seed), set(), []
  while len(out) < n:
    s = sentence(rng)
    if s not in seen:
      seen.add(s)
      out.append(s)
  return out
