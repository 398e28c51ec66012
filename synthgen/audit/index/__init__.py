"""Training-set embeddings and nearest-neighbour search, bottom to top:
embedders.py (the `Embedder` protocol, `pixel`) → model_embedders.py (plug-ins from local weights) →
embedder_registry.py (names → embedders); index_backends.py (vector store, FAISS) → train_index.py
(`TrainIndex`) → index_cache.py (the on-disk cache of built indexes).
"""
