"""Evaluation: metrics (PSNR/SSIM/NIQE), restoration (whole, tiled, self-ensemble), image IO.

Submodules are imported explicitly (``from ast_model.eval.metrics import psnr``); this package imports
nothing at import time so that the metrics stay usable without loading torch.
"""
