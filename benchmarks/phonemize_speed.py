"""How long phonemizing an LJSpeech-size corpus takes (``data.text: phonemes``), once: 13,100 lines by default.

Usage: python benchmarks/phonemize_speed.py [--lines 13100] [--words 10-25] [--lang en]

The lines are demo-corpus sentences of ``--words`` words (LJSpeech's lines average about 17 words), cleaned as
training cleans them, then phonemized in one call with the voice of ``--lang`` (en: en-us), as ``prepare_data``
does on a corpus's first run (later runs read the cache). Prints lines, words, seconds and lines per second.
"""

from __future__ import annotations

import argparse
import time

from smart_tuner.config import DEMO_VOICES
from smart_tuner.data.demo import generate_sentences
from smart_tuner.data.phonemes import phonemize
from smart_tuner.data.text import normalize_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=13100)
    parser.add_argument("--words", default="10-25", help="LOW-HIGH words per line")
    parser.add_argument("--lang", default="en", choices=sorted(DEMO_VOICES))
    args = parser.parse_args()
    low, high = (int(x) for x in args.words.split("-"))
    texts = [normalize_text(t) for t in generate_sentences(args.lang, args.lines, 1234, (low, high))]
    words = sum(len(t.split()) for t in texts)
    phonemize(["warm up"], DEMO_VOICES[args.lang])  # loading the library is not the corpus's cost
    start = time.perf_counter()
    out = phonemize(texts, DEMO_VOICES[args.lang])
    seconds = time.perf_counter() - start
    assert len(out) == len(texts) and all(out)
    print(f"{len(texts)} lines ({len(set(texts))} distinct), {words} words, {args.lang} ({DEMO_VOICES[args.lang]}): "
          f"{seconds:.1f} s, {len(texts) / seconds:,.0f} lines/s")


if __name__ == "__main__":
    main()
