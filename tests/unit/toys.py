"""Tiny models whose decisions can be worked out by hand."""

import torch
from torch import nn


class PixelLogits(nn.Module):
    """One class per pixel: logit_k = 10 · pixel_k, so the brightest pixel wins and confidence grows with the
    gap between pixels. The scale is a parameter, so tests can check that a method froze the model."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        return self.scale * x.flatten(1)
