import torch

from apd.methods.apd.topk import batch_topk_mask, sample_topk_mask, topk_mask


def test_batch_topk_keeps_k_per_instance_over_the_batch() -> None:
    torch.manual_seed(0)
    attr = torch.rand(64, 3, 7)
    mask = topk_mask(attr, topk=0.211, batch_topk=True)
    # K = int(0.211 * 64) = 13 per instance, anywhere in the (batch, C) slab
    assert mask.sum(dim=(0, 2)).tolist() == [13, 13, 13]
    # they are the 13 largest of each instance
    for i in range(3):
        kept = attr[:, i][mask[:, i]]
        assert kept.min() >= attr[:, i][~mask[:, i]].max()


def test_batch_topk_lets_a_sample_take_many_or_none() -> None:
    attr = torch.tensor([[[5.0, 4.0, 3.0]], [[0.1, 0.2, 0.0]]])
    mask = batch_topk_mask(attr, 3)
    assert mask[0, 0].tolist() == [True, True, True]
    assert mask[1, 0].tolist() == [False, False, False]


def test_sample_topk_and_distil() -> None:
    attr = torch.tensor([[[1.0, 3.0, 2.0, 9.0]]])
    assert sample_topk_mask(attr, 2)[0, 0].tolist() == [False, True, False, True]  # 9 and 3
    # distil_from_target: the last component is not selected by attribution and is always on
    mask = topk_mask(attr, topk=1.0, batch_topk=False, always_on_last=True)
    assert mask[0, 0].tolist() == [False, True, False, True]


def test_exact_topk_uses_the_number_of_active_features() -> None:
    x = torch.tensor([[[1.0, 0.0, 0.5]], [[0.0, 0.0, 0.0]]])  # 2 active features in the batch
    attr = torch.tensor([[[0.1, 0.9, 0.3]], [[0.8, 0.2, 0.0]]])
    mask = topk_mask(attr, topk=99.0, batch_topk=True, exact=True, x=x)
    assert mask.sum().item() == 2
    assert mask[0, 0, 1] and mask[1, 0, 0]
