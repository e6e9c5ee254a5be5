"""Vector indexes and releases.

``embed`` runs a bundle's encoder (onnxruntime, batched) over Arrow tables; ``factory`` picks the
FAISS index for a catalogue; ``build`` trains and fills it (on the GPU when FAISS sees one) and
tunes its search parameters against the recall gate; ``manifest`` stores an index beside its
manifest and loads it back only when every SHA-256 and the encoder binding check out;
``release`` commits model versions, their index and the feature builds as one release behind one
pointer. This package reads training's bundle format and nothing heavier: no torch, Beam, MLflow
or Feast (import-linter and tests/indexing/test_imports.py check it).
"""
