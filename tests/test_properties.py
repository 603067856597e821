"""Property-based tests: circuit text and files round trip, prompt files load what was written.

Strategies build the *text* a user would write together with the objects it should mean, so the
properties compare the parser against an independent model rather than against its own printer.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

from pytest_circuits import Circuit, CircuitError, ModelShape, Node, PromptError, PromptPairs
from pytest_circuits.edges import Edge, Receiver

FAST = settings(max_examples=75, deadline=None)
BIG = ModelShape(n_layers=12, n_heads=12, d_mlp=64, d_vocab=100)  # for text only: wide ranges
SMALL = ModelShape(n_layers=3, n_heads=3, d_mlp=4, d_vocab=50)  # for resolve: small expansions


# -- circuit strategies -------------------------------------------------------------------------
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True)
positions = st.none() | st.integers(-6, 12) | st.just("END") | names


def number_text(value: int, draw) -> str:
    """A number as a user may write it: sometimes with a redundant leading zero."""
    return ("0" if draw(st.booleans()) else "") + str(value)


def position_text(position, draw) -> str:
    if position is None:
        return ""
    if isinstance(position, int):
        sign = "-" if position < 0 else ""
        return "@" + sign + number_text(abs(position), draw)
    return f"@{position}"


@st.composite
def node_items(draw, shape: ModelShape = BIG, wildcards: bool = True):
    """(text, Node) for one node, the text spelled independently of ``Node.__str__``."""
    kind = draw(st.sampled_from(["embed", "head", "mlp", "neuron"]))
    position = draw(positions)
    at = position_text(position, draw)
    if kind == "embed":
        return f"embed{at}", Node("embed", position=position)

    def index(size):
        if wildcards and draw(st.integers(0, 4)) == 0:
            return "*", "*"
        value = draw(st.integers(0, size - 1))
        return number_text(value, draw), value

    layer_text, layer = index(shape.n_layers)
    if kind == "mlp":
        return f"MLP{layer_text}{at}", Node("mlp", layer, position=position)
    letter, size = ("H", shape.n_heads) if kind == "head" else ("N", shape.d_mlp)
    index_text, idx = index(size)
    return f"L{layer_text}{letter}{index_text}{at}", Node(kind, layer, idx, position)


@st.composite
def edge_items(draw, shape: ModelShape = BIG):
    """(text, Edge) for one edge that points forwards in ``shape`` (so it also resolves)."""
    kind = draw(st.sampled_from(["head", "mlp", "neuron", "logits"]))
    if kind == "logits":
        receiver, receiver_text, layer = Receiver("logits"), "logits", shape.n_layers
    else:
        layer = draw(st.integers(0, shape.n_layers - 1))
        if kind == "head":
            idx = draw(st.integers(0, shape.n_heads - 1))
            head_input = draw(st.sampled_from([None, "q", "k", "v"]))
            receiver = Receiver("head", layer, idx, head_input)
            receiver_text = f"L{layer}H{idx}" + (f".{head_input}" if head_input else "")
        elif kind == "neuron":
            idx = draw(st.integers(0, shape.d_mlp - 1))
            receiver, receiver_text = Receiver("neuron", layer, idx), f"L{layer}N{idx}"
        else:
            receiver, receiver_text = Receiver("mlp", layer), f"MLP{layer}"

    # Senders that write before the receiver reads: an earlier layer, or the same layer's heads
    # (or the whole layer) for an MLP or neuron receiver; embed always.
    reads_same_layer = kind in ("mlp", "neuron")
    sender_kinds = ["embed"]
    if layer > 0:
        sender_kinds += ["head", "mlp", "layer"]
    elif reads_same_layer:
        sender_kinds += ["head", "layer"]
    sender_kind = draw(st.sampled_from(sender_kinds))
    if sender_kind == "embed":
        sender, sender_text = Node("embed"), "embed"
    else:
        top = layer if reads_same_layer and sender_kind in ("head", "layer") else layer - 1
        if kind == "logits" and draw(st.integers(0, 3)) == 0:
            sender_layer, sender_layer_text = "*", "*"  # a wildcard sender into the logits is always forwards
        else:
            sender_layer = draw(st.integers(0, min(top, shape.n_layers - 1)))
            sender_layer_text = str(sender_layer)
        if sender_kind == "head":
            h = draw(st.sampled_from(["*", *range(shape.n_heads)]))
            sender, sender_text = Node("head", sender_layer, h), f"L{sender_layer_text}H{h}"
        elif sender_kind == "mlp":
            sender, sender_text = Node("mlp", sender_layer), f"MLP{sender_layer_text}"
        else:
            sender, sender_text = Node("layer", sender_layer), f"L{sender_layer_text}"

    position = draw(positions)
    at = position_text(position, draw)
    side = draw(st.sampled_from(["sender", "receiver", "both"]))
    left = sender_text + (at if side in ("sender", "both") else "")
    right = receiver_text + (at if side in ("receiver", "both") else "")
    arrow = draw(st.sampled_from([" -> ", "->", "  ->\t"]))
    return f"{left}{arrow}{right}", Edge(sender, receiver, position)


def circuits(shape: ModelShape = BIG, wildcards: bool = True):
    """(list of item texts, expected Circuit): a node circuit or an edge circuit."""
    nodes = st.lists(node_items(shape, wildcards), max_size=8)
    edges = st.lists(edge_items(shape), min_size=1, max_size=8)
    return (nodes | edges).map(lambda items: ([text for text, _ in items], _expected(items)))


def _expected(items) -> Circuit:
    objects = [obj for _, obj in items]
    return Circuit(edges=frozenset(objects)) if objects and isinstance(objects[0], Edge) else Circuit(frozenset(objects))


# -- circuit text -------------------------------------------------------------------------------
@FAST
@given(circuits())
def test_item_texts_parse_to_the_circuit_they_spell(case):
    """The parser agrees with an independent reading of each item (leading zeros, positions, wildcards)."""
    texts, expected = case
    assert Circuit.parse(texts) == expected


@FAST
@given(circuits())
def test_canonical_text_parses_back_to_an_equal_circuit_and_is_a_fixed_point(case):
    """Text is the source of truth: printing then parsing must lose nothing and print the same."""
    _, circuit = case
    text = str(circuit)
    assert Circuit.parse(text) == circuit
    assert str(Circuit.parse(text)) == text


@FAST
@given(circuits(), st.data())
def test_parsing_ignores_order_separators_and_duplicates(case, data):
    """A paper lists components in any order and with any separators; the circuit is the set."""
    texts, expected = case
    shuffled = data.draw(st.permutations(texts))
    duplicated = shuffled + shuffled[:1]
    if expected.is_edges:
        separators = st.sampled_from([",", ";", "\n", ", ", " ;\n", ",\n\n"])
    else:
        separators = st.sampled_from([" ", ",", ", ", "\n", "\t", " ,  \n"])
    joined = ""
    for i, text in enumerate(duplicated):
        joined += (data.draw(separators) if i else "") + text
    assert Circuit.parse(duplicated) == expected
    if duplicated:
        assert Circuit.parse(joined) == expected


@pytest.fixture(scope="module")
def circuit_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("circuits")


# Any printable name, astral characters included (they once broke the TOML file).
circuit_labels = st.none() | st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20)


@FAST
@given(circuits(), circuit_labels, st.sampled_from([".toml", ".json"]))
def test_save_then_load_gives_an_equal_circuit_with_its_name(circuit_dir, case, name, suffix):
    """A saved circuit file is read back to the same circuit and label, in either format."""
    _, circuit = case
    circuit = Circuit.parse(circuit, name=name)
    loaded = Circuit.load(circuit.save(circuit_dir / f"circuit{suffix}"))
    assert loaded == circuit
    assert str(loaded) == str(circuit)
    assert loaded.name == name


@FAST
@given(circuits(SMALL), circuit_labels)
def test_resolve_is_idempotent_and_leaves_nothing_to_expand(case, name):
    """Resolving a resolved circuit must change nothing: it is already concrete and in range."""
    _, circuit = case
    resolved = Circuit.parse(circuit, name=name).resolve(SMALL)
    assert resolved.resolve(SMALL) == resolved
    assert resolved.name == name
    for item in resolved:
        if isinstance(item, Node):
            assert not item.is_wildcard
        else:
            assert not item.is_shorthand
            assert item.receiver.kind != "head" or item.receiver.input in ("q", "k", "v")
    concrete_nodes = {node for node in circuit.nodes if not node.is_wildcard}
    assert concrete_nodes <= resolved.nodes


circuit_fragments = st.sampled_from(
    ["L", "H", "N", "MLP", "embed", "logits", "@", "-", ">", "->", ",", ";", " ", "\n", "*", ".q", ".x", "0", "12", "END", "(empty)", "-1", "#", "é", "١"]
)
garbage = st.text(max_size=30) | st.lists(circuit_fragments, max_size=12).map("".join)


@settings(max_examples=100, deadline=None)
@given(garbage | st.lists(garbage | st.integers() | st.none(), max_size=4))
def test_any_input_either_parses_or_raises_circuit_error(spec):
    """A typo in a circuit must give the friendly CircuitError, never a crash from inside the parser."""
    try:
        circuit = Circuit.parse(spec)
    except CircuitError:
        return
    assert Circuit.parse(str(circuit)) == circuit


# -- prompt files -------------------------------------------------------------------------------
POSITION_NAMES = ["Nobel", "S1", "IO"]


@st.composite
def prompt_records(draw):
    """Records as a user writes them in JSONL, with token-id prompts and every answer form."""
    n = draw(st.integers(1, 6))
    named = draw(st.lists(st.sampled_from(POSITION_NAMES), unique=True, max_size=2))
    records = []
    for _ in range(n):
        length = draw(st.integers(1, 6))
        tokens = st.lists(st.integers(0, 50_000), min_size=length, max_size=length)
        record = {"clean": draw(tokens), "corrupt": draw(tokens)}
        pair = st.tuples(st.integers(0, 50_000), st.integers(0, 50_000)).map(list)
        form = draw(st.sampled_from(["pair", "pairs", "keys"]))
        if form == "pair":
            record["answers"] = draw(pair)
        elif form == "pairs":
            record["answers"] = draw(st.lists(pair, min_size=1, max_size=3))
        else:
            record["correct"], record["incorrect"] = draw(pair)
        if named:
            record["positions"] = {name: draw(st.integers(-length, length - 1)) for name in named}
        records.append(record)
    return records


fillers = st.lists(
    st.sampled_from(["", "   ", "# a comment", "  # indented comment", '# {"clean": not a record}']), max_size=2
)


@st.composite
def jsonl_files(draw):
    """(records, lines, physical 1-based line number of each record, newline)."""
    records = draw(prompt_records())
    lines, linenos = [], []
    for record in records:
        lines += draw(fillers)
        lines.append(json.dumps(record))
        linenos.append(len(lines))
    lines += draw(fillers)
    return records, lines, linenos, draw(st.sampled_from(["\n", "\r\n"]))


@pytest.fixture(scope="module")
def prompt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("prompts")


def write(directory, lines, newline="\n"):
    path = directory / "pairs.jsonl"
    path.write_bytes(newline.join(lines).encode("utf-8") + newline.encode())
    return path


def normalized_answers(record):
    if "answers" not in record:
        return [(record["correct"], record["incorrect"])]
    answers = record["answers"]
    return [tuple(answers)] if isinstance(answers[0], int) else [tuple(pair) for pair in answers]


@FAST
@given(jsonl_files())
def test_prompt_file_loads_exactly_what_was_written(prompt_dir, case):
    """Blank and comment lines are skipped; prompts, answers and positions arrive unchanged."""
    records, lines, _, newline = case
    pairs = PromptPairs.from_jsonl(write(prompt_dir, lines, newline))
    assert pairs.clean == [r["clean"] for r in records]
    assert pairs.corrupt == [r["corrupt"] for r in records]
    assert pairs.answers == [normalized_answers(r) for r in records]
    assert pairs.positions == {name: [r["positions"][name] for r in records] for name in records[0].get("positions", {})}


@FAST
@given(jsonl_files())
def test_encoded_prompt_file_is_right_padded_with_real_lengths(prompt_dir, case):
    """The engine reads the tensors, so padding, lengths, answer masks and positions must match the file."""
    records, lines, _, newline = case
    enc = PromptPairs.from_jsonl(write(prompt_dir, lines, newline)).encode()
    lengths = [len(r["clean"]) for r in records]
    seq = max(lengths)
    assert enc.lengths.tolist() == lengths
    assert enc.clean.tolist() == [r["clean"] + [0] * (seq - len(r["clean"])) for r in records]
    assert enc.corrupt.tolist() == [r["corrupt"] + [0] * (seq - len(r["corrupt"])) for r in records]
    answers = [normalized_answers(r) for r in records]
    width = max(map(len, answers))
    assert enc.answers.tolist() == [[list(p) for p in a] + [[0, 0]] * (width - len(a)) for a in answers]
    assert enc.answer_mask.tolist() == [[True] * len(a) + [False] * (width - len(a)) for a in answers]
    assert enc.answer_positions.tolist() == [n - 1 for n in lengths]
    for name in records[0].get("positions", {}):
        values = [r["positions"][name] for r in records]
        assert enc.positions[name].tolist() == [v + n if v < 0 else v for v, n in zip(values, lengths)]
        assert enc.position_mask(name).sum(dim=1).tolist() == [1] * len(records)
    assert torch.equal(enc.position_mask(-1), enc.position_mask("END"))


@st.composite
def broken_line(draw, records, lines, linenos):
    """Break one record's line so that loading must name it; returns (lines, row)."""
    kinds = ["invalid JSON", "missing key", "not an object", "corrupt length differs", "answers malformed"]
    named = sorted(records[0].get("positions", {}))
    if named or len(records) == 1:  # a name new on one line only would be the error below instead
        kinds.append("position outside")
    if named and len(records) > 1:
        kinds.append("position on other lines only")
    kind = draw(st.sampled_from(kinds))
    row = draw(st.integers(0, len(records) - 1))
    record = dict(records[row])
    length = len(record["clean"])
    if kind == "invalid JSON":
        text = draw(st.sampled_from([json.dumps(record)[:-1], json.dumps(record).replace(":", "", 1), "{clean: [1]}", "'x'"]))
    elif kind == "missing key":
        keys = ["clean", "corrupt", "answers" if "answers" in record else draw(st.sampled_from(["correct", "incorrect"]))]
        del record[draw(st.sampled_from(keys))]
        text = json.dumps(record)
    elif kind == "not an object":
        text = json.dumps(draw(st.sampled_from([[1, 2], 3, "clean", None])))
    elif kind == "corrupt length differs":
        record["corrupt"] = draw(st.lists(st.integers(0, 9), max_size=8).filter(lambda tokens: len(tokens) != length))
        text = json.dumps(record)
    elif kind == "answers malformed":
        record.pop("correct", None), record.pop("incorrect", None)
        record["answers"] = draw(st.sampled_from([[1], [1, 2, 3], [], [[1, 2], [3]], [True, False], [1.5, 2], "ab"]))
        text = json.dumps(record)
    elif kind == "position outside":
        bad = draw(st.integers(length, length + 5) | st.integers(-length - 5, -length - 1))
        record["positions"] = {**record.get("positions", {}), draw(st.sampled_from(named or POSITION_NAMES)): bad}
        text = json.dumps(record)
    else:
        positions = dict(record["positions"])
        del positions[draw(st.sampled_from(sorted(positions)))]
        record["positions"] = positions
        text = json.dumps(record)
    broken = list(lines)
    broken[linenos[row] - 1] = text
    return broken, row


@FAST
@given(jsonl_files(), st.data())
def test_a_bad_line_is_reported_with_its_physical_line_number(prompt_dir, case, data):
    """A user fixes a prompt file by jumping to path:line, counting blank and comment lines; this
    holds for errors found while reading a line and for those PromptPairs finds afterwards."""
    records, lines, linenos, newline = case
    broken, row = data.draw(broken_line(records, lines, linenos))
    path = write(prompt_dir, broken, newline)
    with pytest.raises(PromptError) as error:
        PromptPairs.from_jsonl(path)
    assert f"{path}:{linenos[row]}:" in str(error.value)


CORRUPTION_NAMES = st.lists(st.from_regex(r"[a-z][a-z_0-9]{0,8}", fullmatch=True), min_size=1, max_size=3, unique=True)


@FAST
@given(prompt_records(), CORRUPTION_NAMES, st.randoms(use_true_random=False))
def test_named_corrupt_sets_load_set_by_set(prompt_dir, records, names, rng):
    """Several named corrupt sets per line: each set arrives whole, in the first line's order, and
    its view encodes exactly those prompts."""
    for record in records:
        length = len(record["clean"])
        record["corrupt"] = {name: [rng.randrange(50_000) for _ in range(length)] for name in names}
    pairs = PromptPairs.from_jsonl(write(prompt_dir, [json.dumps(r) for r in records]))
    assert pairs.corruption_names == tuple(names)
    for name in names:
        view = pairs.only(name)
        assert view.corruption == name and view.corrupt == [r["corrupt"][name] for r in records]
        encoded = view.encode()
        for row, record in enumerate(records):
            assert encoded.corrupt[row, : len(record["clean"])].tolist() == record["corrupt"][name]


# -- bugs these properties found, kept as regression tests ---------------------------------------
def test_layer_and_head_senders_into_one_receiver_print():
    """``L0 -> logits`` next to ``L0H0 -> logits``: sorting the senders mixes key types."""
    circuit = Circuit.parse("L0 -> logits, L0H0 -> logits")
    assert Circuit.parse(str(circuit)) == circuit


def test_circuit_name_outside_the_bmp_survives_toml(circuit_dir):
    """An emoji in a circuit name is written as a \\ud83d\\ude00 pair, which TOML rejects."""
    circuit = Circuit.parse("L0H1", name="IOI \N{GRINNING FACE}")
    assert Circuit.load(circuit.save(circuit_dir / "emoji.toml")).name == circuit.name


def test_prompt_text_with_a_unicode_line_separator_loads(prompt_dir):
    """JSON allows a raw U+2028 inside a string, so a JSONL line written with ensure_ascii=False may hold one."""
    record = {"clean": "one\u2028two", "corrupt": "one\u2028too", "answers": ["a", "b"]}
    path = write(prompt_dir, [json.dumps(record, ensure_ascii=False)])
    assert PromptPairs.from_jsonl(path).clean == [record["clean"]]


def test_positions_that_are_not_an_object_give_a_prompt_error(prompt_dir):
    """``"positions": [3]`` should be a PromptError naming the line, not an AttributeError."""
    path = write(prompt_dir, [json.dumps({"clean": [1, 2], "corrupt": [3, 4], "answers": [5, 6], "positions": [1]})])
    with pytest.raises(PromptError, match=f"{path}:1"):
        PromptPairs.from_jsonl(path)
