"""fdhclean: clean the keypoints of the FDH dataset (TriA-GAN, WACV 2024, supplementary S1).

Pipeline: read shard -> estimate pose -> look up body parts -> vote -> write shard + report.
The manifest written at the end is the only contract with `triagan_model`.
"""

__version__ = "0.1.0"
