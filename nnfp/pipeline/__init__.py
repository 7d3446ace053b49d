"""Training pairs: the degradation maths (`degrade`), int16 audio banks (`bank`), the
augmentation layers that make replicas (`augment`) and the tf.data (anchor, replica) pipeline
that composes them (`pairs`)."""
