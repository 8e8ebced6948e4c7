"""triagan_model: TriA-GAN (Hukkelås & Lindseth, WACV 2024) networks, training and evaluation.

The networks (`triagan_model.networks`) import without the data or training code. Training
reads FDH shards only through a manifest (see docs/manifest.md); this package never imports
`fdhclean`.
"""

__version__ = "0.1.0"
