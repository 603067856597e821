import json

import pytest

from pytest_circuits import Circuit, CircuitError, ModelShape, Node

SHAPE = ModelShape(n_layers=3, n_heads=4, d_mlp=8, d_vocab=50)


@pytest.mark.parametrize(
    "text",
    ["L0H1", "embed", "MLP2", "L1N7", "L9H6@-1", "L9H6@END", "embed@Nobel", "MLP*", "L3H*", "L*H5", "L*N*", "L0H1@3"],
)
def test_each_node_form_parses_and_prints_back(text):
    assert str(Node.parse(text)) == text


def test_canonical_text_sorts_and_round_trips():
    circuit = Circuit.parse("MLP1, L1H0 embed L0H3@END\nL0H1 L1N2 L0H1@2")
    assert str(circuit) == "embed L0H1 L0H1@2 L0H3@END L1H0 L1N2 MLP1"
    assert Circuit.parse(str(circuit)) == circuit
    assert Circuit.parse(["L1H0", "MLP1", "L0H1@2", "L0H3@END", "L1N2", "L0H1", "embed"]) == circuit


def test_wildcards_expand_against_the_model():
    assert str(Circuit.parse("L1H* MLP*").resolve(SHAPE)) == "MLP0 L1H0 L1H1 L1H2 L1H3 MLP1 MLP2"
    assert str(Circuit.parse("L*H2@END").resolve(SHAPE)) == "L0H2@END L1H2@END L2H2@END"
    assert len(Circuit.parse("L0N*").resolve(SHAPE)) == 8


@pytest.mark.parametrize(
    "text, quoted, fact",
    [
        ("L3H0", "'L3H0'", "layer 3 is out of range"),
        ("L0H4", "'L0H4'", "head 4 is out of range"),
        ("L2N8", "'L2N8'", "neuron 8 is out of range"),
        ("MLP5", "'MLP5'", "layer 5 is out of range"),
    ],
)
def test_out_of_range_quotes_the_text_and_states_the_sizes(text, quoted, fact):
    with pytest.raises(CircuitError) as error:
        Circuit.parse(text).resolve(SHAPE)
    message = str(error.value)
    assert quoted in message and fact in message
    assert "3 layers (0-2), 4 heads per layer (0-3) and 8 neurons per MLP (0-7)" in message


def test_mlp_nodes_on_an_attention_only_model_are_errors():
    with pytest.raises(CircuitError, match="'MLP0' names an MLP, but the model has .* no MLPs"):
        Circuit.parse("MLP0").resolve(ModelShape(2, 2, 0, 10))


@pytest.mark.parametrize("text", ["L1X2", "head3", "L1H", "MLP", "L1H2@", "L1H2@@3"])
def test_unknown_components_quote_the_text(text):
    with pytest.raises(CircuitError, match=f"unknown component '{text}'"):
        Circuit.parse(text)


def test_a_whole_layer_as_node_suggests_what_to_write():
    with pytest.raises(CircuitError, match="write L3H\\* MLP3"):
        Circuit.parse("L3")


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_save_and_load_round_trip(tmp_path, suffix):
    circuit = Circuit.parse("L0H1 L1H3@END MLP*", name="induction")
    loaded = Circuit.load(circuit.save(tmp_path / f"c{suffix}"))
    assert loaded == circuit and loaded.name == "induction"


def test_loading_malformed_files_names_file_and_line(tmp_path):
    bad_json = tmp_path / "c.json"
    bad_json.write_text('{\n  "nodes": ["L0H1",\n}\n')
    with pytest.raises(CircuitError, match=r"c\.json:3: not valid JSON"):
        Circuit.load(bad_json)
    bad_toml = tmp_path / "c.toml"
    bad_toml.write_text('nodes = ["L0H1"\n')
    with pytest.raises(CircuitError, match=r"c\.toml: not valid TOML"):
        Circuit.load(bad_toml)
    bad_node = tmp_path / "n.json"
    bad_node.write_text(json.dumps({"nodes": ["L0H1", "L0Q9"]}))
    with pytest.raises(CircuitError, match=r"n\.json:1: unknown component 'L0Q9'"):
        Circuit.load(bad_node)
    no_nodes = tmp_path / "x.toml"
    no_nodes.write_text('name = "x"\n')
    with pytest.raises(CircuitError, match="expected a table with a 'nodes' list"):
        Circuit.load(no_nodes)
    with pytest.raises(CircuitError, match="use a .toml or .json file"):
        Circuit.load(tmp_path / "c.yaml")


def test_short_form_for_tables():
    circuit = Circuit.parse("L*H*").resolve(SHAPE)
    assert len(circuit.short(20)) == 20 and circuit.short(20).endswith("…")
