"""Synthetic FDH data whose correct cleaning is known (`fdhclean synth`).

mesh.py builds a stand-in for DensePose's subdivided SMPL mesh and a Meshcapade-style part
segmentation; body.py paints a posed figure as a part label map with ground-truth keypoints;
paint.py derives the image, masks and CSE vertex ids; annotations.py corrupts the original
keypoints, simulates an estimator and scores both like refine-spec sections 3-4; sample.py
assembles one sample; generate.py writes shards, predictions and the truth tables.
"""

from fdhclean.synth.generate import SynthConfig, generate

__all__ = ["SynthConfig", "generate"]
