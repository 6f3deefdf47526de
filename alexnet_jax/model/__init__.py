"""The network and the quantities it is judged by: AlexNet as a Flax module, its
layers and its losses. Knows tensors, not devices or configs files."""
