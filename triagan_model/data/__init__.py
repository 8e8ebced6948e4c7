"""Reading FDH training data through a manifest (docs/manifest.md).

`manifest` reads and verifies manifests, `loader` streams batches from the shards they list,
`transforms` holds the pure tensor operations (decode, stage resizing, flips), `prepare` writes
pre-resized shard copies for the low-resolution stages, `overlay` swaps in published refined
keypoints. Nothing here imports `fdhclean`: the manifest schema is the only contract.
"""
