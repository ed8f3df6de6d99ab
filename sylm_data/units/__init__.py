"""Syllable units: SSL encoders, min-cut segmentation, pooling, k-means and the SylReg model."""
