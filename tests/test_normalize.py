"""The shared normalisation step (pipeline/normalize.py): the ImageNet formula, parts joined into one batch, and
a batch the caller still holds never written over by a later one."""
import pytest
import torch

from pipeline import augment
from pipeline.normalize import Normalizer

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def imagenet_formula(pixels):
    mean = torch.tensor(augment.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(augment.IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_is_the_imagenet_formula_in_channels_last(dtype):
    pixels = torch.randint(0, 256, (6, 5, 7, 3), dtype=torch.uint8)
    out = Normalizer(torch.device("cpu"), dtype)(pixels)
    assert out.shape == (6, 3, 5, 7) and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    tolerance = 1e-5 if dtype == torch.float32 else 0.02
    assert torch.allclose(out.float(), imagenet_formula(pixels), atol=tolerance, rtol=0.01)


@pytest.mark.parametrize("dtype", DTYPES)
def test_parts_make_the_same_batch_as_the_whole(dtype):
    pixels = torch.randint(0, 256, (6, 5, 7, 3), dtype=torch.uint8)
    normalize = Normalizer(torch.device("cpu"), dtype)
    whole = normalize(pixels).clone()
    assert torch.equal(normalize(pixels[:2], pixels[2:]), whole)
    assert torch.equal(normalize(pixels[:1], pixels[1:3], pixels[3:]), whole)


def _as_integers(batch):
    return batch.view(torch.int32 if batch.element_size() == 4 else torch.int16)


# Each way a caller can keep a batch alive, as (keep, get the pixels back): the tensor, a view of it, a numpy
# export, a DLPack capsule, a tensor made from DLPack.
HOLDERS = {
    "tensor": (lambda batch: batch, lambda kept, dtype: kept),
    "view": (lambda batch: batch[1:3, :, 1:], lambda kept, dtype: kept),
    "numpy": (lambda batch: _as_integers(batch).numpy(), lambda kept, dtype: torch.from_numpy(kept).view(dtype)),
    "dlpack capsule": (torch.utils.dlpack.to_dlpack, lambda kept, dtype: torch.from_dlpack(kept)),
    "from dlpack": (torch.from_dlpack, lambda kept, dtype: kept),
}


@pytest.mark.parametrize("holder", HOLDERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_batch_the_caller_holds_is_never_written_over(holder, dtype):
    keep, get_back = HOLDERS[holder]
    normalize = Normalizer(torch.device("cpu"), dtype)
    pixels = torch.randint(0, 256, (4, 6, 6, 3), dtype=torch.uint8)
    batch = normalize(pixels)
    expected = get_back(keep(batch.clone()), dtype).clone()
    kept = keep(batch)
    del batch
    for shift in range(1, 8):  # more batches than the pool holds, of this shape and another
        normalize(pixels + shift)  # uint8 arithmetic wraps round
        normalize(pixels[:2])
    assert torch.equal(get_back(kept, dtype), expected)
