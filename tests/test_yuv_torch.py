"""The PyTorch reference's YUV conversion (training/vmoe_torch.py,
yuv420_to_rgb and preprocess_uint8 on planes) against values worked by hand
from the standards' Kr and Kb (the same table as tests/test_ops.c's
test_preprocess_yuv_encodings, derived there), so that the parity suite's
YUV references stand on their own; and a bad matrix or range is a
ValueError.

    /usr/bin/python3 tests/test_yuv_torch.py SOURCE_DIR
"""

import os
import sys
import unittest

import numpy as np
import torch

sys.path.insert(0, os.path.join(sys.argv[1], "training"))
import vmoe_torch  # noqa: E402

# matrix: RGB of chroma' +50 on V, then on U (the other at 128), luma' 128.08
# (limited Y 126, chroma 128 + 44) or 128 (full Y 128, chroma 128 + 50).
HAND = {"bt601": ((198, 92, 128), (128, 111, 217)),
        "bt709": ((207, 105, 128), (128, 119, 221)),
        "bt2020": ((202, 99, 128), (128, 120, 222))}
CODES = {"limited": (126, 128 + 44), "full": (128, 128 + 50)}


def planes(y, u, v, h=2, w=2):
    ch, cw = (h + 1) // 2, (w + 1) // 2
    return (np.full((1, h, w), y, np.uint8), np.full((1, ch, cw), u, np.uint8),
            np.full((1, ch, cw), v, np.uint8))


class YuvTorch(unittest.TestCase):
    def test_hand_values(self):
        for matrix, (v_rgb, u_rgb) in HAND.items():
            for yuv_range, (luma, chroma) in CODES.items():
                with self.subTest(matrix=matrix, yuv_range=yuv_range):
                    rgb = vmoe_torch.yuv420_to_rgb(*planes(luma, 128, chroma), matrix, yuv_range)
                    self.assertTrue((rgb == v_rgb).all(), rgb[0, 0, 0])
                    rgb = vmoe_torch.yuv420_to_rgb(*planes(luma, chroma, 128), matrix, yuv_range)
                    self.assertTrue((rgb == u_rgb).all(), rgb[0, 0, 0])

    def test_ranges_of_gray(self):
        for matrix in HAND:
            for yuv_range, luma, gray in (("limited", 16, 0), ("limited", 235, 255),
                                          ("full", 16, 16), ("full", 255, 255)):
                rgb = vmoe_torch.yuv420_to_rgb(*planes(luma, 128, 128), matrix, yuv_range)
                self.assertTrue((rgb == gray).all(), (matrix, yuv_range, luma))

    def test_chroma_of_each_2x2_block(self):
        # A 3x5 frame: chroma 2x3, the last row and column of blocks cut.
        u = np.array([[[100, 150, 200], [50, 60, 70]]], np.uint8)
        y = np.full((1, 3, 5), 128, np.uint8)
        rgb = vmoe_torch.yuv420_to_rgb(y, u, np.full((1, 2, 3), 128, np.uint8), "bt601", "full")
        # B = 128 + 1.772 (U - 128), rounded and clamped:
        # U 100 -> 78.4, 150 -> 166.98, 200 -> 255.6; 50 -> -10.2, 60 -> 7.50, 70 -> 25.2.
        want = [[78, 78, 167, 167, 255], [78, 78, 167, 167, 255], [0, 0, 8, 8, 25]]
        self.assertEqual(rgb[0, :, :, 2].tolist(), want)

    def test_preprocess_takes_planes(self):
        config = {"format": "vmoe", "version": 1, "image_size": [4, 4], "patch_size": 2,
                  "in_channels": 3, "embed_dim": 4, "depth": 1, "num_heads": 1,
                  "mlp_dim": 4, "num_classes": 2, "mean": [0, 0, 0], "std": [1, 1, 1]}
        yuv = planes(126, 128, 172, 4, 4)
        got = vmoe_torch.preprocess_uint8(yuv, config, None, "bt709", "limited")
        want = torch.tensor([207, 105, 128], dtype=torch.float32).reshape(1, 3, 1, 1) / 255
        self.assertTrue(torch.allclose(got, want.expand(1, 3, 4, 4)))

    def test_bad_encoding(self):
        for matrix, yuv_range in (("bt999", "full"), ("bt709", "studio")):
            with self.assertRaisesRegex(ValueError, "is not one of"):
                vmoe_torch.yuv420_to_rgb(*planes(16, 128, 128), matrix, yuv_range)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
