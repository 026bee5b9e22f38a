"""Genotypes: canonical string round-trip, original 2-bit lists, validation errors."""

from __future__ import annotations

import json

import pytest

import robnets
from robnets.errors import GenotypeError
from robnets.models import ROBNET_FREE, ROBNET_LARGE, CellGenotype, EdgeOp, Genotype, edges_per_cell


def test_published_codes_match_reference_and_round_trip(reference_dir):
    codes = json.loads((reference_dir / "architecture_codes.json").read_text())["codes"]
    assert ROBNET_FREE.to_codes() == codes["robnet_free"]
    assert ROBNET_LARGE.to_codes() == codes["robnet_large_v1"] == codes["robnet_large_v2"]
    for cell_lists in codes.values():
        genotype = Genotype.from_codes(cell_lists)
        text = str(genotype)
        assert Genotype.parse(text) == genotype
        assert Genotype.parse(text).to_codes() == cell_lists
        assert Genotype.parse(json.dumps(cell_lists)) == genotype


def test_canonical_form_groups_edges_by_node():
    assert str(ROBNET_LARGE) == "1111-111111-01110110-1101010111"
    cell = ROBNET_LARGE.cells[0]
    assert [len(node) for node in cell.node_edges()] == [2, 3, 4, 5]
    assert cell.edges[5] is EdgeOp.SEP_CONV and cell.edges[8] is EdgeOp.SKIP
    assert ROBNET_LARGE.is_shared and not ROBNET_FREE.is_shared
    assert len(ROBNET_FREE.cells) == 20 and "_" in str(ROBNET_FREE)


def test_genotypes_are_immutable_and_hashable():
    with pytest.raises(AttributeError):
        ROBNET_LARGE.cells = ()
    assert {ROBNET_LARGE: 1}[Genotype.parse(str(ROBNET_LARGE))] == 1
    assert Genotype.parse(str(ROBNET_FREE)) == ROBNET_FREE != ROBNET_LARGE


def test_edge_counts_and_density():
    assert [edges_per_cell(s) for s in (1, 2, 3, 4)] == [2, 5, 9, 14]
    all_none = Genotype.from_codes([["00"] * 14])
    assert all_none.density() == 0.0
    assert ROBNET_LARGE.density() == 1.0
    assert ROBNET_LARGE.cells[0].num_convs == 13
    # a 3-node cell (9 edges) is a valid genotype too
    assert Genotype.from_codes([["01"] * 9]).steps == 3


@pytest.mark.parametrize(
    "codes, message",
    [
        ([["11"] * 13], "13 edge codes"),
        ([["11"] * 15], "15 edge codes"),
        ([["11"] * 13 + ["12"]], "unknown edge code '12'"),
        ([["11"] * 13 + ["1"]], "unknown edge code '1'"),
        ([], "at least one cell"),
        ([["11"] * 14, ["11"] * 9], "same number of nodes"),
    ],
)
def test_invalid_code_lists_raise_clear_errors(codes, message):
    with pytest.raises(GenotypeError, match=message):
        Genotype.from_codes(codes)


@pytest.mark.parametrize(
    "text, message",
    [
        ("1111-111111-0111011-1101010111", "node 4 of cell 0"),
        ("1111-111111-01110110-1101010112", "node 5 of cell 0"),
        ("", "empty"),
        ("[[", "JSON"),
    ],
)
def test_invalid_strings_raise_clear_errors(text, message):
    with pytest.raises(GenotypeError, match=message):
        Genotype.parse(text)


def test_cell_count_must_match_layers():
    with pytest.raises(GenotypeError, match="20 cells but the network has layers=8"):
        robnets.create_model("robnet_free", layers=8)
    with pytest.raises(GenotypeError, match="share=True needs a genotype with exactly one cell"):
        robnets.create_model("robnet_free", share=True)
    with pytest.raises(GenotypeError, match="steps=3"):
        robnets.create_model("robnet_large_v1", steps=3)


def test_cell_from_bit_string():
    cell = CellGenotype.from_codes("1111-111111-01110110-1101010111")
    assert cell == ROBNET_LARGE.cells[0]
    with pytest.raises(GenotypeError):
        CellGenotype.from_codes("1112")


def test_live_nodes_effective_cells_and_inputs_read():
    assert ROBNET_LARGE.cells[0].is_fully_live() and ROBNET_LARGE.effective() == ROBNET_LARGE
    assert ROBNET_FREE.is_fully_live()
    # node 2 has no input, so node 3 (fed only by node 2) is dead too; node 4 reads input 1 and feeds node 5
    cell = CellGenotype.from_codes("0000-000001-00100000-0000000011")
    assert cell.live_nodes() == [False, True, False, False, True, True]
    assert str(cell.effective()) == "0000-000000-00100000-0000000011"
    assert cell.reads_inputs() == (False, True) and not cell.is_fully_live()
    assert cell.effective().effective() == cell.effective()  # idempotent
    # every node fed and used, but input 0 never read: not fully live, nothing removed
    one_input = CellGenotype.from_codes("0010-000010-00000010-0000000010")
    assert all(one_input.live_nodes()[2:]) and one_input.reads_inputs() == (False, True)
    assert not one_input.is_fully_live() and one_input.effective() == one_input
    # with a smaller output (multiplier 2: the last two nodes), a node feeding neither of them is not used
    unused = CellGenotype.from_codes("1000-010000-00010000-0000000100")
    assert unused.live_nodes() == [True, True, True, True, True, True]
    assert unused.live_nodes(multiplier=2) == [True, True, False, True, True, True]  # node 2 feeds neither
    assert str(unused.effective(multiplier=2)) == "0000-010000-00010000-0000000100"


@pytest.mark.parametrize("text", ["0000-000001-00100000-0000000011", "1100-000000-00100011-0000001100",
                                  "0100-000000-00000000-0000000101"])
def test_the_effective_cell_computes_what_the_cell_computes(text):
    """Dropping the edges that carry no information changes nothing the network computes, in train and eval
    mode: a node without input is all zeros and so is every convolution of it."""
    import torch

    from robnets.models import RobNet

    torch.manual_seed(0)
    raw = RobNet(text, C=4, layers=3)
    effective = RobNet(str(Genotype.parse(text).effective()), C=4, layers=3)
    kept = effective.state_dict()
    assert set(kept) <= set(raw.state_dict())
    effective.load_state_dict({k: v for k, v in raw.state_dict().items() if k in kept})
    x = torch.rand(6, 3, 32, 32)
    for train in (True, False):
        raw.train(train), effective.train(train)
        with torch.no_grad():
            assert torch.allclose(raw(x), effective(x), atol=1e-6)
    assert sum(p.numel() for p in effective.parameters()) < sum(p.numel() for p in raw.parameters())


def test_odd_widths_build_and_only_the_imagenet_stem_needs_an_even_one():
    import torch

    from robnets.errors import RobnetsError
    from robnets.models import RobNet

    net = RobNet(ROBNET_LARGE, C=7, layers=5)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(RobnetsError, match="C must be even with the ImageNet stem"):
        RobNet(ROBNET_LARGE, C=7, layers=5, imagenet_stem=True)
