"""A run's config: the hardware-dependent choices filled in, every field checked, and the
rules for what a resumed run may change."""
