"""The parts of generation that only make it faster: prompt embeddings computed once, the batch size synthgen
picks, and finishing batches (VAE decode, PIL, encoding, audit) in a worker thread while the next one samples.

`synthgen.generate.Generator` is the front door; nothing here changes what an image looks like except the batch
size, which every sample's provenance records (`sampling_numerics`).
"""
