"""TriA-GAN networks: generator, conditioning input, projected discriminator, feature networks.

Imports nothing from the data or training code, and never `fdhclean`.
"""
