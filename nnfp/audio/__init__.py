"""Audio in: decoding files (`io`), finding and loading collections (`sources`), the int16
cache of `nnfp data prepare` (`prepare`), and the hop grid of segments (`segments`)."""
