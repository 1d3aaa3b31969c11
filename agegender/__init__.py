"""agegender: the Levi-Hassner age and gender CNN on Adience, with Lightning and Hydra."""

__version__ = "0.1.0"
