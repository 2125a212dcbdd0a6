"""The README's config reference documents every config key, and only existing ones."""

from __future__ import annotations

import re
from pathlib import Path

from smart_tuner.config import config_keys

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_config_key_is_in_the_reference_table():
    keys = set(config_keys())
    documented = set(re.findall(r"^\| `([a-z_]+(?:\.[a-z_0-9]+)+)` \|", README.read_text(), flags=re.M))
    assert keys - documented == set(), "undocumented keys"
    assert documented - keys == set(), "documented keys that do not exist"
