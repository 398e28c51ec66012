"""Models: the MSDM architecture (`msdm`), text encoders, and where a recipe's pretrained pipeline lives (`locate`).

Models never import training, `synthgen.train` or `synthgen.resolve`: training builds on these modules.
"""
