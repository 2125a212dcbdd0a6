"""NVIDIA's Tacotron 2 checkpoints: a state_dict in their exact layout (key names and shapes as in NVIDIA/tacotron2's
model.py, layers.py, hparams.py and text/symbols.py; random values) converts, loads and warm-starts with every
tensor in its place. The expected placement below is written out from the facts, independently of
smart_tuner/tts/nvidia.py."""

from __future__ import annotations

import json

import pytest
import torch

from smart_tuner import cli
from smart_tuner.config import build_config
from smart_tuner.data.text import SymbolTable
from smart_tuner.tts import build_family
from smart_tuner.tts.inference import load_for_inference
from smart_tuner.tts.nvidia import symbol_table as nvidia_symbol_table
from smart_tuner.tts.warm_start import WarmStartError, read_source, transfer_weights

from .conftest import tiny_config

N_SYMBOLS = 148  # pad, '-', 10 punctuation marks and space, 52 letters, 84 ARPAbet phonemes


def lstm(prefix: str, ours: str, inputs: int, hidden: int, reverse: bool) -> list[tuple[str, tuple, str]]:
    suffixes = [""] + (["_reverse"] if reverse else [])
    layer = "_l0" if reverse else ""
    shapes = (("weight_ih", (4 * hidden, inputs)), ("weight_hh", (4 * hidden, hidden)), ("bias_ih", (4 * hidden,)),
              ("bias_hh", (4 * hidden,)))
    return [(f"{prefix}.{kind}{layer}{s}", shape, f"{ours}.{kind}{layer}{s}")
            for s in suffixes for kind, shape in shapes]


def batch_norm(prefix: str, ours: str, channels: int) -> list[tuple[str, tuple, str]]:
    return [(f"{prefix}.{k}", () if k == "num_batches_tracked" else (channels,), f"{ours}.{k}")
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def nvidia_layout() -> list[tuple[str, tuple, str]]:
    """(NVIDIA's name, its shape at their hparams.py defaults, the name our model gives it)."""
    rows = [("embedding.weight", (N_SYMBOLS, 512), "encoder.embedding.weight")]
    for i in range(3):
        rows += [(f"encoder.convolutions.{i}.0.conv.weight", (512, 512, 5), f"encoder.convs.{4 * i}.weight"),
                 (f"encoder.convolutions.{i}.0.conv.bias", (512,), f"encoder.convs.{4 * i}.bias")]
        rows += batch_norm(f"encoder.convolutions.{i}.1", f"encoder.convs.{4 * i + 1}", 512)
    rows += lstm("encoder.lstm", "encoder.lstm", 512, 256, reverse=True)
    rows += [("decoder.prenet.layers.0.linear_layer.weight", (256, 80), "decoder.prenet.layers.0.weight"),
             ("decoder.prenet.layers.1.linear_layer.weight", (256, 256), "decoder.prenet.layers.1.weight")]
    rows += lstm("decoder.attention_rnn", "decoder.attention_rnn", 256 + 512, 1024, reverse=False)
    a = "decoder.attention_layer"
    rows += [(f"{a}.query_layer.linear_layer.weight", (128, 1024), "decoder.attention.query.weight"),
             (f"{a}.memory_layer.linear_layer.weight", (128, 512), "decoder.attention.memory.weight"),
             (f"{a}.v.linear_layer.weight", (1, 128), "decoder.attention.v.weight"),
             (f"{a}.location_layer.location_conv.conv.weight", (32, 2, 31), "decoder.attention.location_conv.weight"),
             (f"{a}.location_layer.location_dense.linear_layer.weight", (128, 32),
              "decoder.attention.location_dense.weight")]
    rows += lstm("decoder.decoder_rnn", "decoder.decoder_rnn", 1024 + 512, 1024, reverse=False)
    rows += [("decoder.linear_projection.linear_layer.weight", (80, 1536), "decoder.projection.weight"),
             ("decoder.linear_projection.linear_layer.bias", (80,), "decoder.projection.bias"),
             ("decoder.gate_layer.linear_layer.weight", (1, 1536), "decoder.gate.weight"),
             ("decoder.gate_layer.linear_layer.bias", (1,), "decoder.gate.bias")]
    channels = [80, 512, 512, 512, 512, 80]
    for i in range(5):
        rows += [(f"postnet.convolutions.{i}.0.conv.weight", (channels[i + 1], channels[i], 5),
                  f"postnet.net.{4 * i}.weight"),
                 (f"postnet.convolutions.{i}.0.conv.bias", (channels[i + 1],), f"postnet.net.{4 * i}.bias")]
        rows += batch_norm(f"postnet.convolutions.{i}.1", f"postnet.net.{4 * i + 1}", channels[i + 1])
    return rows


def random_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape, _ in nvidia_layout():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(12345, dtype=torch.long)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[name] = torch.randn(shape, generator=generator)
    return state


@pytest.fixture(scope="module")
def nvidia_files(tmp_path_factory):
    """The same random weights as NVIDIA/tacotron2 saves them and as DeepLearningExamples does (``module.``)."""
    root = tmp_path_factory.mktemp("nvidia")
    state = random_state()
    plain, ddp = root / "tacotron2_statedict.pt", root / "dle_checkpoint.pt"
    torch.save({"iteration": 1000, "state_dict": state, "optimizer": {}, "learning_rate": 1e-3}, plain)
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in state.items()}}, ddp)
    return state, {"nvidia": plain, "dle": ddp}


def test_the_layout_facts_add_up():
    rows = nvidia_layout()
    assert len(rows) == 84  # the 84 tensors of NVIDIA's state_dict
    params = sum(torch.Size(shape).numel() for name, shape, _ in rows
                 if not name.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert params == 28_193_153
    model = build_family(build_config({"preset": "tacotron2"})).build(N_SYMBOLS)
    ours = model.state_dict()
    assert set(ours) == {o for _, _, o in rows} | {"decoder.attention.v.bias"}  # ours: one bias more
    assert all(tuple(ours[o].shape) == shape for _, shape, o in rows)


@pytest.mark.parametrize("style", ["nvidia", "dle"])
def test_convert_places_every_tensor(nvidia_files, tmp_path, style, capsys):
    state, files = nvidia_files
    out = tmp_path / "converted.pt"
    assert cli.main(["convert", "nvidia", str(files[style]), "--out", str(out)]) == 0
    assert "converted 84 tensors (28,193,154 parameters)" in capsys.readouterr().out
    loaded = load_for_inference(out)
    ours = loaded.model.state_dict()
    for name, _, our_name in nvidia_layout():
        assert torch.equal(ours[our_name], state[name]), (name, our_name)
    assert ours["decoder.attention.v.bias"].item() == 0.0  # NVIDIA's v has no bias: zero changes nothing
    assert loaded.symbols.symbols[:13] == ["_", "-", "!", "'", "(", ")", ",", ".", ":", ";", "?", " ", "A"]
    assert len(loaded.symbols) == N_SYMBOLS and loaded.symbols.symbols[-1] == "@ZH"
    assert loaded.config.model.r == 1 and loaded.config.data.mel_standardize is False
    assert loaded.stats.is_identity
    # English cleaning, no end-of-sequence symbol: ids as NVIDIA's text_to_sequence gives them.
    assert loaded.symbols.encode("Dr. Who, 2!") == [loaded.symbols.symbols.index(c) for c in "doctor who, two!"]


def test_init_from_an_nvidia_file_directly(nvidia_files):
    """``--init-from`` takes the NVIDIA file as it is: every tensor loaded, the embedding remapped by symbol."""
    state, files = nvidia_files
    config = build_config({"preset": "tacotron2", "data": {"mel_standardize": False, "cleaner": "english"}})
    family = build_family(config)
    symbols = SymbolTable.from_texts(["hello, world!", "ёж"])  # <pad> <eos> <unk> ' ' ! , d e h l o r w ё ж
    model = family.build(len(symbols))
    fresh_rows = model.state_dict()["encoder.embedding.weight"].clone()
    report = transfer_weights(model, family, symbols, read_source(files["dle"], family))
    ours = model.state_dict()
    by_name = {t.name: t for t in report.tensors}
    for name, _, our_name in nvidia_layout():
        if our_name != "encoder.embedding.weight":
            assert by_name[our_name].status == "loaded" and torch.equal(ours[our_name], state[name]), our_name
    assert by_name["encoder.embedding.weight"].status == "remapped"
    nvidia_ids = {s: i for i, s in enumerate(["_", "-"] + list("!'(),.:;? ")
                                              + list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))}
    for row, symbol in enumerate(symbols.symbols):
        theirs = {"<pad>": "_"}.get(symbol, symbol)
        expected = state["embedding.weight"][nvidia_ids[theirs]] if theirs in nvidia_ids else fresh_rows[row]
        assert torch.equal(ours["encoder.embedding.weight"][row], expected), symbol
    assert report.to_dict()["counts"] == {"loaded": 84, "remapped": 1, "skipped": 0}
    json.dumps(report.to_dict())


def test_other_files_are_refused_with_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(3)}, junk)
    assert cli.main(["convert", "nvidia", str(junk), "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "not an NVIDIA Tacotron 2 checkpoint" in err[0]
    assert cli.main(["convert", "nvidia", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "o.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_init_from_an_nvidia_file_into_the_demo_preset_is_refused_naming_what_matched(nvidia_files):
    """Issue 22, row 8: into the demo preset only counters, the zero v bias and a few small tensors would fit;
    that is no warm start, and the error says what matched and what did not (unless the user lowers the share)."""
    _, files = nvidia_files
    config = build_config({"preset": "demo", "data": {"mel_standardize": False, "cleaner": "english"}})
    family = build_family(config)
    symbols = SymbolTable.from_texts(["hello, world!"])
    model = family.build(len(symbols))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WarmStartError) as caught:
        transfer_weights(model, family, symbols, read_source(files["nvidia"], family), min_share=0.5)
    message = str(caught.value)
    assert "\n" not in message and "parameters (0.0%) would come across, below train.init_min_share=0.5" in message
    assert "71 shape mismatches" in message and "--set preset=tacotron2" in message, message
    assert "num_batches_tracked" not in message, message  # counters are no learned value
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded
    # The report counts parameters, not tensors: what the full preset takes from the same file.
    big = build_family(build_config({"preset": "tacotron2", "data": {"mel_standardize": False}}))
    report = transfer_weights(big.build(N_SYMBOLS), big, nvidia_symbol_table(), read_source(files["nvidia"], big),
                              min_share=0.5)
    assert report.parameters == 28_193_154 and report.transferred == 28_193_153  # all but the zero v bias
    assert report.to_dict()["parameters"] == {"transferred": 28_193_153, "total": 28_193_154}


def test_convert_refuses_a_checkpoint_with_nan_weights_or_a_missing_tensor(nvidia_files, tmp_path, capsys):
    """Issue 22, rows 16 and 17: one line naming the tensor, nothing written."""
    state, _ = nvidia_files
    broken, out = tmp_path / "nan.pt", tmp_path / "out.pt"
    torch.save({"state_dict": {**state, "decoder.decoder_rnn.weight_hh": torch.full((4096, 1024), float("nan"))}},
               broken)
    assert cli.main(["convert", "nvidia", str(broken), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hold NaN or inf (first: decoder.decoder_rnn.weight_hh)" in err[0], err
    assert not out.exists()
    torch.save({"state_dict": {k: v for k, v in state.items() if k != "encoder.lstm.weight_hh_l0"}}, broken)
    assert cli.main(["convert", "nvidia", str(broken), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no tensor 'encoder.lstm.weight_hh_l0'" in err[0], err
    assert not out.exists()


def test_english_cleaning_reads_numbers_and_abbreviations():
    from smart_tuner.data.text import english_cleaner, number_words

    assert number_words(0) == "zero" and number_words(115) == "one hundred fifteen"
    assert number_words(2_000_017) == "two million seventeen"
    assert english_cleaner("Mr. Smith paid $3.50 in 1984.") == (
        "mister smith paid three dollars and fifty cents in nineteen eighty four.")
    assert english_cleaner("The 21st of 2,500 people; 12.5%  café  — “ok”") == (
        'the twenty first of two thousand five hundred people; twelve point five percent cafe - "ok"')
    assert english_cleaner("In 2005, Dr. Lee saw 1 cat.") == "in two thousand five, doctor lee saw one cat."
    assert english_cleaner("Привет") == "привет"  # no ASCII form: kept, so that a symbol check can name it


def test_a_symbol_table_saved_before_cleaners_reads_as_before():
    old = {"symbols": ["<pad>", "<eos>", "<unk>", " ", "a", "b"], "lowercase": True}
    table = SymbolTable.from_dict(old)
    assert table.encode("Ab c") == [4, 5, 3, 2, 1] and table.cleaner == "basic" and table.pad_id == 0


def test_arpabet_in_braces_reads_as_nvidia_reads_it(nvidia_files, tmp_path, capsys):
    """``{HH AH0 L OW1}`` is read as the ARPAbet symbols of a converted table; the text around it is cleaned with
    a space at its ends kept, as NVIDIA's text_to_sequence does; an unknown ARPAbet symbol is named."""
    table = nvidia_symbol_table()
    ids = table.encode("Say {HH AH0 L OW1} to Dr. Who!")
    assert [table.symbols[i] for i in ids] == [*"say ", "@HH", "@AH0", "@L", "@OW1", *" to doctor who!"]
    assert table.encode("{hh ah0 l ow1}, world") == table.encode("{HH AH0 L OW1}, world")
    assert table.missing("{HH XX0} hi") == ["@XX0"]
    characters = SymbolTable.from_texts(["say {hello}"])  # no ARPAbet symbols: braces are characters
    assert characters.tokens("say {hello}") == list("say {hello}")

    _state, files = nvidia_files
    converted = tmp_path / "converted.pt"
    assert cli.main(["convert", "nvidia", str(files["nvidia"]), "--out", str(converted)]) == 0
    out = tmp_path / "speech"
    assert cli.main(["synthesize", "--checkpoint", str(converted), "--text", "{HH AH0 L OW1} world", "--out",
                     str(out), "--no-progress", "--seed", "1"]) == 0
    assert (out / "001.wav").is_file()
    assert cli.main(["synthesize", "--checkpoint", str(converted), "--text", "{HH QQ1} world", "--out",
                     str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "'@QQ1'" in capsys.readouterr().err


def test_arpabet_mixing_replaces_a_share_of_dictionary_words():
    import random

    from smart_tuner.data.arpabet import dictionary, mix

    assert dictionary()["hello"] == "HH AH0 L OW1"
    text = "hello world, {K AE1 T} and zxqv!"
    assert mix(text, 0.0, random.Random(0)) == text
    assert mix(text, 1.0, random.Random(0)) == "{HH AH0 L OW1} {W ER1 L D}, {K AE1 T} {AH0 N D} zxqv!"
    many = " ".join(["hello"] * 400)
    braced = mix(many, 0.3, random.Random(1)).count("{")
    assert 80 < braced < 160  # about 30% of 400


def test_training_with_p_arpabet_reads_words_as_arpabet_seeded_by_epoch(corpus_en, tmp_path):
    from smart_tuner.config import ConfigError
    from smart_tuner.train.trainer import Trainer

    with pytest.raises(ConfigError, match="data.p_arpabet mixes ARPAbet into character text"):
        build_config({"data": {"text": "phonemes", "p_arpabet": 0.5}})
    config = tiny_config(corpus_en, tmp_path, data={"p_arpabet": 0.5}, train={"max_steps": 4, "eval_every": 2})
    trainer = Trainer(config, tmp_path / "run", progress=False)
    train, table = trainer.data.train, trainer.symbols
    assert table.arpabet and "@HH" in table.symbols
    first = [train.item(i, 0)[0].tolist() for i in range(len(train))]
    assert first == [train.item(i, 0)[0].tolist() for i in range(len(train))]  # the same draw for the same epoch
    assert first != [train.item(i, 1)[0].tolist() for i in range(len(train))]  # another draw in another epoch
    arpabet_ids = {table.symbols.index(f"@{a}") for a in ("HH", "AH0", "DH", "AH1", "IH0", "T", "N", "D", "S")}
    assert any(set(ids) & arpabet_ids for ids in first)
    trainer.fit()
    loaded = load_for_inference(tmp_path / "run" / "checkpoints" / "last.pt")
    assert loaded.symbols.encode("{HH AH0 L OW1}")[:4] == [table.symbols.index(s) for s in ("@HH", "@AH0", "@L",
                                                                                             "@OW1")]
