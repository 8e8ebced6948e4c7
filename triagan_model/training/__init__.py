"""TriA-GAN training (the trainer, separate from the model library: style.md 7).

`loop.train` runs every stage of one config (progressive resolutions, triagan-spec "Training");
the command `triagan train` only builds the typed `TrainOptions` (options.py) and calls it.
Nothing here is imported by `triagan_model.networks`.
"""
