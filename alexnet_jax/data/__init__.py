"""Data on its way to the step: the prepared-dataset format, image decoding, augmentation,
the grain input pipeline and the device prefetch."""
