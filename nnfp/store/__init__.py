"""The fingerprint store: the database and its faiss index (`db`, the only module importing
faiss) and the integrity record of a saved folder (`integrity`)."""
