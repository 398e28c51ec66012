"""The parts of generation that only make it faster: prompt embeddings computed once, the batch size synthgen
picks, and denoising streams (threads sampling their own batches) while the calling thread finishes batches
(VAE decode, PIL, encoding, audit) in job order.

`synthgen.generate.Generator` is the front door; nothing here changes what an image looks like except the batch
size and a stream's torch threads, which every sample's provenance records (`sampling_numerics`).
"""
