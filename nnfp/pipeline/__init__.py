"""Training pairs: the degradation maths (`degrade`) and the tf.data (anchor, replica) pipeline
(`pairs`)."""
