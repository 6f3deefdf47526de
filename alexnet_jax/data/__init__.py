"""Data on its way to the step: the prepared-dataset format, image decoding, the dataset
sources, per-record transforms and augmentation, the grain input pipeline and the device
prefetch."""
