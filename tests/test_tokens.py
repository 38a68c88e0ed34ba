"""TokenLayout: one description of where every token of a batch sits, and the seeding scheme."""

import torch

from fitv2.seeds import derive_seed, generator
from fitv2.tokens import TokenLayout, image_layout, make_grid, pack_sequences, pad_sequences


def _items(sizes, dim=3):
    return [(torch.randn(h * w, dim), h, w) for h, w in sizes]


def test_padded_layout():
    batch = pad_sequences(_items([(2, 3), (1, 2)]))
    layout = batch.layout
    assert (layout.batch_size, layout.length, layout.images_per_row, layout.packed) == (2, 6, 1, False)
    assert layout.mask.tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0]]
    assert layout.size.tolist() == [[[2, 3]], [[1, 2]]]
    assert torch.equal(layout.grid[0], make_grid(2, 3)) and layout.grid[1, :, 2:].abs().sum() == 0
    assert layout.attention_segment().tolist() == layout.mask.long().tolist()
    assert layout.flat_image_index() is None
    per_image = torch.randn(2, 1, 5)
    assert torch.equal(layout.spread(per_image), per_image)  # broadcasts over each row's tokens


def test_unpadded_rows_need_no_mask():
    layout = image_layout(3, 2, 4)
    assert layout.attention_segment() is None and layout.valid_tokens() == 24
    assert layout.grid.shape == (3, 2, 8) and layout.size.tolist() == [[[2, 4]]] * 3


def test_packed_layout_spreads_each_images_values_over_its_tokens():
    layout = pack_sequences(_items([(1, 3), (2, 2), (1, 2)]), rows=[[0, 1], [2]], length=8).layout
    assert layout.segment.tolist() == [[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    assert layout.real_images().tolist() == [[True, True], [True, False]]
    values = torch.tensor([[[10.0], [20.0]], [[30.0], [40.0]]])  # (B, n, 1)
    spread = layout.spread(values)[..., 0]
    # padding takes its row's first image: harmless, it is masked everywhere it could matter
    assert spread.tolist() == [[10, 10, 10, 20, 20, 20, 20, 10], [30, 30, 30, 30, 30, 30, 30, 30]]
    assert layout.flat_image_index().tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 2, 2, 2, 2, 2, 2, 2, 2]


def test_repeat_and_of():
    layout = pack_sequences(_items([(1, 3), (2, 2)]), rows=[[0, 1]]).layout
    twice = layout.repeat(2)
    assert twice.batch_size == 2 and torch.equal(twice.segment[0], twice.segment[1])
    loose = TokenLayout.of(layout.grid, layout.mask)  # the reference's calling convention: size from the grid
    assert loose.size.tolist() == [[[2, 3]]]


def test_seeds_follow_one_scheme():
    # the polynomial earlier versions wrote out by hand, so resumed runs draw the same numbers
    assert derive_seed(7, 3) == 7 * 1_000_003 + 3
    assert derive_seed(7, 3, 5) == ((7 * 1_000_003 + 3) * 1_000_033 + 5) % 2**63
    assert derive_seed(1, 2, 3) != derive_seed(1, 3, 2)
    assert torch.equal(torch.rand(4, generator=generator(1, 2)), torch.rand(4, generator=generator(1, 2)))
