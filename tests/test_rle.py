"""COCO RLE: column-major runs that pycocotools decodes as they are stored."""

import numpy as np
import torch
from pycocotools import mask as mask_utils
from sam2.utils.amg import mask_to_rle_pytorch

from pipeline.core import rle


def asymmetric_mask() -> np.ndarray:
    mask = np.zeros((7, 11), dtype=np.uint8)
    mask[1:3, 2:9] = 1  # a wide bar: row-major and column-major runs differ
    mask[5, 10] = 1
    return mask


def test_encode_decode_roundtrip():
    mask = asymmetric_mask()
    encoded = rle.encode_mask(mask)
    assert isinstance(encoded["counts"], str)
    assert encoded["size"] == [7, 11]
    assert np.array_equal(
        mask_utils.decode({**encoded, "counts": encoded["counts"].encode()}), mask
    )
    assert rle.area(encoded) == int(mask.sum()) == 15
    assert rle.bbox(encoded) == [2.0, 1.0, 9.0, 5.0]


def test_sam2_uncompressed_rle_compresses_to_the_same_mask():
    mask = asymmetric_mask()
    uncompressed = mask_to_rle_pytorch(torch.as_tensor(mask[None]).bool())[0]
    compressed = rle.compress(uncompressed)
    assert compressed == rle.encode_mask(mask)
    assert np.array_equal(rle.decode(compressed), mask)
