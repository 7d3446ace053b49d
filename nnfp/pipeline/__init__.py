"""Training pairs: the degradation maths (`degrade`), int16 audio banks (`bank`), the
augmentation layers that make replicas (`augment`: time shift, room, noise, speech, gain,
speed, tempo, key; `field`: a phone's band limit, clipping, gain control and speech codec)
and the tf.data (anchor, replica) pipeline that composes them (`pairs`)."""
