"""Creating the process groups (the builder's factory) and megatron-core's collections."""
