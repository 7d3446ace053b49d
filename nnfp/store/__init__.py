"""The fingerprint store: the database (`db`), its faiss index (`faiss_index`, the only module
importing faiss), the checks of its rows (`rows`), the saved folder (`folder`) and its integrity
record (`integrity`), sequence scoring (`scoring`) and search (`search`), and the Milvus backend
(`milvus`)."""
