"""Sampling from trained generators (triagan-spec "Sampling"): truncation toward w_avg,
multi-modal truncation toward k-means centres of w, and writing images, grids and an index."""
