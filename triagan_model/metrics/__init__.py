"""Evaluation metrics (triagan-spec.md, Evaluation): FID / FID_CLIP over a registry of frozen
feature networks (`fid`, `frechet`) and OKS against the conditioning keypoints (`oks`)."""
